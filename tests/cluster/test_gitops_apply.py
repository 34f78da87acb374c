"""The GitOps path: what `inferplane render` writes applies cleanly with server-side apply, and the
API server itself (not a client-side schema) rejects a broken manifest in a server-side dry run."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient

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
    config_file = work / "config.yaml"
    config_file.write_text(yaml.safe_dump(config))
    out = work / "rendered"
    subprocess.run([str(Path(sys.executable).with_name("inferplane")), "render",
                    "-f", str(config_file), "-o", str(out)], check=True, capture_output=True, text=True)
    files = sorted(p for p in out.glob("*.yaml") if p.name != "kustomization.yaml")
    assert files, "render wrote no manifests"
    return [yaml.safe_load(p.read_text()) for p in files]


@pytest.fixture(scope="module")
def dynamic(kube_client, rendered):
    dyn = DynamicClient(kube_client)
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
