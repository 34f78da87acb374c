"""The upstream Helm charts we install, read from charts/: each pin, our values, per-cloud overlays.

charts/<key>/chart.yaml is the one place a chart's repository and version live; values.yaml holds
our values for every cloud and values-<cloud>.yaml what differs on one cloud. Nothing is vendored:
Helm fetches the pinned chart at deploy time.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

CHART_KEYS = ("gpu-operator", "nvidia-device-plugin", "envoy-gateway", "cert-manager", "keda",
              "prometheus-operator-crds")


def charts_dir() -> Path:
    """charts/ in a source checkout, or the copy packaged into the wheel."""
    packaged = Path(__file__).resolve().parents[1] / "_charts"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[3] / "charts"


@dataclass(frozen=True)
class ChartPin:
    """One upstream chart: where it comes from, which version, where it goes."""

    key: str
    chart: str
    release: str
    repo: str
    version: str
    namespace: str
    directory: Path
    enabled_by_default: dict[str, bool] = field(default_factory=dict)
    extra_manifests: dict[str, list[str]] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)  # cloud -> why it must not be installed

    @property
    def oci(self) -> bool:
        """An OCI chart: Helm takes `oci://<repo>/<name>` as the chart and no repository."""
        return self.repo.startswith("oci://")

    def default_enabled(self, cloud: str) -> bool:
        """Whether the chart is installed on `cloud` when the stack does not say."""
        return self.enabled_by_default.get(cloud, True)

    def values(self, cloud: str) -> dict[str, Any]:
        """values.yaml with values-<cloud>.yaml merged over it (maps merge, lists and scalars replace)."""
        values = _read_yaml(self.directory / "values.yaml") or {}
        overlay = self.directory / f"values-{cloud}.yaml"
        if overlay.is_file():
            values = deep_merge(values, _read_yaml(overlay) or {})
        return values

    def manifests(self, cloud: str) -> list[dict[str, Any]]:
        """The extra objects `cloud` needs in the release's namespace before the chart."""
        objects: list[dict[str, Any]] = []
        for file_name in self.extra_manifests.get(cloud, []):
            text = (self.directory / file_name).read_text()
            objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
        return objects


def load_chart(key: str) -> ChartPin:
    """The pin in charts/<key>/chart.yaml; a missing field is named in the error."""
    directory = charts_dir() / key
    data = _read_yaml(directory / "chart.yaml")
    if not isinstance(data, dict):
        raise ValueError(f"{directory / 'chart.yaml'}: expected a mapping of chart fields")
    missing = [name for name in ("name", "repo", "version", "namespace") if not data.get(name)]
    if missing:
        raise ValueError(f"{directory / 'chart.yaml'}: missing {', '.join(missing)}")
    return ChartPin(
        key=key,
        chart=data["name"],
        release=data.get("release", data["name"]),
        repo=data["repo"],
        version=str(data["version"]),
        namespace=data["namespace"],
        directory=directory,
        enabled_by_default=dict(data.get("enabled_by_default") or {}),
        extra_manifests={k: list(v) for k, v in (data.get("extra_manifests") or {}).items()},
        refused=dict(data.get("refused") or {}),
    )


def deep_merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """A new dict: `overlay` over `base`, merging nested maps the way Helm merges values files."""
    merged = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _read_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())
