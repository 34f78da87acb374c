"""EKS: a managed node group of the catalog's 8-GPU instance on an existing cluster.

The cluster, its VPC and the node IAM role come from the user (eksctl, pulumi-eks, Terraform):
creating them well is a project of its own. The node group runs the AL2023 NVIDIA AMI, which ships
the driver and container toolkit; the NVIDIA device plugin comes from the Platform (AWS: "When
using the EKS-optimized AL2023 AMIs with NVIDIA GPUs, you must install the NVIDIA Kubernetes device
plugin", https://docs.aws.amazon.com/eks/latest/userguide/ml-eks-k8s-device-plugin.html). The GPU
operator is not used here: NVIDIA's EKS page supports it only on node groups of an OS its platform
matrix lists (Ubuntu), not the Amazon Linux AMIs
(https://docs.nvidia.com/datacenter/cloud-native/gpu-operator/latest/amazon-eks.html).
EKS node groups do not scale by themselves: min/max bound the Cluster Autoscaler or Karpenter.

Capacity: p5-class instances are scarce. `capacity_reservation_id` targets an On-Demand Capacity
Reservation, and capacity_type CAPACITY_BLOCK runs the group in a Capacity Block for ML, both
through a launch template (https://docs.aws.amazon.com/eks/latest/userguide/capacity-blocks-mng.html).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Optional

import pulumi

from inferplane.components.node_pool import (
    GpuNodePool, GpuNodePoolArgs, checked_machine, import_cloud_sdk, require_args,
)
from inferplane.catalog.accelerators import capacity_options
from inferplane.config import ConfigError

GPU_AMI_TYPE = "AL2023_x86_64_NVIDIA"
CAPACITY_TYPES = ("ON_DEMAND", "SPOT", "CAPACITY_BLOCK")
# The AL2023 AMIs' root device, where a launch template sizes the boot disk.
ROOT_DEVICE = "/dev/xvda"
# EKS's managed EBS CSI driver add-on: what provisions the weight cache's gp3 volumes.
EBS_CSI_ADDON = "aws-ebs-csi-driver"


@dataclass(kw_only=True)
class EksGpuNodePoolArgs(GpuNodePoolArgs):
    """EKS specifics: the existing cluster, the node role and the subnets the nodes go in."""

    cluster_name: str
    node_role_arn: str
    subnet_ids: list[str] = field(default_factory=list)  # in the config's region; one AZ with capacity
    capacity_type: str = "ON_DEMAND"  # or SPOT, or CAPACITY_BLOCK (needs capacity_reservation_id)
    capacity_reservation_id: Optional[str] = None  # cr-...: an ODCR or a Capacity Block
    # The IAM role of EBS CSI's controller (IRSA); set: the aws-ebs-csi-driver add-on is installed.
    ebs_csi_role_arn: Optional[str] = None

    def check(self) -> None:
        problems = []
        if not self.cluster_name:
            problems.append(("eks.clusterName", "required; name the existing EKS cluster"))
        if not self.node_role_arn.startswith("arn:aws"):
            problems.append(("eks.nodeRoleArn", "required; the IAM role ARN of the nodes, "
                                                "e.g. arn:aws:iam::123456789012:role/eks-nodes"))
        if not self.subnet_ids:
            problems.append(("eks.subnetIds", "required; one or more subnet ids in the region"))
        if self.capacity_type not in CAPACITY_TYPES:
            problems.append(("eks.capacityType", f"{self.capacity_type!r}; use ON_DEMAND, SPOT or "
                                                 "CAPACITY_BLOCK"))
        if self.capacity_type == "CAPACITY_BLOCK" and not self.capacity_reservation_id:
            problems.append(("eks.capacityReservationId", "required with capacityType "
                                                          "CAPACITY_BLOCK: the Capacity Block's "
                                                          "reservation id (cr-...)"))
        if self.capacity_type == "SPOT" and self.capacity_reservation_id:
            problems.append(("eks.capacityReservationId", "not with capacityType SPOT; use "
                                                          "ON_DEMAND or CAPACITY_BLOCK"))
        if self.capacity_reservation_id and not self.capacity_reservation_id.startswith("cr-"):
            problems.append(("eks.capacityReservationId", f"{self.capacity_reservation_id!r} is "
                                                          "not a reservation id; use cr-..."))
        if self.ebs_csi_role_arn is not None and not self.ebs_csi_role_arn.startswith("arn:aws"):
            problems.append(("eks.ebsCsiRoleArn", "an IAM role ARN for the EBS CSI controller"))
        machine = self.config.accelerator_spec.machine_types.get("eks")
        wanted = {"ON_DEMAND": "reservation" if self.capacity_reservation_id else "on_demand",
                  "SPOT": "spot", "CAPACITY_BLOCK": "capacity_block"}.get(self.capacity_type)
        if machine and wanted and wanted not in capacity_options("eks", machine):
            problems.append(("eks.capacityType", f"{machine.name} is not sold as "
                                                 f"{wanted.replace('_', ' ')}; use "
                                                 f"{', '.join(capacity_options('eks', machine))}"))
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
        child = pulumi.ResourceOptions(parent=self)
        launch_template = None
        if args.capacity_reservation_id:
            # Reservations are reached only through a launch template; it then sizes the disk.
            launch_template = aws.ec2.LaunchTemplate(
                f"{name}-gpu",
                region=config.region,
                update_default_version=True,
                block_device_mappings=[aws.ec2.LaunchTemplateBlockDeviceMappingArgs(
                    device_name=ROOT_DEVICE, ebs=aws.ec2.LaunchTemplateBlockDeviceMappingEbsArgs(
                        volume_size=args.boot_disk_gib(), volume_type="gp3",
                        encrypted="true", delete_on_termination="true"))],
                capacity_reservation_specification=(
                    aws.ec2.LaunchTemplateCapacityReservationSpecificationArgs(
                        capacity_reservation_target=(
                            aws.ec2.LaunchTemplateCapacityReservationSpecificationCapacityReservationTargetArgs(
                                capacity_reservation_id=args.capacity_reservation_id)))),
                instance_market_options=(
                    aws.ec2.LaunchTemplateInstanceMarketOptionsArgs(market_type="capacity-block")
                    if args.capacity_type == "CAPACITY_BLOCK" else None),
                tags={"inferplane.io/deployment": config.name},
                opts=child,
            )
        if args.ebs_csi_role_arn:
            aws.eks.Addon(f"{name}-ebs-csi", cluster_name=args.cluster_name, region=config.region,
                          addon_name=EBS_CSI_ADDON, service_account_role_arn=args.ebs_csi_role_arn,
                          opts=child)

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
            disk_size=None if launch_template else args.boot_disk_gib(),
            launch_template=aws.eks.NodeGroupLaunchTemplateArgs(
                id=launch_template.id, version=launch_template.latest_version.apply(str))
            if launch_template else None,
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
