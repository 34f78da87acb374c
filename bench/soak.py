"""Soak: the gateway's resident memory under steady mixed traffic, and its ledger at the end.

The simulator and the gateway run as child processes (as in bench/gateway.py). For `--minutes`
(default 10) this process keeps 64 clients busy with a mix of what a sidecar sees: plain and
streamed chat completions, streams the client drops after the first chunk, requests with a wrong
key and requests with malformed JSON. Every 30 s it prints the gateway's resident memory (VmRSS);
at the end it compares the last sample with the first one taken after a minute of warm-up
(target: within +-10 %) and counts the ledger's records against the metered requests sent (every
request with a valid key gets exactly one record; a wrong key gets none).

    .venv/bin/python bench/soak.py              # 10 minutes
    .venv/bin/python bench/soak.py --minutes 1  # a quick look
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import aiohttp

from inferplane.cli import examples_dir
from inferplane.config import load
from inferplane.gateway.keys import KeysFile, create_key, save_keys_file
from inferplane.gateway.testing import deployment_gateway_settings, gateway_process
from inferplane.simulator import SimulatorSettings
from inferplane.simulator.testing import simulator_subprocess

CLIENTS = 64
SAMPLE_SECONDS = 30.0
WARM_UP_SECONDS = 60.0
# (weight, kind): the traffic mix
MIX = ((60, "plain"), (25, "streamed"), (5, "dropped_stream"), (5, "wrong_key"),
       (5, "malformed"))


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


async def soak(url: str, key: str, model: str, seconds: float,
               pid: int) -> tuple[Counter, list[tuple[float, float]]]:
    """Drive the mix until `seconds` have passed, printing memory samples. Returns what was sent
    (by kind, and by status answered) and the (seconds, RSS MiB) samples."""
    question = {"role": "user", "content": "How much memory does a proxy need?"}
    bodies = {
        "plain": json.dumps({"model": model, "messages": [question], "max_tokens": 16,
                             "reasoning_effort": "none"}).encode(),
        "streamed": json.dumps({"model": model, "messages": [question], "max_tokens": 64,
                                "ignore_eos": True, "stream": True}).encode(),
        "malformed": b'{"model": "' + model.encode() + b'", "messages": [',
    }
    bodies["dropped_stream"] = bodies["wrong_key"] = bodies["streamed"]
    kinds = [kind for weight, kind in MIX for _ in range(weight)]
    good = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    bad = {**good, "Authorization": "Bearer sk-not-a-key"}
    sent: Counter = Counter()
    samples: list[tuple[float, float]] = []
    deadline = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=CLIENTS)
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=120)) as session:

        async def client(seed: int) -> None:
            rng = random.Random(seed)
            while time.monotonic() < deadline:
                kind = rng.choice(kinds)
                headers = bad if kind == "wrong_key" else good
                sent[kind] += 1
                async with session.post(f"{url}/v1/chat/completions", data=bodies[kind],
                                        headers=headers) as response:
                    if kind == "dropped_stream":
                        await response.content.readany()
                        response.close()  # the connection goes: the gateway bills a 499
                    else:
                        await response.read()
                    sent[f"status {response.status}"] += 1

        async def sampler() -> None:
            started = time.monotonic()
            while time.monotonic() < deadline:
                elapsed = time.monotonic() - started
                total = sum(sent[kind] for _, kind in MIX)
                rss = rss_mib(pid)
                samples.append((elapsed, rss))
                print(f"{elapsed:6.0f} s  {total:>9} requests  RSS {rss:6.1f} MiB", flush=True)
                await asyncio.sleep(SAMPLE_SECONDS)

        await asyncio.gather(sampler(), *(client(seed) for seed in range(CLIENTS)))
        samples.append((seconds, rss_mib(pid)))
    return sent, samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    args = parser.parse_args()
    config = load(examples_dir() / "nemotron-ultra.yaml")
    simulator = SimulatorSettings.from_deployment(config, max_num_seqs=1024)
    with tempfile.TemporaryDirectory(prefix="inferplane-soak-") as workdir, \
            simulator_subprocess(simulator) as simulator_url:
        work = Path(workdir)
        settings = deployment_gateway_settings(work, simulator_url)
        keys_file = KeysFile()
        key, _ = create_key(keys_file, tenant="soak")
        save_keys_file(settings.keys_file, keys_file)
        (work / "gateway.yaml").write_text(settings.to_yaml())
        with gateway_process(work / "gateway.yaml", log_level="warning",
                             stderr=subprocess.DEVNULL) as gateway:
            import uvloop

            sent, samples = uvloop.run(soak(gateway.url, key, settings.models[0].served_name,
                                   args.minutes * 60, gateway.process.pid))
            gateway.terminate()  # commits what is queued
        with sqlite3.connect(work / "ledger.db") as ledger:
            records = ledger.execute("SELECT count(*) FROM usage_records").fetchone()[0]
    metered = sum(count for kind, count in sent.items()
                  if kind in ("plain", "streamed", "dropped_stream", "malformed"))
    statuses = ", ".join(f"{kind[7:]}: {count}" for kind, count in sorted(sent.items())
                         if kind.startswith("status "))
    warm = [rss for elapsed, rss in samples if elapsed >= WARM_UP_SECONDS] or \
        [samples[-1][1]]
    drift = (warm[-1] - warm[0]) / warm[0] * 100
    print(f"\nresponses by status: {statuses}")
    print(f"resident memory: {warm[0]:.1f} MiB after warm-up, {warm[-1]:.1f} MiB at the end "
          f"({drift:+.1f} %), peak sample {max(rss for _, rss in samples):.1f} MiB "
          "(target: within +-10 %, <= 150 MiB)")
    ok = records == metered
    print(f"ledger: {records} records for {metered} requests with a valid key: "
          f"{'OK' if ok else 'MISMATCH'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
