"""GKE node pool under Pulumi mocks: what would reach the GKE API, and what never would."""

from __future__ import annotations

import json
import sys

import pulumi
import pytest

from inferplane.components import GkeGpuNodePool, GkeGpuNodePoolArgs, GpuNodePool, MissingCloudSdkError
from inferplane.components import testing
from inferplane.config import ConfigError, DeploymentConfig, from_mapping
from inferplane.render import render

NODE_POOL = "gcp:container/nodePool:NodePool"
CLUSTER = "gcp:container/cluster:Cluster"


@pytest.fixture
def mocks():
    return testing.install()


def gke_config(**overrides) -> DeploymentConfig:
    data = {"cloud": "gke", "region": "europe-west4", "zone": "europe-west4-c",
            "model": {"name": "nemotron-ultra-253b"},
            "ingress": {"source_cidrs": ["10.129.0.0/23"]}}
    data.update(overrides)
    return from_mapping(data)


def gpu_pool(mocks) -> testing.RecordedResource:
    return next(r for r in mocks.of_type(NODE_POOL) if r.name.endswith("-gpu"))


def test_pool_on_existing_cluster_has_catalog_machine_region_and_bounds(mocks):
    args = GkeGpuNodePoolArgs(config=gke_config(), cluster_name="prod", project="eu-proj",
                              min_nodes=1, max_nodes=3)
    testing.run_program(lambda: GkeGpuNodePool("gpu", args))

    assert mocks.of_type(CLUSTER) == []  # a cluster name means: node pool only
    pool = gpu_pool(mocks).inputs
    assert pool["cluster"] == "prod"
    assert pool["location"] == "europe-west4"
    assert pool["nodeLocations"] == ["europe-west4-c"]
    assert pool["project"] == "eu-proj"
    node = pool["nodeConfig"]
    assert node["machineType"] == "a3-highgpu-8g"
    (gpu,) = node["guestAccelerators"]
    assert gpu["type"] == "nvidia-h100-80gb"
    assert gpu["count"] == 8
    assert gpu["gpuDriverInstallationConfig"] == {"gpuDriverVersion": "LATEST"}
    assert pool["autoscaling"]["totalMinNodeCount"] == 1
    assert pool["autoscaling"]["totalMaxNodeCount"] == 3
    assert pool["initialNodeCount"] == 1
    # The cluster was looked up in the same region, to build the kubeconfig.
    token, call_args = mocks.calls[0]
    assert token == "gcp:container/getCluster:getCluster"
    assert call_args["location"] == "europe-west4" and call_args["name"] == "prod"


def test_labels_and_taint_are_what_the_rendered_workload_selects_and_tolerates(mocks):
    config = gke_config()
    testing.run_program(lambda: GkeGpuNodePool("gpu", GkeGpuNodePoolArgs(config=config,
                                                                           cluster_name="prod")))
    node = gpu_pool(mocks).inputs["nodeConfig"]
    deployment = next(m for m in render(config) if m["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    for key, value in pod["nodeSelector"].items():
        assert node["labels"][key] == value
    assert node["labels"]["inferplane.io/accelerator"] == "H100-80G"
    (taint,) = node["taints"]
    assert taint == {"key": "nvidia.com/gpu", "value": "present", "effect": "NO_SCHEDULE"}
    assert any(t["key"] == taint["key"] and t["operator"] == "Exists" and t["effect"] == "NoSchedule"
               for t in pod["tolerations"])


def test_gke_installs_the_driver_and_keeps_its_device_plugin(mocks):
    # Defect 1: the label excluding GKE's device plugin (whose DaemonSet also installs the driver)
    # plus the operator with its driver off left nodes that never advertise nvidia.com/gpu.
    # One stack: GKE's (https://cloud.google.com/kubernetes-engine/docs/how-to/gpus).
    testing.run_program(lambda: GkeGpuNodePool("gpu", GkeGpuNodePoolArgs(
        config=gke_config(), cluster_name="prod")))
    node = gpu_pool(mocks).inputs["nodeConfig"]
    assert "gke-no-default-nvidia-gpu-device-plugin" not in node["labels"]
    assert node["guestAccelerators"][0]["gpuDriverInstallationConfig"] == {
        "gpuDriverVersion": "LATEST"}
    assert node["imageType"] == "COS_CONTAINERD"


@pytest.mark.parametrize("args, field", [
    ({"gpu_operator": True}, "platform.gpuOperator"),
    ({"gpu_driver_version": "INSTALLATION_DISABLED"}, "gke.gpuDriverVersion"),
])
def test_the_other_gpu_stack_is_impossible(mocks, args, field):
    with pytest.raises(ConfigError, match=field):
        testing.run_program(lambda: GkeGpuNodePool("gpu", GkeGpuNodePoolArgs(
            config=gke_config(), cluster_name="prod", **args)))
    assert mocks.resources == []


def test_a_zone_is_required_so_the_pool_does_not_span_zones_without_the_machine(mocks):
    # Defect 2: with no zone the pool spans every zone of the region, and counts per zone.
    config = from_mapping({"cloud": "gke", "region": "europe-west4",
                           "ingress": {"source_cidrs": ["10.129.0.0/23"]}})
    with pytest.raises(ConfigError, match="zone"):
        testing.run_program(lambda: GkeGpuNodePool("gpu", GkeGpuNodePoolArgs(
            config=config, cluster_name="prod")))
    assert mocks.resources == []


def test_changing_the_minimum_never_replaces_the_pool(mocks):
    # Defect 2: initial_node_count forces a replacement; it is only the creation size now, and
    # scaling goes through the autoscaling bounds.
    seen = {}

    def capture(args):
        if args.type_ == NODE_POOL:
            seen[args.name] = list(args.opts.ignore_changes or [])
        return None

    def program():
        pulumi.runtime.register_stack_transformation(capture)
        GkeGpuNodePool("gpu", GkeGpuNodePoolArgs(config=gke_config(), cluster_name="prod",
                                                 min_nodes=2, max_nodes=3))

    testing.run_program(program)
    assert seen["gpu-gpu"] == ["initialNodeCount"]
    pool = gpu_pool(mocks).inputs
    assert pool["nodeLocations"] == ["europe-west4-c"]
    assert pool["autoscaling"]["totalMinNodeCount"] == 2


def test_reservation_capacity_consumes_the_named_reservation(mocks):
    # Defect 3: a3-highgpu-8g capacity often needs a specific reservation.
    testing.run_program(lambda: GkeGpuNodePool("gpu", GkeGpuNodePoolArgs(
        config=gke_config(), cluster_name="prod", capacity="reservation", reservation="h100-res")))
    node = gpu_pool(mocks).inputs["nodeConfig"]
    assert node["reservationAffinity"] == {
        "consumeReservationType": "SPECIFIC_RESERVATION",
        "key": "compute.googleapis.com/reservation-name", "values": ["h100-res"]}


@pytest.mark.parametrize("capacity, expected", [
    ("spot", {"spot": True}),
    ("flex_start", {"flexStart": True,
                    "reservationAffinity": {"consumeReservationType": "NO_RESERVATION"}}),
])
def test_spot_and_flex_start(mocks, capacity, expected):
    testing.run_program(lambda: GkeGpuNodePool("gpu", GkeGpuNodePoolArgs(
        config=gke_config(), cluster_name="prod", capacity=capacity)))
    node = gpu_pool(mocks).inputs["nodeConfig"]
    assert {k: node.get(k) for k in expected} == expected


def test_reservation_only_machines_are_refused_on_demand(mocks):
    # Defect 3: A3 Ultra (H200) and A4 (B200) are not sold on demand on GKE.
    config = gke_config(accelerator={"type": "H200-141G", "tensor_parallel_size": 8})
    with pytest.raises(ConfigError, match="gke.capacity"):
        testing.run_program(lambda: GkeGpuNodePool("gpu", GkeGpuNodePoolArgs(
            config=config, cluster_name="prod")))
    with pytest.raises(ConfigError, match="gke.reservation"):
        testing.run_program(lambda: GkeGpuNodePool("gpu", GkeGpuNodePoolArgs(
            config=config, cluster_name="prod", capacity="reservation")))
    assert mocks.resources == []


def test_without_a_cluster_name_a_regional_cluster_and_system_pool_are_created(mocks):
    args = GkeGpuNodePoolArgs(config=gke_config(), project="eu-proj")
    testing.run_program(lambda: GkeGpuNodePool("gpu", args))

    cluster = mocks.one(CLUSTER).inputs
    assert cluster["location"] == "europe-west4"
    assert cluster["removeDefaultNodePool"] is True
    assert cluster["deletionProtection"] is False  # `pulumi destroy` must be able to remove it
    # GKE's managed Gateway controller serves the rendered Gateway.
    assert cluster["gatewayApiConfig"] == {"channel": "CHANNEL_STANDARD"}
    names = sorted(r.name for r in mocks.of_type(NODE_POOL))
    assert names == ["gpu-gpu", "gpu-system"]
    system = next(r for r in mocks.of_type(NODE_POOL) if r.name == "gpu-system").inputs
    assert "taints" not in system["nodeConfig"]  # the add-ons run here
    # Every child hangs under the component.
    component = mocks.one("inferplane:gpu:NodePool")
    assert all(r.parent == component.urn for r in mocks.resources if r is not component)


def test_default_bounds_come_from_sizing_and_leave_room_for_a_surge(mocks):
    config = gke_config(replicas=1)
    testing.run_program(lambda: GkeGpuNodePool("gpu", GkeGpuNodePoolArgs(config=config,
                                                                           cluster_name="c")))
    autoscaling = gpu_pool(mocks).inputs["autoscaling"]
    assert (autoscaling["totalMinNodeCount"], autoscaling["totalMaxNodeCount"]) == (1, 2)


def test_kubeconfig_is_a_secret_that_uses_the_gke_auth_plugin(mocks):
    def program():
        pool = GkeGpuNodePool("gpu", GkeGpuNodePoolArgs(config=gke_config(), cluster_name="prod"))

        async def check():
            assert await pool.kubeconfig.is_secret()
            text = await pool.kubeconfig.future()
            kubeconfig = json.loads(text)
            user = kubeconfig["users"][0]["user"]["exec"]
            assert user["command"] == "gke-gcloud-auth-plugin"
            assert kubeconfig["clusters"][0]["cluster"]["server"] == "https://203.0.113.10"
            return True

        return pulumi.Output.from_input(check())

    testing.run_program(program)


def test_factory_picks_the_gke_component(mocks):
    created = []
    testing.run_program(lambda: created.append(GpuNodePool.for_cloud(
        "gpu", GkeGpuNodePoolArgs(config=gke_config(), cluster_name="prod"))))
    assert isinstance(created[0], GkeGpuNodePool)
    assert created[0].machine_type == "a3-highgpu-8g" and created[0].gpus_per_node == 8


def test_non_eu_region_fails_before_any_resource_is_registered(mocks):
    # Built without validation, as a caller of the component could: the component checks again.
    config = DeploymentConfig.model_validate({"cloud": "gke", "region": "us-central1",
                                              "zone": "us-central1-a"})
    with pytest.raises(ConfigError) as error:
        testing.run_program(lambda: GkeGpuNodePool("gpu", GkeGpuNodePoolArgs(config=config)))
    assert "us-central1" in str(error.value) and "region" in str(error.value)
    assert mocks.resources == []


def test_cluster_location_outside_the_region_is_refused(mocks):
    args = GkeGpuNodePoolArgs(config=gke_config(), cluster_name="prod",
                              cluster_location="us-east1-b")
    with pytest.raises(ConfigError, match="gke.clusterLocation"):
        testing.run_program(lambda: GkeGpuNodePool("gpu", args))
    assert mocks.resources == []


def test_max_below_what_the_replicas_need_is_refused(mocks):
    args = GkeGpuNodePoolArgs(config=gke_config(replicas=2, model_cache={"kind": "host_path",
                                                                         "host_path": "/mnt/m"}),
                              cluster_name="prod", min_nodes=0, max_nodes=1)
    with pytest.raises(ConfigError, match="nodePool.maxNodes"):
        testing.run_program(lambda: GkeGpuNodePool("gpu", args))
    assert mocks.resources == []


def test_missing_google_sdk_names_the_extra(mocks, monkeypatch):
    monkeypatch.setitem(sys.modules, "pulumi_gcp", None)
    with pytest.raises(MissingCloudSdkError, match=r"pip install 'inferplane\[gcp\]'"):
        testing.run_program(lambda: GkeGpuNodePool("gpu", GkeGpuNodePoolArgs(
            config=gke_config(), cluster_name="prod")))
    assert mocks.resources == []


def test_with_autoscaling_the_bounds_follow_min_and_max_replicas(mocks):
    config = gke_config(autoscaling={"enabled": True, "min_replicas": 1, "max_replicas": 3},
                        model_cache={"kind": "pvc", "access_mode": "ReadOnlyMany"})
    testing.run_program(lambda: GkeGpuNodePool("gpu", GkeGpuNodePoolArgs(config=config,
                                                                           cluster_name="c")))
    autoscaling = gpu_pool(mocks).inputs["autoscaling"]
    assert (autoscaling["totalMinNodeCount"], autoscaling["totalMaxNodeCount"]) == (1, 3)
