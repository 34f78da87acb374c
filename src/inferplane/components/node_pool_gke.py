"""GKE: an 8-GPU node pool on an existing cluster, or a new regional cluster with one.

Given a cluster name, only the node pool is created. Without one, a regional cluster is created
with a small system pool for the add-ons (the GPU pool is tainted, so they cannot run there).
GPU nodes run Container-Optimized OS and GKE installs the NVIDIA driver; when the GPU operator is
on, the node label below hands the device plugin from GKE to the operator.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Optional

import pulumi

from inferplane.components.node_pool import (
    GpuNodePool, GpuNodePoolArgs, checked_machine, import_cloud_sdk, require_args,
)
from inferplane.config import ConfigError
from inferplane.catalog.regions import zone_in_region

# GKE runs its own device plugin on GPU nodes unless told not to; two plugins would both
# advertise nvidia.com/gpu.
NO_GKE_DEVICE_PLUGIN_LABEL = "gke-no-default-nvidia-gpu-device-plugin"
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"


@dataclass(kw_only=True)
class GkeGpuNodePoolArgs(GpuNodePoolArgs):
    """GKE specifics; leave `cluster_name` out to create a cluster."""

    project: Optional[str] = None  # default: the gcp provider's project (gcp:project)
    cluster_name: Optional[str] = None  # an existing cluster; None creates one
    cluster_location: Optional[str] = None  # the existing cluster's region or zone; default: region
    gpu_operator: bool = True  # the GPU operator runs the device plugin (Platform's switch)
    gpu_driver_version: str = "LATEST"  # GKE-installed driver: LATEST or DEFAULT
    service_account: Optional[str] = None  # node service account e-mail; default: Compute default
    release_channel: str = "REGULAR"  # only for a created cluster
    system_machine_type: str = "e2-standard-4"  # only for a created cluster
    deletion_protection: bool = False  # a created cluster; True blocks `pulumi destroy`


class GkeGpuNodePool(GpuNodePool):
    """A GKE node pool of the catalog's 8-GPU machine, in an EU region, with our label and taint."""

    cloud = "gke"

    def __init__(self, name: str, args: GkeGpuNodePoolArgs,
                 opts: Optional[pulumi.ResourceOptions] = None) -> None:
        require_args(args, GkeGpuNodePoolArgs, self.cloud)
        machine = checked_machine(args.config, self.cloud)
        location = _checked_location(args)
        gcp = import_cloud_sdk("pulumi_gcp", "gcp", "A GKE node pool")
        super().__init__(name, args, machine, opts)
        config = args.config
        child = pulumi.ResourceOptions(parent=self)

        if args.cluster_name:
            cluster_name = pulumi.Output.from_input(args.cluster_name)
            cluster = gcp.container.get_cluster_output(
                name=args.cluster_name, location=location, project=args.project,
                opts=pulumi.InvokeOutputOptions(parent=self))
            endpoint, ca = cluster.endpoint, cluster.master_auths[0].cluster_ca_certificate
            node_pool_opts = child
        else:
            cluster = gcp.container.Cluster(
                f"{name}-cluster",
                location=location,
                project=args.project,
                # The default pool cannot be tainted or sized for us: replace it with our own pools.
                remove_default_node_pool=True,
                initial_node_count=1,
                release_channel=gcp.container.ClusterReleaseChannelArgs(channel=args.release_channel),
                deletion_protection=args.deletion_protection,
                resource_labels={"inferplane-deployment": config.name},
                opts=child,
            )
            cluster_name = cluster.name
            endpoint, ca = cluster.endpoint, cluster.master_auth.cluster_ca_certificate
            gcp.container.NodePool(
                f"{name}-system",
                cluster=cluster.name,
                location=location,
                project=args.project,
                autoscaling=gcp.container.NodePoolAutoscalingArgs(
                    total_min_node_count=1, total_max_node_count=3, location_policy="BALANCED"),
                initial_node_count=1,
                management=gcp.container.NodePoolManagementArgs(auto_repair=True, auto_upgrade=True),
                node_config=gcp.container.NodePoolNodeConfigArgs(
                    machine_type=args.system_machine_type,
                    service_account=args.service_account,
                    oauth_scopes=[CLOUD_PLATFORM_SCOPE],
                    labels={"inferplane.io/role": "system"},
                ),
                opts=child,
            )
            node_pool_opts = pulumi.ResourceOptions(parent=self, depends_on=[cluster])

        labels = dict(self.labels)
        if args.gpu_operator:
            labels[NO_GKE_DEVICE_PLUGIN_LABEL] = "true"
        self.node_pool = gcp.container.NodePool(
            f"{name}-gpu",
            cluster=cluster_name,
            location=location,
            project=args.project,
            # H100 capacity is zonal: keep the GPU nodes in the configured zone.
            node_locations=[config.zone] if config.zone else None,
            initial_node_count=self.min_nodes,
            autoscaling=gcp.container.NodePoolAutoscalingArgs(
                total_min_node_count=self.min_nodes,
                total_max_node_count=self.max_nodes,
                location_policy="ANY",  # take a GPU wherever the region has one free
            ),
            management=gcp.container.NodePoolManagementArgs(auto_repair=True, auto_upgrade=True),
            # GPU capacity is scarce: upgrade by replacing one node at a time, never by adding one.
            upgrade_settings=gcp.container.NodePoolUpgradeSettingsArgs(
                strategy="SURGE", max_surge=0, max_unavailable=1),
            node_config=gcp.container.NodePoolNodeConfigArgs(
                machine_type=machine.name,
                guest_accelerators=[gcp.container.NodePoolNodeConfigGuestAcceleratorArgs(
                    type=machine.gpu_type,
                    count=machine.gpus,
                    gpu_driver_installation_config=(
                        gcp.container.NodePoolNodeConfigGuestAcceleratorGpuDriverInstallationConfigArgs(
                            gpu_driver_version=args.gpu_driver_version)),
                )],
                image_type="COS_CONTAINERD",
                disk_size_gb=args.boot_disk_gib(),
                labels=labels,
                taints=[gcp.container.NodePoolNodeConfigTaintArgs(
                    key=self.taint.key, value=self.taint.value,
                    effect=self.taint.upper_snake_effect)],
                service_account=args.service_account,
                oauth_scopes=[CLOUD_PLATFORM_SCOPE],
                resource_labels={"inferplane-deployment": config.name},
            ),
            opts=node_pool_opts,
        )
        self.cluster_name = cluster_name
        self.kubeconfig = pulumi.Output.secret(
            pulumi.Output.all(cluster_name, endpoint, ca).apply(lambda v: gke_kubeconfig(*v)))
        self._register(node_pool_name=self.node_pool.name)


def _checked_location(args: GkeGpuNodePoolArgs) -> str:
    """The cluster's location: the region, or a zone of it; anything else would leave the EU region."""
    config = args.config
    location = args.cluster_location or config.region
    if location != config.region and not zone_in_region("gke", config.region, location):
        raise ConfigError([("gke.clusterLocation",
                            f"{location!r} is neither region {config.region!r} nor one of its "
                            f"zones; use {config.region} or a zone like {config.region}-b")])
    return location


def gke_kubeconfig(cluster_name: str, endpoint: str, ca_certificate: str) -> str:
    """A kubeconfig that authenticates with gke-gcloud-auth-plugin (no long-lived credential)."""
    name = f"gke-{cluster_name}"
    return json.dumps({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": {
            "server": f"https://{endpoint}", "certificate-authority-data": ca_certificate}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
        "current-context": name,
        "users": [{"name": name, "user": {"exec": {
            "apiVersion": "client.authentication.k8s.io/v1beta1",
            "command": "gke-gcloud-auth-plugin",
            "provideClusterInfo": True,
            "installHint": "gcloud components install gke-gcloud-auth-plugin",
        }}}],
    })
