"""Scaleway Kapsule: an H100 pool on an existing cluster, or a new cluster with one.

Given a cluster id, only the pool is created. Without one, a cluster is created on a new Private
Network (Kapsule requires one) with a small system pool for the add-ons. Kapsule installs and
manages the NVIDIA GPU operator on GPU pools itself, so the platform leaves it out here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pulumi

from inferplane.components.node_pool import (
    GpuNodePool, GpuNodePoolArgs, checked_machine, import_cloud_sdk, require_args,
)
from inferplane.config import ConfigError


@dataclass(kw_only=True)
class ScalewayGpuNodePoolArgs(GpuNodePoolArgs):
    """Kapsule specifics; leave `cluster_id` out to create a cluster."""

    cluster_id: Optional[str] = None  # regional id, e.g. fr-par/11111111-...; None creates one
    project_id: Optional[str] = None  # default: the provider's project
    kubernetes_version: Optional[str] = None  # required when creating a cluster, e.g. "1.34"
    cni: str = "cilium"  # only for a created cluster
    system_node_type: str = "PRO2-S"  # only for a created cluster

    def check(self) -> None:
        if not self.cluster_id and not self.kubernetes_version:
            raise ConfigError([("scaleway.kubernetesVersion",
                                "required to create a cluster (e.g. \"1.34\"); or set "
                                "scaleway.clusterId to add the pool to an existing cluster")])
        if not self.config.zone:
            raise ConfigError([("zone", f"required on Scaleway: GPU types are sold per zone; "
                                        f"use e.g. {self.config.region}-2")])


class ScalewayGpuNodePool(GpuNodePool):
    """A Kapsule pool of the catalog's 8-GPU type in an EU zone, with our label and taint."""

    cloud = "scaleway"

    def __init__(self, name: str, args: ScalewayGpuNodePoolArgs,
                 opts: Optional[pulumi.ResourceOptions] = None) -> None:
        require_args(args, ScalewayGpuNodePoolArgs, self.cloud)
        machine = checked_machine(args.config, self.cloud)
        args.check()
        scw = import_cloud_sdk("pulumiverse_scaleway", "scaleway", "A Scaleway Kapsule pool")
        super().__init__(name, args, machine, opts)
        config = args.config
        child = pulumi.ResourceOptions(parent=self)
        # The Private Network a created cluster runs on (the ledger database joins it), else None.
        self.private_network_id: Optional[pulumi.Output[str]] = None

        if args.cluster_id:
            cluster_id = pulumi.Output.from_input(args.cluster_id)
            found = scw.kubernetes.get_cluster_output(
                cluster_id=args.cluster_id, region=config.region, project_id=args.project_id,
                opts=pulumi.InvokeOutputOptions(parent=self))
            kubeconfig = found.kubeconfigs[0].config_file
            cluster_name = found.name
        else:
            network = scw.network.PrivateNetwork(
                f"{name}-network", region=config.region, project_id=args.project_id,
                tags=[f"inferplane-{config.name}"], opts=child)
            self.private_network_id = network.id
            cluster = scw.kubernetes.Cluster(
                f"{name}-cluster",
                region=config.region,
                project_id=args.project_id,
                version=args.kubernetes_version,
                cni=args.cni,
                private_network_id=network.id,
                delete_additional_resources=True,  # volumes and LBs go with `pulumi destroy`
                # Let in-flight streams finish before a scale-down removes a node.
                autoscaler_config=scw.kubernetes.ClusterAutoscalerConfigArgs(
                    max_graceful_termination_sec=config.probes.termination_grace_seconds),
                tags=[f"inferplane-{config.name}"],
                opts=child,
            )
            scw.kubernetes.Pool(
                f"{name}-system",
                cluster_id=cluster.id,
                region=config.region,
                zone=config.zone,
                node_type=args.system_node_type,
                size=1, min_size=1, max_size=3, autoscaling=True, autohealing=True,
                labels={"inferplane.io/role": "system"},
                opts=child,
            )
            cluster_id = cluster.id
            kubeconfig = cluster.kubeconfigs[0].config_file
            cluster_name = cluster.name

        self.pool = scw.kubernetes.Pool(
            f"{name}-gpu",
            cluster_id=cluster_id,
            region=config.region,
            zone=config.zone,
            node_type=machine.name,
            size=self.min_nodes,
            min_size=self.min_nodes,
            max_size=self.max_nodes,
            autoscaling=True,
            autohealing=True,
            root_volume_size_in_gb=args.boot_disk_gib(),
            labels=self.labels,
            taints=[scw.kubernetes.PoolTaintArgs(
                key=self.taint.key, value=self.taint.value, effect=self.taint.effect)],
            tags=[f"inferplane-{config.name}"],
            wait_for_pool_ready=True,
            opts=child,
        )
        self.cluster_name = cluster_name
        self.kubeconfig = pulumi.Output.secret(kubeconfig)
        self._register(pool_id=self.pool.id)
