"""GPU node pools: the base component, its typed args, the scheduling contract, and the factory.

The contract between nodes and workload lives here once: nodes carry the label
`inferplane.io/accelerator: <accelerator key>` (the rendered Deployment's nodeSelector) and the
taint `nvidia.com/gpu=present:NoSchedule` (which the Deployment tolerates), so nothing else lands
on an 8-GPU node and the model lands nowhere else. Each cloud's component (node_pool_gke,
node_pool_eks, node_pool_scaleway, node_pool_existing) imports its SDK only when used.
"""

from __future__ import annotations

import importlib
import warnings
from dataclasses import dataclass
from types import ModuleType
from typing import Any, ClassVar, Optional

import pulumi

from inferplane.catalog import MachineType
from inferplane.config import ConfigError, DeploymentConfig, validate
from inferplane.render import ACCELERATOR_LABEL, GPU_RESOURCE

NODE_POOL_TYPE = "inferplane:gpu:NodePool"
DEPLOYMENT_LABEL = "inferplane.io/deployment"
# Room on the node's own disk for the images (the vLLM image alone is ~20 GB unpacked) and logs.
BASE_DISK_GIB = 200
# Which module and class build a pool for each `cloud` of the deployment config.
_CLOUD_COMPONENTS = {
    "gke": ("inferplane.components.node_pool_gke", "GkeGpuNodePool"),
    "eks": ("inferplane.components.node_pool_eks", "EksGpuNodePool"),
    "scaleway": ("inferplane.components.node_pool_scaleway", "ScalewayGpuNodePool"),
    "existing": ("inferplane.components.node_pool_existing", "ExistingGpuNodePool"),
    "local": ("inferplane.components.node_pool_existing", "ExistingGpuNodePool"),
}


@dataclass(frozen=True)
class NodeTaint:
    """A Kubernetes taint, with the spelling each cloud API wants for its effect."""

    key: str
    value: str
    effect: str = "NoSchedule"

    @property
    def upper_snake_effect(self) -> str:
        """GKE and EKS spell NoSchedule as NO_SCHEDULE."""
        return {"NoSchedule": "NO_SCHEDULE", "PreferNoSchedule": "PREFER_NO_SCHEDULE",
                "NoExecute": "NO_EXECUTE"}[self.effect]

    def as_kubernetes(self) -> dict[str, str]:
        return {"key": self.key, "value": self.value, "effect": self.effect}


# The workload tolerates key nvidia.com/gpu with operator Exists, so the value is free; "present"
# is what GKE puts on GPU nodes itself, so the two never disagree.
GPU_TAINT = NodeTaint(key=GPU_RESOURCE, value="present", effect="NoSchedule")


def gpu_node_labels(config: DeploymentConfig) -> dict[str, str]:
    """Labels every GPU node of `config` carries; the Deployment selects on the accelerator one."""
    return {ACCELERATOR_LABEL: config.accelerator.type, DEPLOYMENT_LABEL: config.name}


class MissingCloudSdkError(ImportError):
    """A cloud's Pulumi SDK is an optional extra that is not installed."""


def import_cloud_sdk(module: str, extra: str, what: str) -> ModuleType:
    """Import a cloud SDK when a component needs it; a missing one names the extra to install."""
    try:
        with warnings.catch_warnings():
            # pulumiverse_scaleway announces every renamed resource on import; none is ours.
            warnings.simplefilter("ignore", DeprecationWarning)
            return importlib.import_module(module)
    except ImportError as error:
        raise MissingCloudSdkError(
            f"{what} needs the Pulumi SDK {module!r}, which is not installed; "
            f"install it with: pip install 'inferplane[{extra}]'"
        ) from error


def checked_machine(config: DeploymentConfig, cloud: str) -> Optional[MachineType]:
    """Validate `config` for a pool on `cloud` (EU region first) and return its machine type.

    Runs before the component registers anything, so a bad config creates no resource at all.
    """
    allowed = ("existing", "local") if cloud == "existing" else (cloud,)
    if config.cloud not in allowed:
        raise ConfigError([("cloud", f"this node pool is for {cloud}, but the config says "
                                     f"cloud: {config.cloud}; use the {config.cloud} node pool "
                                     "(GpuNodePool.for_cloud picks it)")])
    validate(config)  # residency, zone, machine type, sizing: each problem named with its fix
    return config.accelerator_spec.machine_types.get(cloud)


@dataclass(kw_only=True)
class GpuNodePoolArgs:
    """What every GPU node pool needs: the deployment and how far it may scale."""

    config: DeploymentConfig
    min_nodes: Optional[int] = None  # default: the nodes the replicas need
    max_nodes: Optional[int] = None  # default: min + 1, room for a rolling update's extra pod
    disk_size_gib: Optional[int] = None  # boot disk; default: images + weights if kept on the node

    def node_bounds(self) -> tuple[int, int]:
        """(min, max) nodes, checked. Defaults: the nodes the replicas need, and one more for a
        rolling update's extra pod; with autoscaling on, the nodes of min and max replicas."""
        config = self.config
        scaling = config.autoscaling
        if scaling.enabled:
            needed = _nodes_for(config, scaling.min_replicas)
            default_high = _nodes_for(config, scaling.max_replicas)
        else:
            needed = config.sizing().nodes
            default_high = needed + 1
        low = needed if self.min_nodes is None else self.min_nodes
        high = max(default_high, low) if self.max_nodes is None else self.max_nodes
        problems = []
        if low < 0:
            problems.append(("nodePool.minNodes", f"{low} is negative; use 0 or more"))
        if high < 1:
            problems.append(("nodePool.maxNodes", f"{high} allows no node; use 1 or more"))
        if high < low:
            problems.append(("nodePool.maxNodes", f"{high} is below minNodes {low}; raise it"))
        if high < needed:
            replicas = scaling.min_replicas if scaling.enabled else config.replicas
            problems.append(("nodePool.maxNodes",
                             f"{high} node(s) cannot hold {replicas} replica(s), which "
                             f"need {needed}; raise it to {needed} or more"))
        if problems:
            raise ConfigError(problems)
        return low, high

    def boot_disk_gib(self) -> int:
        """Images and logs, plus the weights when they are kept on the node itself."""
        if self.disk_size_gib:
            return self.disk_size_gib
        on_node = self.config.model_cache.kind in ("host_path", "empty_dir")
        return BASE_DISK_GIB + (self.config.cache_size_gib if on_node else 0)


def _nodes_for(config: DeploymentConfig, replicas: int) -> int:
    """Nodes that `replicas` replicas of tensor_parallel_size GPUs fill."""
    return -(-replicas * config.tensor_parallel_size // config.gpus_per_node)


class GpuNodePool(pulumi.ComponentResource):
    """GPU nodes for one deployment on one cloud: machine type from the catalog, label, taint, bounds.

    Build one with `GpuNodePool.for_cloud(name, args)`, or use the cloud's class directly.
    `kubeconfig` (a secret) reaches the cluster when the component can derive it, else None.
    """

    cloud: ClassVar[str] = ""

    def __init__(self, name: str, args: GpuNodePoolArgs, machine: Optional[MachineType],
                 opts: Optional[pulumi.ResourceOptions] = None) -> None:
        low, high = args.node_bounds()  # checked before the component exists
        super().__init__(NODE_POOL_TYPE, name, None, opts)
        config = args.config
        self.config = config
        self.accelerator = config.accelerator.type
        self.region = config.region
        self.zone = config.zone
        self.machine_type = machine.name if machine else None
        self.gpus_per_node = machine.gpus if machine else config.gpus_per_node
        self.labels = gpu_node_labels(config)
        self.taint = GPU_TAINT
        self.min_nodes = low
        self.max_nodes = high
        self.kubeconfig: Optional[pulumi.Output[str]] = None
        self.cluster_name: Optional[pulumi.Output[str]] = None

    def _register(self, **extra: Any) -> None:
        """Publish the pool's facts and outputs (called last by each cloud's component)."""
        outputs = {
            "cloud": self.cloud,
            "region": self.region,
            "zone": self.zone,
            "accelerator": self.accelerator,
            "machine_type": self.machine_type,
            "gpus_per_node": self.gpus_per_node,
            "labels": self.labels,
            "taint": self.taint.as_kubernetes(),
            "min_nodes": self.min_nodes,
            "max_nodes": self.max_nodes,
            "cluster_name": self.cluster_name,
        }
        if self.kubeconfig is not None:
            outputs["kubeconfig"] = self.kubeconfig
        outputs.update(extra)
        self.register_outputs(outputs)

    @staticmethod
    def for_cloud(name: str, args: GpuNodePoolArgs,
                  opts: Optional[pulumi.ResourceOptions] = None) -> "GpuNodePool":
        """The node pool component for `args.config.cloud`, its SDK imported only now."""
        module_name, class_name = _CLOUD_COMPONENTS[args.config.cloud]
        component = getattr(importlib.import_module(module_name), class_name)
        return component(name, args, opts)


def require_args(args: GpuNodePoolArgs, expected: type, cloud: str) -> None:
    """A pool gets the args of its own cloud (a GKE pool cannot use EKS subnets)."""
    if not isinstance(args, expected):
        raise TypeError(f"the {cloud} node pool takes {expected.__name__}, "
                        f"got {type(args).__name__}")
