"""`inferplane dev`: the README's main command proves itself and stops cleanly."""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from inferplane.ledger import open_ledger

INFERPLANE = [sys.executable, "-m", "inferplane.cli"]
# The printed examples must work as a user's shell would run them: no proxy in between.
NO_PROXY_ENV = {name: value for name, value in os.environ.items()
                if name.lower() not in ("http_proxy", "https_proxy", "all_proxy")}


def run_dev(cwd, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*INFERPLANE, "dev", "--port", "0", *args], cwd=cwd, text=True,
                          capture_output=True, timeout=timeout)


def test_dev_smoke_test_exits_zero_and_reuses_its_demo_key(tmp_path):
    first = run_dev(tmp_path, "--exit-after-smoke-test")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "-- ok" in first.stdout
    usage = re.search(r"usage prompt=(\d+) completion=(\d+)", first.stdout)
    assert usage and int(usage.group(2)) > 0
    key = re.search(r"API key\s+(ip-\S+)", first.stdout).group(1)
    state = tmp_path / ".inferplane" / "dev"
    assert (state / "demo-key").read_text().strip() == key
    assert stat.S_IMODE((state / "demo-key").stat().st_mode) == 0o600
    assert key not in (state / "keys.json").read_text()
    assert key not in first.stderr  # the access log never shows it
    assert (state / "ledger.db").exists()

    second = run_dev(tmp_path, "--exit-after-smoke-test")
    assert second.returncode == 0, second.stdout + second.stderr
    assert re.search(r"API key\s+(ip-\S+)", second.stdout).group(1) == key
    report = subprocess.run([*INFERPLANE, "usage", "-o", "json"], cwd=tmp_path, text=True,
                            capture_output=True, timeout=60)
    assert report.returncode == 0, report.stderr
    assert json.loads(report.stdout)["totals"][0]["requests"] == 2  # both smoke tests billed


def test_dev_stops_both_servers_on_sigint_and_sigterm(tmp_path):
    for sig in (signal.SIGINT, signal.SIGTERM):
        stderr_path = tmp_path / f"dev-{sig.name}.stderr"
        with open(stderr_path, "w") as stderr:  # a file, not a pipe: nothing can block on it
            process = subprocess.Popen([*INFERPLANE, "dev", "--port", "0"], cwd=tmp_path,
                                       text=True, stdout=subprocess.PIPE, stderr=stderr,
                                       env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            base_url = None
            for line in process.stdout:
                match = re.search(r"Base URL\s+(\S+)", line)
                if match:
                    base_url = match.group(1)
                if "Ctrl-C" in line:
                    break
            assert base_url
            root = base_url.removesuffix("/v1")
            assert httpx.get(f"{root}/readyz", timeout=10).status_code == 200
            process.send_signal(sig)
            exit_code = process.wait(timeout=30)
            stderr_text = stderr_path.read_text()
            assert "Traceback" not in stderr_text, f"{sig.name}:\n{stderr_text}"
            assert exit_code == 0, stderr_text
            try:
                httpx.get(f"{root}/healthz", timeout=2)
                raise AssertionError("the gateway still answers after the signal")
            except httpx.TransportError:
                pass
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            process.stdout.close()


# --- the examples `inferplane dev` prints ----------------------------------------------------


@dataclass
class DevServer:
    """A running `inferplane dev` and what it printed before "Ctrl-C stops both servers"."""

    banner: str
    folder: Path  # its working directory; the state is in .inferplane/dev under it

    def printed(self, label: str) -> str:
        """The value printed after `label` in the banner (e.g. "Base URL", "API key")."""
        return re.search(rf"^  {label}\s+(\S+)", self.banner, re.MULTILINE).group(1)

    def example(self, heading: str) -> str:
        """The copy-paste block under `heading` ("curl:"), without the banner's indent."""
        lines = self.banner.splitlines()
        block = itertools.takewhile(str.strip, lines[lines.index(heading) + 1:])
        return textwrap.dedent("\n".join(block))

    def billed(self, prompt_tokens: int, completion_tokens: int) -> bool:
        """Whether the dev ledger holds a request with exactly these token counts."""
        ledger_url = f"sqlite:///{self.folder / '.inferplane' / 'dev' / 'ledger.db'}"
        with open_ledger(ledger_url, create=False) as ledger:
            return any((record.prompt_tokens, record.completion_tokens) ==
                       (prompt_tokens, completion_tokens) for record in ledger.records())


@pytest.fixture(scope="module")
def dev_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dev")
    stderr_path = folder / "dev.stderr"
    with open(stderr_path, "w") as stderr:
        process = subprocess.Popen([*INFERPLANE, "dev", "--port", "0"], cwd=folder, text=True,
                                   stdout=subprocess.PIPE, stderr=stderr,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        lines = []
        for line in process.stdout:
            lines.append(line)
            if "Ctrl-C" in line:
                break
        assert lines and "Ctrl-C" in lines[-1], "".join(lines) + stderr_path.read_text()
        yield DevServer("".join(lines), folder)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        process.stdout.close()


def test_the_printed_python_example_runs_and_is_billed(dev_server):
    code = dev_server.example("Python (pip install openai):")
    assert f'base_url="{dev_server.printed("Base URL")}"' in code
    assert f'api_key="{dev_server.printed("API key")}"' in code
    result = subprocess.run([sys.executable, "-c", code], cwd=dev_server.folder, text=True,
                            capture_output=True, timeout=60, env=NO_PROXY_ENV)
    assert result.returncode == 0, result.stderr
    # The example asks for reasoning_effort="high": the think block comes first, on its own line.
    reasoning, answer = result.stdout.split("\n", 1)
    assert reasoning not in ("", "None") and "<think>" not in result.stdout and answer
    completion = int(re.search(r"\bcompletion_tokens=(\d+)", result.stdout).group(1))
    prompt = int(re.search(r"\bprompt_tokens=(\d+)", result.stdout).group(1))
    assert completion > 0 and prompt > 0
    assert dev_server.billed(prompt, completion)


def test_the_printed_curl_example_names_the_gateway_and_key_and_runs(dev_server):
    command = dev_server.example("curl:")
    args = shlex.split(command.replace("\\\n", " "))
    assert args[:2] == ["curl", dev_server.printed("Base URL") + "/chat/completions"]
    headers = [args[i + 1] for i, arg in enumerate(args) if arg == "-H"]
    assert headers == [f"Authorization: Bearer {dev_server.printed('API key')}",
                       "Content-Type: application/json"]
    body = json.loads(args[args.index("-d") + 1])
    assert body["model"] == dev_server.printed("Model")
    if shutil.which("curl") is None:
        pytest.skip("curl is not on PATH: its URL, headers and body were checked, not run")
    result = subprocess.run(["sh", "-c", command], text=True, capture_output=True, timeout=60,
                            env=NO_PROXY_ENV)
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout)
    content = reply["choices"][0]["message"]["content"]
    assert content and "<think>" not in content  # the example sends "reasoning": false
    usage = reply["usage"]
    assert usage["completion_tokens"] > 0
    assert dev_server.billed(usage["prompt_tokens"], usage["completion_tokens"])
