"""Fixtures for tests and benchmarks: a simulator on a free loopback port, in a thread or in a
process of its own. Both yield the server's root URL (the OpenAI base URL is that + "/v1")."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from inferplane.simulator.server import bind_socket, socket_url, uvicorn_server
from inferplane.simulator.settings import SimulatorSettings
from inferplane.sockets import wait_until_ok

_READY_LINE = re.compile(r"listening on (\S+)")


@contextmanager
def running_simulator(settings: SimulatorSettings | None = None, host: str = "127.0.0.1",
                      timeout_seconds: float = 10.0) -> Iterator[str]:
    """Serve `settings` from a background thread; yields e.g. "http://127.0.0.1:41234"."""
    sock = bind_socket(host, 0)
    server = uvicorn_server(settings or SimulatorSettings())
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                              name="inferplane-simulator", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_seconds
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise RuntimeError("the simulator did not start; see the log above")
        time.sleep(0.005)
    try:
        yield socket_url(sock)
    finally:
        server.should_exit = True
        thread.join(timeout_seconds)
        sock.close()


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

