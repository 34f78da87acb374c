"""Scaleway Kapsule pool under Pulumi mocks."""

from __future__ import annotations

import sys

import pulumi
import pytest

from inferplane.components import MissingCloudSdkError, ScalewayGpuNodePool, ScalewayGpuNodePoolArgs
from inferplane.components import testing
from inferplane.config import ConfigError, DeploymentConfig, from_mapping

POOL = "scaleway:kubernetes/pool:Pool"
CLUSTER = "scaleway:kubernetes/cluster:Cluster"


@pytest.fixture
def mocks():
    return testing.install()


def scw_config(**overrides) -> DeploymentConfig:
    data = {"cloud": "scaleway", "region": "fr-par", "zone": "fr-par-2"}
    data.update(overrides)
    return from_mapping(data)


def gpu_pool(mocks) -> testing.RecordedResource:
    return next(r for r in mocks.of_type(POOL) if r.name.endswith("-gpu"))


def test_pool_on_existing_cluster_has_zone_type_and_bounds(mocks):
    args = ScalewayGpuNodePoolArgs(config=scw_config(), cluster_id="fr-par/1111", min_nodes=1,
                                   max_nodes=2)
    testing.run_program(lambda: ScalewayGpuNodePool("gpu", args))
    assert mocks.of_type(CLUSTER) == []
    pool = gpu_pool(mocks).inputs
    assert pool["clusterId"] == "fr-par/1111"
    assert pool["region"] == "fr-par" and pool["zone"] == "fr-par-2"
    assert pool["nodeType"] == "H100-SXM-8-80G"
    assert (pool["minSize"], pool["maxSize"], pool["size"]) == (1, 2, 1)
    assert pool["autoscaling"] is True and pool["autohealing"] is True
    assert mocks.calls[0][0] == "scaleway:kubernetes/getCluster:getCluster"


def test_labels_and_taint_use_kubernetes_spelling(mocks):
    testing.run_program(lambda: ScalewayGpuNodePool("gpu", ScalewayGpuNodePoolArgs(
        config=scw_config(), cluster_id="fr-par/1111")))
    pool = gpu_pool(mocks).inputs
    assert pool["labels"]["inferplane.io/accelerator"] == "H100-80G"
    assert pool["taints"] == [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]


def test_without_a_cluster_id_a_cluster_on_a_private_network_is_created(mocks):
    def program():
        pool = ScalewayGpuNodePool("gpu", ScalewayGpuNodePoolArgs(
            config=scw_config(), kubernetes_version="1.35"))

        async def check():
            assert await pool.kubeconfig.is_secret()
            assert "scw.cloud" in await pool.kubeconfig.future()
            return True

        return pulumi.Output.from_input(check())

    testing.run_program(program)
    network = mocks.one("scaleway:network/privateNetwork:PrivateNetwork").inputs
    cluster = mocks.one(CLUSTER).inputs
    assert network["region"] == "fr-par" and cluster["region"] == "fr-par"
    assert cluster["version"] == "1.35"
    assert cluster["privateNetworkId"] == "gpu-network-id"
    # Scale-down waits as long as the pods' grace period, so streams can finish.
    config = scw_config()
    assert cluster["autoscalerConfig"]["maxGracefulTerminationSec"] == config.probes.termination_grace_seconds
    assert sorted(r.name for r in mocks.of_type(POOL)) == ["gpu-gpu", "gpu-system"]


def test_creating_a_cluster_needs_a_version(mocks):
    with pytest.raises(ConfigError, match="scaleway.kubernetesVersion"):
        testing.run_program(lambda: ScalewayGpuNodePool("gpu", ScalewayGpuNodePoolArgs(
            config=scw_config())))
    assert mocks.resources == []


def test_the_zone_is_required(mocks):
    config = from_mapping({"cloud": "scaleway", "region": "fr-par"})
    with pytest.raises(ConfigError, match="zone"):
        testing.run_program(lambda: ScalewayGpuNodePool("gpu", ScalewayGpuNodePoolArgs(
            config=config, cluster_id="fr-par/1111")))
    assert mocks.resources == []


def test_non_eu_region_fails_before_any_resource_is_registered(mocks):
    config = DeploymentConfig.model_validate({"cloud": "scaleway", "region": "us-east",
                                              "zone": "us-east-1"})
    with pytest.raises(ConfigError, match="us-east"):
        testing.run_program(lambda: ScalewayGpuNodePool("gpu", ScalewayGpuNodePoolArgs(
            config=config, cluster_id="x")))
    assert mocks.resources == []


def test_missing_scaleway_sdk_names_the_extra(mocks, monkeypatch):
    monkeypatch.setitem(sys.modules, "pulumiverse_scaleway", None)
    with pytest.raises(MissingCloudSdkError, match=r"pip install 'inferplane\[scaleway\]'"):
        testing.run_program(lambda: ScalewayGpuNodePool("gpu", ScalewayGpuNodePoolArgs(
            config=scw_config(), cluster_id="fr-par/1111")))
    assert mocks.resources == []
