"""EKS node group under Pulumi mocks."""

from __future__ import annotations

import json
import sys

import pulumi
import pytest

from inferplane.components import EksGpuNodePool, EksGpuNodePoolArgs, MissingCloudSdkError
from inferplane.components import testing
from inferplane.config import ConfigError, DeploymentConfig, from_mapping

NODE_GROUP = "aws:eks/nodeGroup:NodeGroup"
ROLE = "arn:aws:iam::123456789012:role/nodes"


@pytest.fixture
def mocks():
    return testing.install()


def eks_config(**overrides) -> DeploymentConfig:
    data = {"cloud": "eks", "region": "eu-north-1", "model_cache": {"storage_class": "gp3"}}
    data.update(overrides)
    return from_mapping(data)


def eks_args(**overrides) -> EksGpuNodePoolArgs:
    values = dict(config=eks_config(),
                  cluster_name="prod", node_role_arn=ROLE, subnet_ids=["subnet-a", "subnet-b"])
    values.update(overrides)
    return EksGpuNodePoolArgs(**values)


def test_node_group_has_region_instance_ami_and_bounds(mocks):
    testing.run_program(lambda: EksGpuNodePool("gpu", eks_args(min_nodes=1, max_nodes=4)))
    group = mocks.one(NODE_GROUP).inputs
    assert group["region"] == "eu-north-1"
    assert group["clusterName"] == "prod"
    assert group["instanceTypes"] == ["p5.48xlarge"]
    assert group["amiType"] == "AL2023_x86_64_NVIDIA"
    assert group["nodeRoleArn"] == ROLE
    assert group["subnetIds"] == ["subnet-a", "subnet-b"]
    assert group["scalingConfig"] == {"minSize": 1, "maxSize": 4, "desiredSize": 1}
    # Images plus nothing else on the node: the weights live on the PVC.
    assert group["diskSize"] == 200


def test_labels_and_taint(mocks):
    testing.run_program(lambda: EksGpuNodePool("gpu", eks_args()))
    group = mocks.one(NODE_GROUP).inputs
    assert group["labels"]["inferplane.io/accelerator"] == "H100-80G"
    assert group["taints"] == [{"key": "nvidia.com/gpu", "value": "present", "effect": "NO_SCHEDULE"}]


def test_weights_on_the_node_grow_its_disk(mocks):
    config = eks_config(model_cache={"kind": "host_path", "host_path": "/mnt/models"})
    testing.run_program(lambda: EksGpuNodePool("gpu", eks_args(config=config)))
    assert mocks.one(NODE_GROUP).inputs["diskSize"] == 200 + config.cache_size_gib


def test_kubeconfig_uses_aws_eks_get_token_in_the_region(mocks):
    def program():
        pool = EksGpuNodePool("gpu", eks_args())

        async def check():
            assert await pool.kubeconfig.is_secret()
            user = json.loads(await pool.kubeconfig.future())["users"][0]["user"]["exec"]
            assert user["command"] == "aws"
            assert user["args"][:4] == ["eks", "get-token", "--cluster-name", "prod"]
            assert user["args"][user["args"].index("--region") + 1] == "eu-north-1"
            return True

        return pulumi.Output.from_input(check())

    testing.run_program(program)
    token, call_args = mocks.calls[0]
    assert token == "aws:eks/getCluster:getCluster" and call_args["region"] == "eu-north-1"


def test_missing_role_and_subnets_are_named_before_anything_exists(mocks):
    with pytest.raises(ConfigError) as error:
        testing.run_program(lambda: EksGpuNodePool("gpu", eks_args(node_role_arn="", subnet_ids=[])))
    assert "eks.nodeRoleArn" in str(error.value) and "eks.subnetIds" in str(error.value)
    assert mocks.resources == []


def test_non_eu_region_fails_before_any_resource_is_registered(mocks):
    config = DeploymentConfig.model_validate({"cloud": "eks", "region": "us-east-1"})
    with pytest.raises(ConfigError, match="us-east-1"):
        testing.run_program(lambda: EksGpuNodePool("gpu", eks_args(config=config)))
    assert mocks.resources == []


def test_missing_aws_sdk_names_the_extra(mocks, monkeypatch):
    monkeypatch.setitem(sys.modules, "pulumi_aws", None)
    with pytest.raises(MissingCloudSdkError, match=r"pip install 'inferplane\[aws\]'"):
        testing.run_program(lambda: EksGpuNodePool("gpu", eks_args()))
    assert mocks.resources == []


def test_the_weight_cache_needs_a_storage_class_on_eks():
    # Defect 4: EKS 1.30+ has no default StorageClass, so a claim without one never binds.
    with pytest.raises(ConfigError, match="model_cache.storage_class"):
        from_mapping({"cloud": "eks", "region": "eu-north-1"})


def test_h200_is_p5en_not_the_capacity_block_only_p5e(mocks):
    # Defect 3: p5e.48xlarge is sold through Capacity Blocks only; p5en.48xlarge is the H200 type.
    config = eks_config(accelerator={"type": "H200-141G", "tensor_parallel_size": 8})
    testing.run_program(lambda: EksGpuNodePool("gpu", eks_args(config=config)))
    assert mocks.one(NODE_GROUP).inputs["instanceTypes"] == ["p5en.48xlarge"]


def test_a_capacity_reservation_is_targeted_through_a_launch_template(mocks):
    testing.run_program(lambda: EksGpuNodePool("gpu", eks_args(
        capacity_reservation_id="cr-0123456789abcdef0")))
    template = mocks.one("aws:ec2/launchTemplate:LaunchTemplate").inputs
    target = template["capacityReservationSpecification"]["capacityReservationTarget"]
    assert target == {"capacityReservationId": "cr-0123456789abcdef0"}
    assert "instanceMarketOptions" not in template
    assert template["blockDeviceMappings"][0]["ebs"]["volumeSize"] == 200
    group = mocks.one(NODE_GROUP).inputs
    assert group["capacityType"] == "ON_DEMAND"
    assert "diskSize" not in group  # EKS refuses a disk size next to a launch template
    assert "launchTemplate" in group


def test_a_capacity_block_runs_the_group_in_it(mocks):
    testing.run_program(lambda: EksGpuNodePool("gpu", eks_args(
        capacity_type="CAPACITY_BLOCK", capacity_reservation_id="cr-0123456789abcdef0")))
    template = mocks.one("aws:ec2/launchTemplate:LaunchTemplate").inputs
    assert template["instanceMarketOptions"] == {"marketType": "capacity-block"}
    assert mocks.one(NODE_GROUP).inputs["capacityType"] == "CAPACITY_BLOCK"


def test_a_capacity_block_needs_its_reservation_id(mocks):
    with pytest.raises(ConfigError, match="eks.capacityReservationId"):
        testing.run_program(lambda: EksGpuNodePool("gpu", eks_args(capacity_type="CAPACITY_BLOCK")))
    assert mocks.resources == []


def test_the_ebs_csi_add_on_gets_its_role(mocks):
    role = "arn:aws:iam::123456789012:role/ebs-csi"
    testing.run_program(lambda: EksGpuNodePool("gpu", eks_args(ebs_csi_role_arn=role)))
    addon = mocks.one("aws:eks/addon:Addon").inputs
    assert addon["addonName"] == "aws-ebs-csi-driver"
    assert addon["serviceAccountRoleArn"] == role
    assert addon["region"] == "eu-north-1"
