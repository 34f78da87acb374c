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
            "model": {"name": "nemotron-ultra-253b"}}
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
    # With the GPU operator on, GKE's own device plugin must stay off the node.
    assert node["labels"]["gke-no-default-nvidia-gpu-device-plugin"] == "true"


def test_without_the_gpu_operator_gke_keeps_its_device_plugin(mocks):
    args = GkeGpuNodePoolArgs(config=gke_config(), cluster_name="prod", gpu_operator=False)
    testing.run_program(lambda: GkeGpuNodePool("gpu", args))
    assert "gke-no-default-nvidia-gpu-device-plugin" not in gpu_pool(mocks).inputs["nodeConfig"]["labels"]


def test_without_a_cluster_name_a_regional_cluster_and_system_pool_are_created(mocks):
    args = GkeGpuNodePoolArgs(config=gke_config(), project="eu-proj")
    testing.run_program(lambda: GkeGpuNodePool("gpu", args))

    cluster = mocks.one(CLUSTER).inputs
    assert cluster["location"] == "europe-west4"
    assert cluster["removeDefaultNodePool"] is True
    assert cluster["deletionProtection"] is False  # `pulumi destroy` must be able to remove it
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
    config = DeploymentConfig.model_validate({"cloud": "gke", "region": "us-central1"})
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
