"""Shared test helpers: paths of the repo's examples and a config factory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from inferplane.cluster.versions import KUBERNETES_MINOR
from inferplane.config import DeploymentConfig, from_mapping

# A real PostgreSQL server for the ledger tests (started once, from the machine's binaries).
pytest_plugins = ["inferplane.testing.postgres"]

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "nemotron-ultra.yaml"
# The rendered manifests must satisfy the OpenAPI schema of the Kubernetes we pin for the cluster tests.
KUBERNETES_SCHEMA_VERSION = KUBERNETES_MINOR


@pytest.fixture
def make_config():
    """Build a validated config from a mapping (merged over a GKE Nemotron-Ultra base)."""

    def make(**overrides: Any) -> DeploymentConfig:
        data: dict[str, Any] = {"cloud": "gke", "region": "europe-west4"}
        data.update(overrides)
        return from_mapping(data)

    return make


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Name the suites that did not run on this machine and why (kind needs a Docker engine), so
    a green run never hides them among ordinary skips."""
    not_run: dict[str, list[str]] = {}
    for report in terminalreporter.stats.get("skipped", []):
        if "kind" not in report.keywords:
            continue
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        not_run.setdefault(reason.removeprefix("Skipped: "), []).append(report.nodeid)
    if not not_run:
        return
    terminalreporter.section("NOT RUN on this machine", sep="=", yellow=True, bold=True)
    for reason, nodeids in not_run.items():
        terminalreporter.write_line(f"kind backend: {len(nodeids)} tests not run: {reason}")
