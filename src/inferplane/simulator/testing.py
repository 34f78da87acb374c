"""Fixtures for tests and benchmarks: a simulator on a free loopback port, in a thread or in a
process of its own. Both yield the server's root URL (the OpenAI base URL is that + "/v1")."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from inferplane.simulator.server import uvicorn_server
from inferplane.simulator.settings import SimulatorSettings
from inferplane.sockets import wait_until_ok
from inferplane.testing.asgi import serving_in_thread

_READY_LINE = re.compile(r"listening on (\S+)")


@contextmanager
def running_simulator(settings: SimulatorSettings | None = None, host: str = "127.0.0.1",
                      timeout_seconds: float = 10.0) -> Iterator[str]:
    """Serve `settings` from a background thread; yields e.g. "http://127.0.0.1:41234"."""
    with serving_in_thread(uvicorn_server(settings or SimulatorSettings()), host,
                           "inferplane-simulator", timeout_seconds) as url:
        yield url


@contextmanager
def simulator_subprocess(settings: SimulatorSettings | None = None, host: str = "127.0.0.1",
                         timeout_seconds: float = 30.0,
                         on_start: Callable[[subprocess.Popen], None] | None = None,
                         ) -> Iterator[str]:
    """Serve `settings` from `python -m inferplane.simulator` (its own GIL and event loop).
    `on_start` gets the process (a benchmark pins it to a CPU)."""
    settings_json = (settings or SimulatorSettings()).model_dump_json()
    process = subprocess.Popen(
        [sys.executable, "-m", "inferplane.simulator", "--host", host, "--port", "0",
         "--settings-json", settings_json],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        line = process.stdout.readline() if process.stdout else ""
        match = _READY_LINE.search(line)
        if not match:
            raise RuntimeError(f"the simulator process did not start (said {line!r})")
        url = match.group(1)
        _wait_healthy(url, timeout_seconds)
        if on_start is not None:
            on_start(process)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout_seconds)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout:
            process.stdout.close()


def _wait_healthy(url: str, timeout_seconds: float) -> None:
    if not wait_until_ok(f"{url}/health", timeout_seconds):
        raise RuntimeError(f"the simulator at {url} did not become healthy")

