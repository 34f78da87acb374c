"""The `existing`/`local` node pool: records the node contract, creates nothing."""

from __future__ import annotations

import pytest

from inferplane.components import (
    ExistingGpuNodePool, ExistingGpuNodePoolArgs, GkeGpuNodePoolArgs, GpuNodePool, testing,
)
from inferplane.config import ConfigError, DeploymentConfig, from_mapping


@pytest.fixture
def mocks():
    return testing.install()


@pytest.mark.parametrize("cloud,region", [("existing", "europe-west4"), ("existing", "fr-par"),
                                          ("local", "local")])
def test_registers_only_the_component_with_the_node_contract(mocks, cloud, region):
    config = from_mapping({"cloud": cloud, "region": region})
    pools = []
    testing.run_program(lambda: pools.append(GpuNodePool.for_cloud(
        "gpu", ExistingGpuNodePoolArgs(config=config, min_nodes=1, max_nodes=1))))
    assert isinstance(pools[0], ExistingGpuNodePool)
    (component,) = mocks.resources
    assert component.type == "inferplane:gpu:NodePool"
    outputs = component.outputs
    assert outputs["labels"] == {"inferplane.io/accelerator": "H100-80G",
                                 "inferplane.io/deployment": "nemotron-ultra"}
    assert outputs["taint"] == {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
    assert outputs["gpus_per_node"] == 8
    assert (outputs["min_nodes"], outputs["max_nodes"]) == (1, 1)
    assert "inferplane.io/accelerator=H100-80G" in outputs["check_command"]
    assert pools[0].kubeconfig is None  # the provider falls back to KUBECONFIG


def test_existing_cluster_outside_the_eu_is_refused(mocks):
    config = DeploymentConfig.model_validate({"cloud": "existing", "region": "us-east-1"})
    with pytest.raises(ConfigError, match="us-east-1"):
        testing.run_program(lambda: ExistingGpuNodePool("gpu", ExistingGpuNodePoolArgs(config=config)))
    assert mocks.resources == []


def test_a_pool_refuses_another_clouds_config(mocks):
    config = from_mapping({"cloud": "gke", "region": "europe-west4",
                           "ingress": {"source_cidrs": ["10.129.0.0/23"]}})
    with pytest.raises(ConfigError, match="cloud"):
        testing.run_program(lambda: ExistingGpuNodePool("gpu", ExistingGpuNodePoolArgs(config=config)))
    with pytest.raises(TypeError, match="GkeGpuNodePoolArgs"):
        from inferplane.components import GkeGpuNodePool
        GkeGpuNodePool("gpu", ExistingGpuNodePoolArgs(config=config))
    assert mocks.resources == []


def test_factory_rejects_args_of_another_cloud(mocks):
    config = from_mapping({"cloud": "local", "region": "local"})
    with pytest.raises(TypeError):
        GpuNodePool.for_cloud("gpu", GkeGpuNodePoolArgs(config=config))
    assert mocks.resources == []
