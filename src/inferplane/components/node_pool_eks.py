"""EKS: a managed node group of the catalog's 8-GPU instance on an existing cluster.

The cluster, its VPC and the node IAM role come from the user (eksctl, pulumi-eks, Terraform):
creating them well is a project of its own. The node group runs the AL2023 NVIDIA AMI, which ships
the driver and container toolkit. EKS node groups do not scale by themselves: min/max bound the
Cluster Autoscaler or Karpenter that the cluster runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Optional

import pulumi

from inferplane.components.node_pool import (
    GpuNodePool, GpuNodePoolArgs, checked_machine, import_cloud_sdk, require_args,
)
from inferplane.config import ConfigError

GPU_AMI_TYPE = "AL2023_x86_64_NVIDIA"


@dataclass(kw_only=True)
class EksGpuNodePoolArgs(GpuNodePoolArgs):
    """EKS specifics: the existing cluster, the node role and the subnets the nodes go in."""

    cluster_name: str
    node_role_arn: str
    subnet_ids: list[str] = field(default_factory=list)  # in the config's region; one AZ with capacity
    capacity_type: str = "ON_DEMAND"  # or SPOT

    def check(self) -> None:
        problems = []
        if not self.cluster_name:
            problems.append(("eks.clusterName", "required; name the existing EKS cluster"))
        if not self.node_role_arn.startswith("arn:aws"):
            problems.append(("eks.nodeRoleArn", "required; the IAM role ARN of the nodes, "
                                                "e.g. arn:aws:iam::123456789012:role/eks-nodes"))
        if not self.subnet_ids:
            problems.append(("eks.subnetIds", "required; one or more subnet ids in the region"))
        if self.capacity_type not in ("ON_DEMAND", "SPOT"):
            problems.append(("eks.capacityType", f"{self.capacity_type!r}; use ON_DEMAND or SPOT"))
        if problems:
            raise ConfigError(problems)


class EksGpuNodePool(GpuNodePool):
    """An EKS managed node group of p5-class nodes in an EU region, with our label and taint."""

    cloud = "eks"

    def __init__(self, name: str, args: EksGpuNodePoolArgs,
                 opts: Optional[pulumi.ResourceOptions] = None) -> None:
        require_args(args, EksGpuNodePoolArgs, self.cloud)
        machine = checked_machine(args.config, self.cloud)
        args.check()
        aws = import_cloud_sdk("pulumi_aws", "aws", "An EKS node group")
        super().__init__(name, args, machine, opts)
        config = args.config

        self.node_group = aws.eks.NodeGroup(
            f"{name}-gpu",
            cluster_name=args.cluster_name,
            # The region is stated on the resource, not left to the provider's ambient default.
            region=config.region,
            node_role_arn=args.node_role_arn,
            subnet_ids=args.subnet_ids,
            instance_types=[machine.name],
            ami_type=GPU_AMI_TYPE,
            capacity_type=args.capacity_type,
            disk_size=args.boot_disk_gib(),
            scaling_config=aws.eks.NodeGroupScalingConfigArgs(
                min_size=self.min_nodes, max_size=self.max_nodes, desired_size=self.min_nodes),
            # GPU capacity is scarce: replace one node at a time.
            update_config=aws.eks.NodeGroupUpdateConfigArgs(max_unavailable=1),
            labels=self.labels,
            taints=[aws.eks.NodeGroupTaintArgs(
                key=self.taint.key, value=self.taint.value, effect=self.taint.upper_snake_effect)],
            tags={"inferplane.io/deployment": config.name},
            # The autoscaler owns the current size once the group exists.
            opts=pulumi.ResourceOptions(parent=self, ignore_changes=["scalingConfig.desiredSize"]),
        )
        cluster = aws.eks.get_cluster_output(
            name=args.cluster_name, region=config.region,
            opts=pulumi.InvokeOutputOptions(parent=self))
        self.cluster_name = pulumi.Output.from_input(args.cluster_name)
        self.kubeconfig = pulumi.Output.secret(pulumi.Output.all(
            args.cluster_name, config.region, cluster.endpoint,
            cluster.certificate_authorities[0].data,
        ).apply(lambda v: eks_kubeconfig(*v)))
        self._register(node_group_name=self.node_group.node_group_name)


def eks_kubeconfig(cluster_name: str, region: str, endpoint: str, ca_data: str) -> str:
    """A kubeconfig that gets short-lived tokens from `aws eks get-token` (no stored credential)."""
    name = f"eks-{cluster_name}"
    return json.dumps({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": {
            "server": endpoint, "certificate-authority-data": ca_data}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
        "current-context": name,
        "users": [{"name": name, "user": {"exec": {
            "apiVersion": "client.authentication.k8s.io/v1beta1",
            "command": "aws",
            "args": ["eks", "get-token", "--cluster-name", cluster_name, "--region", region,
                     "--output", "json"],
        }}}],
    })
