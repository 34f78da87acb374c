"""A cluster you already have (or a local one): no cloud resource, only what you assert about it.

The component records the GPU nodes the deployment expects (accelerator, GPUs per node, label,
taint) so the stack's outputs say what to check, and creates nothing: labelling and tainting the
nodes is yours (`kubectl label node ...`, `kubectl taint node ...`, or your node provisioner).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pulumi

from inferplane.components.node_pool import (
    GpuNodePool, GpuNodePoolArgs, checked_machine, require_args,
)


@dataclass(kw_only=True)
class ExistingGpuNodePoolArgs(GpuNodePoolArgs):
    """The nodes you provide; min/max only record what you say the cluster can scale to."""


class ExistingGpuNodePool(GpuNodePool):
    """GPU nodes that exist already: checks the config, records the node contract, creates nothing."""

    cloud = "existing"

    def __init__(self, name: str, args: ExistingGpuNodePoolArgs,
                 opts: Optional[pulumi.ResourceOptions] = None) -> None:
        require_args(args, ExistingGpuNodePoolArgs, self.cloud)
        checked_machine(args.config, self.cloud)
        super().__init__(name, args, None, opts)
        selector = ",".join(f"{key}={value}" for key, value in self.labels.items())
        self._register(
            node_selector=selector,
            check_command=(f"kubectl get nodes -l {selector} "
                           "-o custom-columns=NAME:.metadata.name,GPUS:.status.allocatable."
                           "nvidia\\.com/gpu,TAINTS:.spec.taints"),
        )
