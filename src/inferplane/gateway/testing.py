"""Fixtures for tests and benchmarks: a real gateway on a free loopback port, in a thread of this
process or in a process of its own (which tests can SIGKILL)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inferplane.gateway.app import GatewayApp
from inferplane.gateway.keys import KeyEntry, KeysFile, create_key, load_keys_file, save_keys_file
from inferplane.ledger.records import UsageRecord
from inferplane.gateway.server import gateway_server
from inferplane.gateway.settings import GatewaySettings
from inferplane.sockets import wait_until_ok
from inferplane.testing.asgi import serving_in_thread

_READY_LINE = re.compile(r"listening on (\S+)")


@contextmanager
def running_gateway(settings: GatewaySettings, host: str = "127.0.0.1",
                    timeout_seconds: float = 10.0) -> Iterator[tuple[str, GatewayApp]]:
    """Serve `settings` from a background thread; yields (root URL, the app) for inspection."""
    app = GatewayApp(settings)
    server = gateway_server(app, log_level="warning", graceful_shutdown_seconds=5)
    with serving_in_thread(server, host, "inferplane-gateway", timeout_seconds) as url:
        yield url, app


class GatewayProcess:
    """`inferplane gateway` in a child process; `kill()` sends SIGKILL (no cleanup at all)."""

    def __init__(self, config_path: Path, host: str = "127.0.0.1", port: int = 0,
                 timeout_seconds: float = 30.0, log_level: str = "warning",
                 stderr: Any = None) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "inferplane.cli", "gateway", "--config", str(config_path),
             "--host", host, "--port", str(port), "--log-level", log_level],
            stdout=subprocess.PIPE, stderr=stderr, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        line = self.process.stdout.readline() if self.process.stdout else ""
        match = _READY_LINE.search(line)
        if not match:
            self.kill()
            raise RuntimeError(f"the gateway process did not start (said {line!r})")
        self.url = match.group(1)
        self._wait_ready(timeout_seconds)

    def _wait_ready(self, timeout_seconds: float) -> None:
        if not wait_until_ok(f"{self.url}/readyz", timeout_seconds,
                             alive=lambda: self.process.poll() is None):
            self.kill()
            raise RuntimeError(f"the gateway at {self.url} did not become ready")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        if self.process.stdout:
            self.process.stdout.close()

    def terminate(self, timeout_seconds: float = 30.0) -> int:
        """SIGTERM and wait: in-flight requests finish, queued records are committed."""
        self.process.terminate()
        try:
            return self.process.wait(timeout_seconds)
        finally:
            if self.process.stdout:
                self.process.stdout.close()


@contextmanager
def gateway_process(config_path: Path, **kwargs) -> Iterator[GatewayProcess]:
    process = GatewayProcess(config_path, **kwargs)
    try:
        yield process
    finally:
        if process.process.poll() is None:
            process.terminate()


@dataclass
class DataPlane:
    """A running simulator + gateway pair on loopback, with a keys file and a SQLite ledger."""

    url: str  # the gateway's root URL
    simulator_url: str
    app: GatewayApp
    settings: GatewaySettings
    keys_path: Path

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    @property
    def model(self) -> str:
        return self.settings.models[0].served_name

    def add_key(self, reload: bool = True, **kwargs: Any) -> tuple[str, KeyEntry]:
        """Create a key in the keys file. The gateway's watcher picks it up within about a
        second; `reload=True` makes it load now (what the watcher would do next)."""
        keys_file = load_keys_file(self.keys_path)
        key, entry = create_key(keys_file, **{"tenant": "test", **kwargs})
        save_keys_file(self.keys_path, keys_file)
        if reload and self.app.keys is not None:
            self.app.keys.reload_if_changed()
        return key, entry

    def client(self, key: str, **kwargs: Any) -> Any:
        """An openai client for this gateway (no retries: tests see every answer)."""
        from openai import OpenAI

        return OpenAI(base_url=self.base_url, api_key=key, max_retries=0,
                      **{"timeout": 30.0, **kwargs})

    def records(self) -> list[UsageRecord]:
        """Every usage record in the ledger, oldest first."""
        from inferplane.ledger import open_ledger

        with open_ledger(self.settings.ledger_url) as ledger:
            return ledger.records()

    def record(self, request_id: str) -> UsageRecord:
        found = [record for record in self.records() if record.request_id == request_id]
        assert len(found) == 1, f"expected one record for {request_id}, found {len(found)}"
        return found[0]

    def wait_for_record(self, request_id: str, timeout_seconds: float = 30.0) -> UsageRecord:
        """The record of `request_id`, once committed (a 499's commits after the client left)."""
        import time

        deadline = time.monotonic() + timeout_seconds
        while True:
            found = [record for record in self.records() if record.request_id == request_id]
            if found:
                return found[0]
            assert time.monotonic() < deadline, f"no usage record for {request_id}"
            time.sleep(0.05)


def deployment_gateway_settings(tmp_path: Path, upstream_url: str, **overrides: Any
                                ) -> GatewaySettings:
    """Gateway settings of the shipped Nemotron-Ultra example, with state under `tmp_path`."""
    from inferplane.config import examples_dir
    from inferplane.config import load

    config = load(examples_dir() / "nemotron-ultra.yaml")
    values: dict[str, Any] = dict(
        listen_host="127.0.0.1", listen_port=0, upstream_url=upstream_url,
        keys_file=str(tmp_path / "keys.json"), ledger_url=f"sqlite:///{tmp_path / 'ledger.db'}")
    values.update(overrides)
    return GatewaySettings.from_deployment(config, **values)


@contextmanager
def running_data_plane(tmp_path: Path, simulator_settings: Any = None,
                       **gateway_overrides: Any) -> Iterator[DataPlane]:
    """The simulator (imitating the shipped example's vLLM) and a gateway in front of it, each
    in a thread of this process; stopped (and the ledger flushed) on exit."""
    from inferplane.config import examples_dir
    from inferplane.config import load
    from inferplane.simulator import SimulatorSettings, running_simulator

    config = load(examples_dir() / "nemotron-ultra.yaml")
    simulator_settings = simulator_settings or SimulatorSettings.from_deployment(config)
    with running_simulator(simulator_settings) as simulator_url:
        settings = deployment_gateway_settings(
            tmp_path, gateway_overrides.pop("upstream_url", simulator_url), **gateway_overrides)
        keys_path = Path(settings.keys_file)
        if not keys_path.exists():
            save_keys_file(keys_path, KeysFile())
        with running_gateway(settings) as (url, app):
            yield DataPlane(url, simulator_url, app, settings, keys_path)
