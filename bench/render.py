"""How long `inferplane render` of the Nemotron-Ultra example takes cold, imports included.

Target (design.md): <= 1 s cold. Prints the median of several fresh processes, side by side with
a bare `python -c pass` so the interpreter's own start-up is visible as a ratio.

    .venv/bin/python bench/render.py [--runs 7]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "nemotron-ultra.yaml"


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    runs = parser.parse_args().runs
    inferplane = str(Path(sys.executable).with_name("inferplane"))
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "inferplane render -o -": [inferplane, "render", "-f", str(EXAMPLE), "-o", "-"],
    }
    medians = {}
    for label, command in commands.items():
        timed(command)  # warm the page cache, not the interpreter
        medians[label] = statistics.median(timed(command) for _ in range(runs))
    base = medians["python -c pass"]
    for label, seconds in medians.items():
        print(f"{label:28s} {seconds * 1000:8.1f} ms   x{seconds / base:5.1f} of bare python")
    verdict = "within" if medians["inferplane render -o -"] <= 1.0 else "OVER"
    print(f"render cold: {verdict} the 1 s target")


if __name__ == "__main__":
    main()
