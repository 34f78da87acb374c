"""Platform add-ons under Pulumi mocks: the pinned charts, the values each cloud gets, the switches."""

from __future__ import annotations

import re

import pytest

from inferplane.components import Platform, PlatformArgs, testing
from inferplane.components.charts import CHART_KEYS, deep_merge, load_chart
from inferplane.config import ConfigError, from_mapping

RELEASE = "kubernetes:helm.sh/v3:Release"
REGIONS = {"gke": "europe-west4", "eks": "eu-north-1", "scaleway": "fr-par",
           "existing": "europe-west4", "local": "local"}


@pytest.fixture
def mocks():
    return testing.install()


def config_for(cloud: str, **overrides):
    data = {"cloud": cloud, "region": REGIONS[cloud]}
    if cloud == "scaleway":
        data["zone"] = "fr-par-2"
    data.update(overrides)
    return from_mapping(data)


def releases(mocks) -> dict[str, testing.RecordedResource]:
    return {r.inputs["chart"]: r for r in mocks.of_type(RELEASE)}


def deploy(mocks, cloud: str, **args) -> dict[str, testing.RecordedResource]:
    testing.run_program(lambda: Platform("platform", PlatformArgs(config=config_for(cloud), **args)))
    return releases(mocks)


def test_gke_gpu_operator_uses_the_driver_gke_installs(mocks):
    values = deploy(mocks, "gke")["gpu-operator"].inputs["values"]
    assert values["driver"]["enabled"] is False
    assert values["hostPaths"]["driverInstallDir"] == "/home/kubernetes/bin/nvidia"
    assert values["toolkit"]["installDir"] == "/home/kubernetes/bin/nvidia"
    assert {"name": "RUNTIME_CONFIG_SOURCE", "value": "file"} in values["toolkit"]["env"]
    # Merged over the common values, not replacing them.
    assert values["daemonsets"]["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert values["dcgmExporter"]["enabled"] is True


def test_gke_gets_the_priority_class_quota_before_the_operator(mocks):
    deploy(mocks, "gke")
    quota = mocks.one("kubernetes:core/v1:ResourceQuota")
    assert quota.inputs["metadata"]["namespace"] == "gpu-operator"
    scopes = quota.inputs["spec"]["scopeSelector"]["matchExpressions"][0]["values"]
    assert "system-node-critical" in scopes
    release = releases(mocks)["gpu-operator"]
    assert quota.urn in release.dependencies


def test_eks_gpu_operator_leaves_driver_and_toolkit_to_the_ami(mocks):
    values = deploy(mocks, "eks")["gpu-operator"].inputs["values"]
    assert values["driver"]["enabled"] is False
    assert values["toolkit"]["enabled"] is False
    assert "hostPaths" not in values  # GKE's paths must not leak into other clouds
    assert mocks.of_type("kubernetes:core/v1:ResourceQuota") == []


def test_existing_cluster_gpu_operator_installs_the_driver(mocks):
    values = deploy(mocks, "existing")["gpu-operator"].inputs["values"]
    assert values["driver"]["enabled"] is True
    assert "enabled" not in values.get("toolkit", {})  # chart default: on


def test_scaleway_leaves_the_gpu_operator_to_kapsule(mocks):
    found = deploy(mocks, "scaleway")
    assert "gpu-operator" not in found
    assert {"ingress-nginx", "cert-manager"} <= set(found)


def test_local_installs_nothing_by_default(mocks):
    assert deploy(mocks, "local") == {}


def test_releases_use_the_pins_in_charts(mocks):
    found = deploy(mocks, "gke")
    for key in CHART_KEYS:
        pin = load_chart(key)
        inputs = found[pin.chart].inputs
        assert inputs["version"] == pin.version
        assert inputs["repositoryOpts"] == {"repo": pin.repo}
        assert inputs["name"] == pin.release


def test_ingress_controller_serves_the_configs_class_in_the_admitted_namespace(mocks):
    config = config_for("eks", ingress={"class_name": "public", "controller_namespace": "edge"})
    testing.run_program(lambda: Platform("platform", PlatformArgs(config=config)))
    inputs = releases(mocks)["ingress-nginx"].inputs
    assert inputs["namespace"] == "edge"
    assert inputs["values"]["controller"]["ingressClassResource"]["name"] == "public"
    # The EKS overlay: a network load balancer.
    annotations = inputs["values"]["controller"]["service"]["annotations"]
    assert annotations["service.beta.kubernetes.io/aws-load-balancer-type"] == "nlb"


def test_each_add_on_can_be_switched_off(mocks):
    found = deploy(mocks, "gke", gpu_operator=False, cert_manager=False)
    assert set(found) == {"ingress-nginx"}


def test_no_ingress_means_no_ingress_controller_or_cert_manager(mocks):
    config = config_for("gke", ingress={"enabled": False})
    testing.run_program(lambda: Platform("platform", PlatformArgs(config=config)))
    assert set(releases(mocks)) == {"gpu-operator"}


def test_acme_email_creates_the_cluster_issuer_the_ingress_names(mocks):
    deploy(mocks, "gke", acme_email="ops@example.eu")
    issuer = mocks.one("kubernetes:cert-manager.io/v1:ClusterIssuer")
    assert issuer.inputs["metadata"]["name"] == "letsencrypt"
    acme = issuer.inputs["spec"]["acme"]
    assert acme["email"] == "ops@example.eu"
    assert acme["solvers"][0]["http01"]["ingress"]["ingressClassName"] == "nginx"
    assert releases(mocks)["cert-manager"].urn in issuer.dependencies


def test_no_acme_email_creates_no_issuer(mocks):
    deploy(mocks, "gke")
    assert mocks.of_type("kubernetes:cert-manager.io/v1:ClusterIssuer") == []


def test_bad_acme_email_is_refused_before_anything_exists(mocks):
    with pytest.raises(ConfigError, match="platform.acmeEmail"):
        deploy(mocks, "gke", acme_email="ops.example.eu")
    assert mocks.resources == []


@pytest.mark.parametrize("key", CHART_KEYS)
def test_every_chart_is_pinned_to_a_version_from_an_https_repo(key):
    pin = load_chart(key)
    assert pin.repo.startswith("https://")
    assert re.fullmatch(r"v?\d+\.\d+\.\d+", pin.version), pin.version
    assert set(pin.enabled_by_default) <= set(REGIONS)
    for overlay in pin.directory.glob("values-*.yaml"):
        assert overlay.stem.removeprefix("values-") in REGIONS, overlay.name


def test_deep_merge_merges_maps_and_replaces_lists():
    base = {"a": {"b": 1, "c": [1]}, "d": 1}
    merged = deep_merge(base, {"a": {"c": [2]}, "e": 2})
    assert merged == {"a": {"b": 1, "c": [2]}, "d": 1, "e": 2}
    assert base == {"a": {"b": 1, "c": [1]}, "d": 1}
