"""`inferplane dev`: the README's main command proves itself and stops cleanly."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys

import httpx

INFERPLANE = [sys.executable, "-m", "inferplane.cli"]


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
        process = subprocess.Popen([*INFERPLANE, "dev", "--port", "0"], cwd=tmp_path, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
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
            assert process.wait(timeout=30) == 0
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
