"""Schemas of the custom resources we render (Gateway API, KEDA, prometheus-operator), at the versions
we target.

The CRDs are not copied into this repo: they are fetched from the upstream Go modules through the
Go module proxy (`go mod download`, cached machine-wide by Go) and their openAPIV3Schema is
applied strictly — unknown fields fail, as a typo would silently be pruned by the API server.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml


@dataclass(frozen=True)
class CrdSource:
    """Where one CRD lives upstream: a Go module at a version, and the file in it."""

    module: str
    version: str
    path: str


# The Gateway API release whose standard-channel CRDs our Gateway and HTTPRoutes must satisfy.
GATEWAY_API = ("sigs.k8s.io/gateway-api", "v1.6.3")

# (apiVersion, kind) -> source. Gateway API 1.6 (standard channel), KEDA 2.21 and
# prometheus-operator 0.85 (kube-prometheus-stack 77.x).
CRD_SOURCES: dict[tuple[str, str], CrdSource] = {
    ("gateway.networking.k8s.io/v1", "Gateway"): CrdSource(
        *GATEWAY_API, "config/crd/standard/gateway.networking.k8s.io_gateways.yaml"),
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): CrdSource(
        *GATEWAY_API, "config/crd/standard/gateway.networking.k8s.io_httproutes.yaml"),
    ("gateway.networking.k8s.io/v1", "GatewayClass"): CrdSource(
        *GATEWAY_API, "config/crd/standard/gateway.networking.k8s.io_gatewayclasses.yaml"),
    ("gateway.envoyproxy.io/v1alpha1", "BackendTrafficPolicy"): CrdSource(
        "github.com/envoyproxy/gateway", "v1.9.1",  # the Envoy Gateway in charts/envoy-gateway
        "charts/gateway-helm/charts/crds/crds/generated/"
        "gateway.envoyproxy.io_backendtrafficpolicies.yaml"),
    ("gateway.envoyproxy.io/v1alpha1", "EnvoyProxy"): CrdSource(
        "github.com/envoyproxy/gateway", "v1.9.1",
        "charts/gateway-helm/charts/crds/crds/generated/gateway.envoyproxy.io_envoyproxies.yaml"),
    ("keda.sh/v1alpha1", "ScaledObject"): CrdSource(
        "github.com/kedacore/keda/v2", "v2.21.0", "config/crd/bases/keda.sh_scaledobjects.yaml"),
    ("monitoring.coreos.com/v1", "PodMonitor"): CrdSource(
        "github.com/prometheus-operator/prometheus-operator", "v0.85.0",
        "example/prometheus-operator-crd/monitoring.coreos.com_podmonitors.yaml"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"): CrdSource(
        "github.com/prometheus-operator/prometheus-operator", "v0.85.0",
        "example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml"),
    ("monitoring.coreos.com/v1", "PrometheusRule"): CrdSource(
        "github.com/prometheus-operator/prometheus-operator", "v0.85.0",
        "example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml"),
}


# Custom resources GKE itself installs (its Gateway controller's policies): their CRDs are published
# in no Go module (github.com/GoogleCloudPlatform/gke-networking-api v0.2.11 lacks them), so they are
# checked by the unit tests field by field instead (tests/unit/test_gateway_api.py).
GKE_KINDS = {("networking.gke.io/v1", "GCPBackendPolicy"), ("networking.gke.io/v1", "HealthCheckPolicy")}


class CrdUnavailable(RuntimeError):
    """The CRD could not be fetched (no Go toolchain, or the module proxy is unreachable)."""


@lru_cache(maxsize=None)
def module_dir(module: str, version: str) -> Path:
    """The extracted module in Go's module cache, downloading it once."""
    with tempfile.TemporaryDirectory() as empty:
        try:
            result = subprocess.run(
                ["go", "mod", "download", "-json", f"{module}@{version}"], cwd=empty,
                capture_output=True, text=True, timeout=600,
                env=dict(os.environ, GOFLAGS="-mod=mod", GO111MODULE="on"),
            )
        except FileNotFoundError:
            raise CrdUnavailable("the Go toolchain is needed to fetch CRDs (go mod download)") from None
    info = json.loads(result.stdout or "{}")
    if result.returncode or "Dir" not in info:
        raise CrdUnavailable(f"go mod download {module}@{version}: {info.get('Error') or result.stderr}")
    return Path(info["Dir"])


def crd_document(api_version: str, kind: str) -> dict[str, Any]:
    """The whole CustomResourceDefinition, as upstream ships it (to install it in a test cluster)."""
    source = CRD_SOURCES[(api_version, kind)]
    return yaml.safe_load((module_dir(source.module, source.version) / source.path).read_text())


def crd_schema(api_version: str, kind: str) -> dict[str, Any]:
    """The openAPIV3Schema of the served version of a CRD, made strict."""
    source = CRD_SOURCES[(api_version, kind)]
    document = yaml.safe_load((module_dir(source.module, source.version) / source.path).read_text())
    version = api_version.split("/", 1)[1]
    for served in document["spec"]["versions"]:
        if served["name"] == version:
            return strict(served["schema"]["openAPIV3Schema"])
    raise KeyError(f"{source.path} does not serve {api_version}")


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """Forbid properties a structural schema does not declare (what the API server would prune)."""
    schema = copy.deepcopy(schema)

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            if ("properties" in node and "additionalProperties" not in node
                    and not node.get("x-kubernetes-preserve-unknown-fields")):
                node["additionalProperties"] = False
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for item in node:
                visit(item)

    visit(schema)
    return schema


def validate_custom_resource(manifest: dict[str, Any]) -> None:
    """Raise jsonschema.ValidationError when `manifest` does not match its CRD's schema."""
    import jsonschema

    schema = crd_schema(manifest["apiVersion"], manifest["kind"])
    # metadata is validated by the API server's ObjectMeta, not by the CRD schema.
    body = {k: v for k, v in manifest.items() if k != "metadata"}
    jsonschema.Draft7Validator(schema).validate(body)
