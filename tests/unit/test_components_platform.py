"""Platform add-ons under Pulumi mocks: the pinned charts, the values each cloud gets, the switches."""

from __future__ import annotations

import re

import pytest

from inferplane.components import Platform, PlatformArgs, testing
from inferplane.components.charts import CHART_KEYS, deep_merge, load_chart
from inferplane.config import ConfigError, from_mapping

from ..conftest import with_gke_proxy_subnet

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
    if cloud == "eks":
        data["model_cache"] = {"storage_class": "gp3"}
    data.update(overrides)
    return from_mapping(with_gke_proxy_subnet(data))


def releases(mocks) -> dict[str, testing.RecordedResource]:
    return {r.inputs["chart"]: r for r in mocks.of_type(RELEASE)}


def deploy(mocks, cloud: str, **args) -> dict[str, testing.RecordedResource]:
    testing.run_program(lambda: Platform("platform", PlatformArgs(config=config_for(cloud), **args)))
    return releases(mocks)


def test_gke_installs_no_gpu_stack_and_refuses_the_operator(mocks):
    # GKE installs the driver and runs its device plugin: a second stack (defect: the operator
    # with the GKE plugin disabled and no driver) would leave nvidia.com/gpu unadvertised.
    found = deploy(mocks, "gke")
    assert "gpu-operator" not in found and "nvidia-device-plugin" not in found
    with pytest.raises(ConfigError, match="platform.gpuOperator"):
        deploy(mocks, "gke", gpu_operator=True)


def test_eks_gets_the_nvidia_device_plugin_not_the_operator(mocks):
    # The AL2023 NVIDIA AMI ships driver and toolkit; AWS documents installing the device plugin;
    # NVIDIA's operator platform matrix lists Ubuntu, not Amazon Linux, for EKS.
    found = deploy(mocks, "eks")
    assert "gpu-operator" not in found
    plugin = found["nvidia-device-plugin"].inputs
    assert plugin["repositoryOpts"] == {"repo": "https://nvidia.github.io/k8s-device-plugin"}
    assert plugin["values"]["tolerations"][0]["key"] == "nvidia.com/gpu"


def test_eks_gets_a_gp3_storage_class_that_binds_where_the_pod_lands(mocks):
    deploy(mocks, "eks")
    storage = mocks.one("kubernetes:storage.k8s.io/v1:StorageClass")
    assert storage.inputs["metadata"]["name"] == "gp3"
    assert storage.inputs["provisioner"] == "ebs.csi.aws.com"
    assert storage.inputs["volumeBindingMode"] == "WaitForFirstConsumer"
    assert storage.inputs["parameters"] == {"type": "gp3", "encrypted": "true"}


def test_existing_cluster_gpu_operator_installs_the_driver(mocks):
    values = deploy(mocks, "existing")["gpu-operator"].inputs["values"]
    assert values["driver"]["enabled"] is True
    assert "enabled" not in values.get("toolkit", {})  # chart default: on


def test_scaleway_leaves_the_gpu_operator_to_kapsule(mocks):
    found = deploy(mocks, "scaleway")
    assert "gpu-operator" not in found
    assert {"oci://docker.io/envoyproxy/gateway-helm", "cert-manager"} <= set(found)
    with pytest.raises(ConfigError, match="platform.gpuOperator"):
        deploy(mocks, "scaleway", gpu_operator=True)


def test_local_installs_nothing_by_default(mocks):
    assert deploy(mocks, "local") == {}


def test_releases_use_the_pins_in_charts(mocks):
    config = config_for("existing", autoscaling={"enabled": True},
                        model_cache={"access_mode": "ReadWriteMany"},
                        observability={"pod_monitor": True})
    testing.run_program(lambda: Platform("platform", PlatformArgs(
        config=config, nvidia_device_plugin=True)))
    found = releases(mocks)
    for key in CHART_KEYS:
        pin = load_chart(key)
        inputs = found[f"{pin.repo}/{pin.chart}" if pin.oci else pin.chart].inputs
        assert inputs["version"] == pin.version
        if not pin.oci:
            assert inputs["repositoryOpts"] == {"repo": pin.repo}
        assert inputs["name"] == pin.release


def test_envoy_gateway_release_and_its_gateway_class_before_cert_manager(mocks):
    found = deploy(mocks, "eks")
    envoy = found["oci://docker.io/envoyproxy/gateway-helm"]
    assert envoy.inputs["namespace"] == "envoy-gateway-system"  # the namespace the policy admits
    gateway_class = mocks.one("kubernetes:gateway.networking.k8s.io/v1:GatewayClass")
    assert gateway_class.inputs["metadata"]["name"] == "envoy-gateway"
    assert gateway_class.inputs["spec"]["controllerName"] == "gateway.envoyproxy.io/gatewayclass-controller"
    # EKS: Envoy's Service is a Network Load Balancer (no HTTP idle timeout on streams).
    proxy = mocks.one("kubernetes:gateway.envoyproxy.io/v1alpha1:EnvoyProxy")
    service = proxy.inputs["spec"]["provider"]["kubernetes"]["envoyService"]
    assert service["annotations"]["service.beta.kubernetes.io/aws-load-balancer-type"] == "external"
    assert gateway_class.inputs["spec"]["parametersRef"]["name"] == proxy.inputs["metadata"]["name"]
    # cert-manager's Gateway API support needs the CRDs the Envoy Gateway chart installs.
    cert_manager = found["cert-manager"]
    assert envoy.urn in cert_manager.dependencies
    assert cert_manager.inputs["values"]["config"]["enableGatewayAPI"] is True


def test_gke_uses_its_managed_gateway_controller(mocks):
    found = deploy(mocks, "gke")
    assert "oci://docker.io/envoyproxy/gateway-helm" not in found
    assert mocks.of_type("kubernetes:gateway.networking.k8s.io/v1:GatewayClass") == []


def test_autoscaling_installs_keda_and_observability_the_prometheus_crds(mocks):
    # Defect: a ScaledObject was rendered with no KEDA installed anywhere.
    assert "keda" not in deploy(mocks, "existing")
    config = config_for("existing", autoscaling={"enabled": True},
                        model_cache={"access_mode": "ReadWriteMany"},
                        observability={"prometheus_rules": True})
    testing.run_program(lambda: Platform("platform2", PlatformArgs(config=config)))
    found = releases(mocks)
    assert found["keda"].inputs["version"] == "2.21.0"  # the CRD version crds.py validates against
    assert found["keda"].inputs["repositoryOpts"] == {"repo": "https://kedacore.github.io/charts"}
    assert "prometheus-operator-crds" in found


def test_each_add_on_can_be_switched_off(mocks):
    found = deploy(mocks, "eks", nvidia_device_plugin=False, cert_manager=False)
    assert set(found) == {"oci://docker.io/envoyproxy/gateway-helm"}


def test_no_public_entry_means_no_gateway_or_cert_manager(mocks):
    config = config_for("eks", ingress={"enabled": False})
    testing.run_program(lambda: Platform("platform", PlatformArgs(config=config)))
    assert set(releases(mocks)) == {"nvidia-device-plugin"}


def test_acme_email_creates_the_cluster_issuer_solving_through_the_gateway(mocks):
    deploy(mocks, "gke", acme_email="ops@example.eu")
    issuer = mocks.one("kubernetes:cert-manager.io/v1:ClusterIssuer")
    assert issuer.inputs["metadata"]["name"] == "letsencrypt"
    acme = issuer.inputs["spec"]["acme"]
    assert acme["email"] == "ops@example.eu"
    route = acme["solvers"][0]["http01"]["gatewayHTTPRoute"]
    assert route["parentRefs"] == [{"name": "nemotron-ultra", "namespace": "inferplane",
                                     "kind": "Gateway", "sectionName": "http"}]
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
    assert pin.repo.startswith(("https://", "oci://"))
    assert re.fullmatch(r"v?\d+\.\d+\.\d+", pin.version), pin.version
    assert set(pin.enabled_by_default) <= set(REGIONS)
    for overlay in pin.directory.glob("values-*.yaml"):
        assert overlay.stem.removeprefix("values-") in REGIONS, overlay.name


def test_deep_merge_merges_maps_and_replaces_lists():
    base = {"a": {"b": 1, "c": [1]}, "d": 1}
    merged = deep_merge(base, {"a": {"c": [2]}, "e": 2})
    assert merged == {"a": {"b": 1, "c": [2]}, "d": 1, "e": 2}
    assert base == {"a": {"b": 1, "c": [1]}, "d": 1}


def test_scaleway_load_balancer_keeps_streams_as_long_as_the_read_timeout(mocks):
    deploy(mocks, "scaleway")
    proxy = mocks.one("kubernetes:gateway.envoyproxy.io/v1alpha1:EnvoyProxy")
    annotations = proxy.inputs["spec"]["provider"]["kubernetes"]["envoyService"]["annotations"]
    assert annotations == {"service.beta.kubernetes.io/scw-loadbalancer-timeout-tunnel": "3600s"}


@pytest.mark.parametrize("cloud", ["eks", "scaleway"])
def test_the_envoy_proxy_and_gateway_class_satisfy_their_crds(mocks, cloud):
    from inferplane.crds import validate_custom_resource

    deploy(mocks, cloud)
    for kind in ("gateway.envoyproxy.io/v1alpha1:EnvoyProxy", "gateway.networking.k8s.io/v1:GatewayClass"):
        recorded = mocks.one(f"kubernetes:{kind}").inputs
        api_version, name = kind.split(":")
        validate_custom_resource({"apiVersion": api_version, "kind": name,
                                  "metadata": recorded["metadata"], "spec": recorded["spec"]})


def test_existing_clusters_keep_envoys_default_service(mocks):
    deploy(mocks, "existing")
    assert mocks.of_type("kubernetes:gateway.envoyproxy.io/v1alpha1:EnvoyProxy") == []
    gateway_class = mocks.one("kubernetes:gateway.networking.k8s.io/v1:GatewayClass")
    assert "parametersRef" not in gateway_class.inputs["spec"]
