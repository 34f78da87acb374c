"""GKE: an 8-GPU node pool on an existing cluster, or a new regional cluster with one.

Given a cluster name, only the node pool is created. Without one, a regional cluster is created
with a small system pool for the add-ons (the GPU pool is tainted, so they cannot run there).
GPU nodes run Container-Optimized OS with GKE's own GPU stack: GKE installs the NVIDIA driver
(gpu_driver_version) and runs its device plugin, the stack Google recommends and NVIDIA's GKE guide
lists first (https://cloud.google.com/kubernetes-engine/docs/how-to/gpus#install-drivers,
https://docs.nvidia.com/datacenter/cloud-native/gpu-operator/latest/google-gke.html). The other
stack (label gke-no-default-nvidia-gpu-device-plugin=true, driver installation disabled, the NVIDIA
GPU operator) is refused: mixing the two leaves nodes with no driver or two device plugins.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Optional

import pulumi

from inferplane.components.node_pool import (
    GpuNodePool, GpuNodePoolArgs, checked_machine, import_cloud_sdk, require_args,
)
from inferplane.catalog.accelerators import capacity_options
from inferplane.config import ConfigError
from inferplane.catalog.regions import zone_in_region

# The GKE-managed driver versions; INSTALLATION_DISABLED would leave the nodes with no driver,
# since nothing else here installs one.
GKE_DRIVER_VERSIONS = ("LATEST", "DEFAULT")
# The reservation affinity key GKE matches a named Compute Engine reservation by.
RESERVATION_NAME_KEY = "compute.googleapis.com/reservation-name"
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"


@dataclass(kw_only=True)
class GkeGpuNodePoolArgs(GpuNodePoolArgs):
    """GKE specifics; leave `cluster_name` out to create a cluster."""

    project: Optional[str] = None  # default: the gcp provider's project (gcp:project)
    cluster_name: Optional[str] = None  # an existing cluster; None creates one
    cluster_location: Optional[str] = None  # the existing cluster's region or zone; default: region
    gpu_operator: bool = False  # refused: GKE runs the driver and device plugin (see module doc)
    gpu_driver_version: str = "LATEST"  # GKE-installed driver: LATEST or DEFAULT
    # How the GPU nodes are obtained: on_demand, reservation (needs `reservation`), spot or
    # flex_start. A3 Ultra and A4 are not sold on demand; a3-highgpu-8g often needs a reservation.
    capacity: str = "on_demand"
    reservation: Optional[str] = None  # a specific reservation's name (projects/<p>/reservations/<r> for a shared one)
    service_account: Optional[str] = None  # node service account e-mail; default: Compute default
    release_channel: str = "REGULAR"  # only for a created cluster
    system_machine_type: str = "e2-standard-4"  # only for a created cluster
    deletion_protection: bool = False  # a created cluster; True blocks `pulumi destroy`

    def check(self) -> None:
        """Keys GKE would refuse, or accept and then leave the GPUs unusable; before any resource."""
        config, problems = self.config, []
        if self.gpu_operator:
            problems.append(("platform.gpuOperator",
                             "not supported on GKE: GKE installs the driver and runs the device "
                             "plugin itself; remove it or set it to false"))
        if self.gpu_driver_version not in GKE_DRIVER_VERSIONS:
            problems.append(("gke.gpuDriverVersion", f"{self.gpu_driver_version!r}; use LATEST or "
                                                     "DEFAULT (GKE installs the driver)"))
        if not config.zone:
            # Without one the pool spans every zone of the region, some without the machine, and
            # the node count applies per zone.
            problems.append(("zone", f"required on GKE: a zone of {config.region} that offers "
                                     "the machine, e.g. " + (f"{config.region}-c" if config.region
                                                             else "europe-west4-c") +
                                     " (gcloud compute accelerator-types list "
                                     f"--filter=zone~{config.region})"))
        machine = config.accelerator_spec.machine_types.get("gke")
        if self.capacity not in ("on_demand", "reservation", "spot", "flex_start"):
            problems.append(("gke.capacity", f"{self.capacity!r}; use on_demand, reservation, "
                                             "spot or flex_start"))
        elif machine and self.capacity not in capacity_options("gke", machine):
            problems.append(("gke.capacity",
                             f"{machine.name} is not sold {self.capacity.replace('_', ' ')} on GKE; "
                             f"use one of {', '.join(capacity_options('gke', machine))} "
                             "(with reservation, name it in gke.reservation)"))
        if self.capacity == "reservation" and not self.reservation:
            problems.append(("gke.reservation", "required with gke.capacity: reservation; the "
                                                "name of a specific reservation of the machine in "
                                                "the zone"))
        if self.reservation and self.capacity != "reservation":
            problems.append(("gke.capacity", "set it to reservation to use gke.reservation"))
        if problems:
            raise ConfigError(problems)


class GkeGpuNodePool(GpuNodePool):
    """A GKE node pool of the catalog's 8-GPU machine, in an EU region, with our label and taint."""

    cloud = "gke"

    def __init__(self, name: str, args: GkeGpuNodePoolArgs,
                 opts: Optional[pulumi.ResourceOptions] = None) -> None:
        require_args(args, GkeGpuNodePoolArgs, self.cloud)
        machine = checked_machine(args.config, self.cloud)
        args.check()
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
                # GKE's managed Gateway controller (the Gateway API entry on GKE, docs/deploy.md).
                gateway_api_config=gcp.container.ClusterGatewayApiConfigArgs(
                    channel="CHANNEL_STANDARD"),
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

        self.node_pool = gcp.container.NodePool(
            f"{name}-gpu",
            cluster=cluster_name,
            location=location,
            project=args.project,
            # GPU capacity is zonal: the GPU nodes stay in the configured zone (required).
            node_locations=[config.zone],
            # Only the creation size: changing it replaces the pool, so later changes are ignored
            # (see opts) and the pool scales through the autoscaling bounds.
            initial_node_count=self.min_nodes,
            autoscaling=gcp.container.NodePoolAutoscalingArgs(
                total_min_node_count=self.min_nodes,
                total_max_node_count=self.max_nodes,
                location_policy="ANY",  # take capacity (unused reservations first), not balance
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
                labels=self.labels,
                taints=[gcp.container.NodePoolNodeConfigTaintArgs(
                    key=self.taint.key, value=self.taint.value,
                    effect=self.taint.upper_snake_effect)],
                service_account=args.service_account,
                oauth_scopes=[CLOUD_PLATFORM_SCOPE],
                resource_labels={"inferplane-deployment": config.name},
                **_capacity_args(gcp, args),
            ),
            opts=pulumi.ResourceOptions.merge(
                node_pool_opts, pulumi.ResourceOptions(ignore_changes=["initialNodeCount"])),
        )
        self.cluster_name = cluster_name
        self.kubeconfig = pulumi.Output.secret(
            pulumi.Output.all(cluster_name, endpoint, ca).apply(lambda v: gke_kubeconfig(*v)))
        self._register(node_pool_name=self.node_pool.name)


def _capacity_args(gcp, args: GkeGpuNodePoolArgs) -> dict:
    """node_config fields for how the nodes are obtained (GKE's consumption options:
    https://cloud.google.com/kubernetes-engine/docs/how-to/consume-reservations,
    https://cloud.google.com/kubernetes-engine/docs/how-to/dws-flex-start-training)."""
    affinity = gcp.container.NodePoolNodeConfigReservationAffinityArgs
    if args.capacity == "reservation":
        return {"reservation_affinity": affinity(consume_reservation_type="SPECIFIC_RESERVATION",
                                                 key=RESERVATION_NAME_KEY,
                                                 values=[args.reservation])}
    if args.capacity == "spot":
        return {"spot": True}
    if args.capacity == "flex_start":
        return {"flex_start": True,
                "reservation_affinity": affinity(consume_reservation_type="NO_RESERVATION")}
    return {}


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
