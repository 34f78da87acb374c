"""A gateway config (production settings) on a running simulator, with one key: for tests that
start the gateway as its own process (`gateway_process`) and signal or kill it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from inferplane.gateway.settings import GatewaySettings
from inferplane.gateway.keys import KeysFile, create_key, save_keys_file
from inferplane.gateway.testing import deployment_gateway_settings
from inferplane.simulator import running_simulator


@dataclass
class GatewayOnSimulator:
    config_path: Path  # for gateway_process(config_path)
    settings: GatewaySettings
    secret: str  # the one key's secret

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secret}"}

    @property
    def model(self) -> str:
        return self.settings.models[0].served_name


@contextmanager
def gateway_config_on_simulator(tmp_path: Path, tenant: str) -> Iterator[GatewayOnSimulator]:
    """The simulator runs for the block; `tmp_path/gateway.yaml` and its keys file are written."""
    config_path = tmp_path / "gateway.yaml"
    with running_simulator() as simulator_url:
        settings = deployment_gateway_settings(tmp_path, simulator_url)
        config_path.write_text(settings.to_yaml())
        keys_file = KeysFile()
        secret, _ = create_key(keys_file, tenant=tenant)
        save_keys_file(settings.keys_file, keys_file)
        yield GatewayOnSimulator(config_path, settings, secret)
