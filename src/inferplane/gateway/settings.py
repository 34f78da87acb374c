"""The gateway's own settings file: what the renderer writes into its ConfigMap and `dev` passes in.

Derived from a DeploymentConfig so that prices, model names and the reasoning default have one
source. Keys are not here: they live in a separate file mounted from a Secret.
"""

from __future__ import annotations

import os
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from inferplane.catalog import ReasoningStyle


class ModelRoute(BaseModel):
    """One model the gateway serves: its public name, catalog key and prices."""

    model_config = ConfigDict(extra="forbid")

    served_name: str
    catalog_key: str
    reasoning_style: ReasoningStyle
    reasoning_default_on: bool
    reasoning_prompts: dict[str, str] = Field(default_factory=dict)
    input_price_per_million: Decimal
    output_price_per_million: Decimal
    # Context length vLLM serves: the completion cap a request without max_tokens may reach,
    # which is what admission reserves of its tokens-per-minute and budget. None: the catalog's.
    max_model_len: int | None = None


class GatewaySettings(BaseModel):
    """Everything the gateway process needs besides the keys file."""

    model_config = ConfigDict(extra="forbid")

    listen_host: str = "0.0.0.0"
    listen_port: int = 8080
    upstream_url: str = "http://127.0.0.1:8000"
    upstream_timeout_seconds: float = 600.0
    max_body_bytes: int = 8 * 1024 * 1024
    # Slow or oversized request heads and slow bodies (gateway/http_limits.py): 431 / 408.
    max_header_bytes: int = Field(64 * 1024, ge=1024)
    header_timeout_seconds: float = Field(10.0, gt=0)
    body_timeout_seconds: float = Field(60.0, gt=0)
    currency: str = "USD"
    models: list[ModelRoute]
    auth_enabled: bool = True
    keys_file: str = "/etc/inferplane/keys/keys.json"
    ledger_url: str = "sqlite:////var/lib/inferplane/ledger.db"
    # The central ledger (PostgreSQL) that `ledger_url`, then the pod's spool, is shipped to
    # (ledger/shipper.py); neither set: no shipping. In a pod the URL holds a password, so it
    # comes from an environment variable filled from a Secret, never from this file.
    central_ledger_url: str | None = None
    central_ledger_url_env: str | None = None
    spool_max_records: int = Field(200_000, ge=1)  # unshipped records before new requests get 503
    ship_batch_records: int = Field(500, ge=1)
    ship_interval_seconds: float = Field(1.0, gt=0)
    ship_retry_max_seconds: float = Field(15.0, gt=0)
    ship_drain_seconds: float = Field(60.0, ge=0)  # at shutdown, after the last request
    spool_retention_hours: float = Field(24.0, ge=0)  # shipped records kept in the spool
    access_log: bool = True  # one line per request: id, key id, model, status, latency (no bodies)

    @classmethod
    def from_deployment(cls, config: Any, **overrides: Any) -> "GatewaySettings":
        """Settings for the sidecar of `config` (a DeploymentConfig)."""
        spec = config.model_spec
        route = ModelRoute(
            served_name=config.served_model_name,
            catalog_key=spec.key,
            reasoning_style=spec.reasoning_style,
            reasoning_default_on=config.reasoning_default_on,
            reasoning_prompts=dict(spec.reasoning_prompts),
            input_price_per_million=config.input_price_per_million,
            output_price_per_million=config.output_price_per_million,
            max_model_len=config.max_model_len,
        )
        values: dict[str, Any] = dict(
            listen_port=config.gateway.port,
            upstream_timeout_seconds=float(config.gateway.upstream_timeout_seconds),
            max_body_bytes=config.gateway.max_body_mib * 1024 * 1024,
            currency=config.metering.currency,
            models=[route],
            auth_enabled=config.auth.enabled,
        )
        values.update(overrides)
        return cls(**values)

    def resolved_central_ledger_url(self) -> str | None:
        """The central ledger URL, from the settings or the environment variable they name."""
        if self.central_ledger_url_env:
            url = os.environ.get(self.central_ledger_url_env, "").strip()
            if not url:
                raise ValueError(f"central_ledger_url_env names {self.central_ledger_url_env}, but that "
                                 "environment variable is empty; mount the ledger URL Secret, or "
                                 "remove central_ledger_url_env to run without a central ledger")
            return url
        return self.central_ledger_url

    def to_yaml(self) -> str:
        """Stable YAML (Decimals as strings, so prices survive exactly)."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=True)

    @classmethod
    def load(cls, path: str | Path) -> "GatewaySettings":
        return cls.model_validate(yaml.safe_load(Path(path).read_text()))
