"""The GitOps path: what `inferplane render` writes applies cleanly with server-side apply, and the
API server itself (not a client-side schema) rejects a broken manifest in a server-side dry run.

The Gateway and HTTPRoutes are applied against the Gateway API v1.6 CRDs (installed from the Go
module, as src/inferplane/crds.py reads them), so the API server's own validation — including the
CRDs' CEL rules, which a JSON schema check does not run — accepts them."""

from __future__ import annotations

import copy
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient

from inferplane.crds import crd_document

from .conftest import REPO_ROOT
from .kube_helpers import spec_differences

NAMESPACE = "inferplane-gitops"
FIELD_MANAGER = "inferplane-gitops-test"

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> list[dict]:
    """The shipped example, in its own namespace, rendered by the real CLI into a GitOps directory."""
    work = tmp_path_factory.mktemp("gitops")
    config = yaml.safe_load((REPO_ROOT / "examples" / "nemotron-ultra.yaml").read_text())
    config["namespace"] = NAMESPACE
    # The example's GKE Gateway policies need CRDs only GKE installs: render the same deployment
    # for a cluster of our own, whose entry is Envoy Gateway (Gateway + HTTPRoutes, no GKE kinds).
    config["cloud"] = "existing"
    config_file = work / "config.yaml"
    config_file.write_text(yaml.safe_dump(config))
    out = work / "rendered"
    subprocess.run([str(Path(sys.executable).with_name("inferplane")), "render",
                    "-f", str(config_file), "-o", str(out)], check=True, capture_output=True, text=True)
    files = sorted(p for p in out.glob("*.yaml") if p.name != "kustomization.yaml")
    assert files, "render wrote no manifests"
    return [yaml.safe_load(p.read_text()) for p in files]


GATEWAY_API_KINDS = [("gateway.networking.k8s.io/v1", kind)
                     for kind in ("GatewayClass", "Gateway", "HTTPRoute")] + [
    ("gateway.envoyproxy.io/v1alpha1", "BackendTrafficPolicy")]  # Envoy Gateway's, same pin


@pytest.fixture(scope="module")
def gateway_api_crds(kube_client):
    """The Gateway API CRDs (and Envoy Gateway's policy CRD), Established before anything uses them."""
    dyn = DynamicClient(kube_client)
    crds = dyn.resources.get(api_version="apiextensions.k8s.io/v1", kind="CustomResourceDefinition")
    names = []
    for api_version, kind in GATEWAY_API_KINDS:
        document = crd_document(api_version, kind)
        crds.server_side_apply(body=document, field_manager=FIELD_MANAGER, force_conflicts=True)
        names.append(document["metadata"]["name"])
    deadline = time.monotonic() + 60
    for name in names:
        while True:
            conditions = crds.get(name=name).to_dict().get("status", {}).get("conditions") or []
            if any(c["type"] == "Established" and c["status"] == "True" for c in conditions):
                break
            assert time.monotonic() < deadline, f"CRD {name} not Established within 60 s"
            time.sleep(0.5)
    return names


@pytest.fixture(scope="module")
def dynamic(kube_client, rendered, gateway_api_crds):
    dyn = DynamicClient(kube_client)
    dyn.resources.invalidate_cache()  # discovery may predate the CRDs
    yield dyn
    # Remove everything, cluster-scoped objects too (a PriorityClass outlives its namespace), so
    # the Pulumi tests start from a cluster with nothing of ours.
    for manifest in reversed(rendered):
        meta = manifest["metadata"]
        try:
            _resource(dyn, manifest).delete(name=meta["name"], namespace=meta.get("namespace"))
        except ApiException as error:
            if error.status != 404:
                raise


def _resource(dyn: DynamicClient, manifest: dict):
    return dyn.resources.get(api_version=manifest["apiVersion"], kind=manifest["kind"])


def _apply(dyn: DynamicClient, manifest: dict, dry_run: bool = False):
    return _resource(dyn, manifest).server_side_apply(
        body=manifest, field_manager=FIELD_MANAGER, force_conflicts=True,
        dry_run="All" if dry_run else None)


def test_render_output_applies_cleanly_with_server_side_apply(dynamic, rendered):
    for manifest in rendered:
        _apply(dynamic, manifest)
    for manifest in rendered:
        meta = manifest["metadata"]
        live = _resource(dynamic, manifest).get(name=meta["name"],
                                                namespace=meta.get("namespace")).to_dict()
        for section in ("metadata", "spec", "data"):
            if section in manifest:
                wanted = manifest[section]
                if section == "metadata":
                    wanted = {k: v for k, v in wanted.items() if k in ("labels", "annotations")}
                problems = spec_differences(wanted, live.get(section), f"{manifest['kind']}.{section}")
                assert not problems, "\n".join(problems)
        managers = [m["manager"] for m in live["metadata"]["managedFields"]]
        assert FIELD_MANAGER in managers


def _version(live) -> tuple[str, object]:
    """What a real change bumps: the generation where the API keeps one (spec changes only, not
    status), else the resourceVersion."""
    generation = live.metadata.generation
    return ("generation", generation) if generation else ("resourceVersion",
                                                          live.metadata.resourceVersion)


def test_applying_the_same_output_again_changes_nothing(dynamic, rendered):
    for manifest in rendered:
        _apply(dynamic, manifest)
    before = {}
    for manifest in rendered:
        meta = manifest["metadata"]
        before[(manifest["kind"], meta["name"])] = _version(_resource(dynamic, manifest).get(
            name=meta["name"], namespace=meta.get("namespace")))
    for manifest in rendered:
        after = _version(_apply(dynamic, manifest))
        key = (manifest["kind"], manifest["metadata"]["name"])
        assert after == before[key], f"{key} changed on a no-op apply: {before[key]} -> {after}"


def _deployment(rendered: list[dict]) -> dict:
    return copy.deepcopy(next(m for m in rendered if m["kind"] == "Deployment"))


def _break_selector(d: dict) -> str:
    d["spec"]["template"]["metadata"]["labels"] = {"app.kubernetes.io/name": "something-else"}
    return "does not match template"


def _break_gpu_quantity(d: dict) -> str:
    container = d["spec"]["template"]["spec"]["containers"][0]
    container["resources"]["limits"]["nvidia.com/gpu"] = "-8"
    container["resources"].setdefault("requests", {})["nvidia.com/gpu"] = "-8"
    return "must be greater than or equal to 0"


def _break_port(d: dict) -> str:
    gateway = next(c for c in d["spec"]["template"]["spec"]["containers"] if c.get("ports"))
    gateway["ports"][0]["containerPort"] = 70000
    return "must be between 1 and 65535"


@pytest.mark.parametrize("breakage", [_break_selector, _break_gpu_quantity, _break_port],
                         ids=["selector-not-matching-pods", "negative-gpus", "port-out-of-range"])
def test_server_side_dry_run_rejects_a_broken_manifest(dynamic, rendered, breakage):
    broken = _deployment(rendered)
    broken["metadata"]["name"] = "broken-" + breakage.__name__.strip("_").replace("_", "-")
    expected_message = breakage(broken)
    # The unbroken manifest passes the same dry run, so the rejection is about the breakage.
    _apply(dynamic, {**_deployment(rendered), "metadata": broken["metadata"]}, dry_run=True)

    with pytest.raises(ApiException) as raised:
        _apply(dynamic, broken, dry_run=True)

    assert raised.value.status == 422
    assert expected_message in raised.value.body
    with pytest.raises(ApiException) as lookup:
        _resource(dynamic, broken).get(name=broken["metadata"]["name"], namespace=NAMESPACE)
    assert lookup.value.status == 404


def test_the_gateway_api_entry_is_what_the_render_applies(dynamic, rendered):
    kinds = [m["kind"] for m in rendered]
    assert "Gateway" in kinds and "HTTPRoute" in kinds and "Ingress" not in kinds
    route = next(m for m in rendered if m["kind"] == "HTTPRoute" and m["spec"]["rules"][0].get("matches"))
    live = _resource(dynamic, route).get(name=route["metadata"]["name"], namespace=NAMESPACE).to_dict()
    assert live["spec"]["rules"][0]["timeouts"] == {"request": "3600s"}


def test_the_api_server_rejects_what_the_gateway_api_crds_forbid(dynamic, rendered):
    # A CEL rule of the HTTPRoute CRD (a schema check alone accepts it): a path must start with /.
    route = copy.deepcopy(next(m for m in rendered if m["kind"] == "HTTPRoute"
                               and m["spec"]["rules"][0].get("matches")))
    route["metadata"]["name"] = "broken-route"
    route["spec"]["rules"][0]["matches"][0]["path"]["value"] = "v1"
    with pytest.raises(ApiException) as raised:
        _apply(dynamic, route, dry_run=True)
    assert raised.value.status == 422
    assert "must be an absolute path" in raised.value.body
