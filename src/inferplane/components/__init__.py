"""Pulumi components for inferplane, for our own program (stacks/) and for yours.

    from inferplane.config import load
    from inferplane.components import GpuNodePool, Platform, InferenceService, ...

    config = load("deployment.yaml")
    pool = GpuNodePool.for_cloud("gpu", GkeGpuNodePoolArgs(config=config, cluster_name="prod"))
    platform = Platform("platform", PlatformArgs(config=config), opts=...)
    InferenceService("nemotron", InferenceServiceArgs(config=config, platform=platform, ...))

Cloud SDKs (pulumi_gcp, pulumi_aws, pulumiverse_scaleway) are optional extras, imported only by
the node pool and the ledger database of their cloud.
"""

try:
    import pulumi  # noqa: F401
    import pulumi_kubernetes  # noqa: F401
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError("inferplane.components needs the Pulumi SDKs; install them with: "
                      "pip install 'inferplane[pulumi]'") from error

from inferplane.components.inference import InferenceService, InferenceServiceArgs
from inferplane.components.ledger_db import (
    EksLedgerDatabaseArgs, GkeLedgerDatabaseArgs, InClusterLedgerDatabaseArgs, LedgerDatabase,
    LedgerDatabaseArgs, ScalewayLedgerDatabaseArgs,
)
from inferplane.components.node_pool import (
    GPU_TAINT, GpuNodePool, GpuNodePoolArgs, MissingCloudSdkError, NodeTaint, gpu_node_labels,
)
from inferplane.components.node_pool_eks import EksGpuNodePool, EksGpuNodePoolArgs
from inferplane.components.node_pool_existing import ExistingGpuNodePool, ExistingGpuNodePoolArgs
from inferplane.components.node_pool_gke import GkeGpuNodePool, GkeGpuNodePoolArgs
from inferplane.components.node_pool_scaleway import ScalewayGpuNodePool, ScalewayGpuNodePoolArgs
from inferplane.components.platform import Platform, PlatformArgs
from inferplane.components.pulumi_config import StackSettings, read_stack_settings

__all__ = [
    "GPU_TAINT", "GpuNodePool", "GpuNodePoolArgs", "MissingCloudSdkError", "NodeTaint",
    "gpu_node_labels",
    "GkeGpuNodePool", "GkeGpuNodePoolArgs", "EksGpuNodePool", "EksGpuNodePoolArgs",
    "ScalewayGpuNodePool", "ScalewayGpuNodePoolArgs", "ExistingGpuNodePool",
    "ExistingGpuNodePoolArgs",
    "Platform", "PlatformArgs", "InferenceService", "InferenceServiceArgs",
    "StackSettings", "read_stack_settings",
    "LedgerDatabase", "LedgerDatabaseArgs", "GkeLedgerDatabaseArgs", "EksLedgerDatabaseArgs",
    "ScalewayLedgerDatabaseArgs", "InClusterLedgerDatabaseArgs",
]
