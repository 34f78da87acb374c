"""Shared test helpers: paths of the repo's examples and a config factory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from inferplane.cluster.versions import KUBERNETES_MINOR
from inferplane.config import DeploymentConfig, from_mapping

# A real PostgreSQL server for the ledger tests (started once, from the machine's binaries).
# No test skips silently under CI (inferplane.testing.strict_skips).
pytest_plugins = ["inferplane.testing.postgres", "inferplane.testing.strict_skips"]

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "nemotron-ultra.yaml"
# The rendered manifests must satisfy the OpenAPI schema of the Kubernetes we pin for the cluster tests.
KUBERNETES_SCHEMA_VERSION = KUBERNETES_MINOR


GKE_PROXY_SUBNET = "10.129.0.0/23"


def with_gke_proxy_subnet(data: dict[str, Any]) -> dict[str, Any]:
    """A GKE config needs the region's proxy-only subnet (ingress.source_cidrs): add one if unset."""
    if data.get("cloud") == "gke":
        ingress = dict(data.get("ingress") or {})
        ingress.setdefault("source_cidrs", [GKE_PROXY_SUBNET])
        data = {**data, "ingress": ingress}
    return data


@pytest.fixture
def make_config():
    """Build a validated config from a mapping (merged over a GKE Nemotron-Ultra base)."""

    def make(**overrides: Any) -> DeploymentConfig:
        data: dict[str, Any] = {"cloud": "gke", "region": "europe-west4"}
        data.update(overrides)
        return from_mapping(with_gke_proxy_subnet(data))

    return make


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(config, items):
    """Everything under tests/cluster/ is a cluster test, whether its module says so or not
    (`pytest -m "not cluster"` must not build cluster tools or install vLLM)."""
    cluster_dir = Path(__file__).parent / "cluster"
    for item in items:
        if cluster_dir in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.cluster)
