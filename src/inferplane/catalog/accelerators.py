"""Accelerator facts: GPU memory as the driver reports it, GPUs per node, and the 8-GPU machine
type each cloud sells. The node-pool components and sizing read these; nothing else repeats them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MIB = 1024**2


@dataclass(frozen=True)
class MachineType:
    """One cloud's machine that carries `gpus` of an accelerator."""

    name: str
    gpus: int
    gpu_type: str = ""  # the cloud's accelerator name where it is separate (GKE)
    zones_note: str = ""


@dataclass(frozen=True)
class AcceleratorSpec:
    """One GPU model and how it is sold in nodes."""

    key: str
    display_name: str
    memory_mib: int  # total memory as nvidia-smi reports it (marketing "80 GB" is 81559 MiB)
    gpus_per_node: int
    fp8: bool  # native FP8 tensor cores (Hopper, Ada, Blackwell)
    nvlink: bool
    product_label: str  # the GPU operator's nvidia.com/gpu.product node label
    machine_types: dict[str, MachineType] = field(default_factory=dict)  # cloud -> machine

    @property
    def memory_bytes(self) -> int:
        return self.memory_mib * MIB


ACCELERATORS: dict[str, AcceleratorSpec] = {
    spec.key: spec
    for spec in (
        AcceleratorSpec(
            key="H100-80G",
            display_name="NVIDIA H100 SXM 80 GB",
            memory_mib=81559,
            gpus_per_node=8,
            fp8=True,
            nvlink=True,
            product_label="NVIDIA-H100-80GB-HBM3",
            machine_types={
                "gke": MachineType("a3-highgpu-8g", 8, gpu_type="nvidia-h100-80gb"),
                "eks": MachineType("p5.48xlarge", 8),
                "scaleway": MachineType("H100-SXM-8-80G", 8, zones_note="fr-par-2"),
            },
        ),
        AcceleratorSpec(
            key="H200-141G",
            display_name="NVIDIA H200 SXM 141 GB",
            memory_mib=143771,
            gpus_per_node=8,
            fp8=True,
            nvlink=True,
            product_label="NVIDIA-H200",
            machine_types={
                "gke": MachineType("a3-ultragpu-8g", 8, gpu_type="nvidia-h200-141gb"),
                "eks": MachineType("p5e.48xlarge", 8),
            },
        ),
        AcceleratorSpec(
            key="B200-192G",
            display_name="NVIDIA B200 192 GB",
            memory_mib=183359,
            gpus_per_node=8,
            fp8=True,
            nvlink=True,
            product_label="NVIDIA-B200",
            machine_types={
                "gke": MachineType("a4-highgpu-8g", 8, gpu_type="nvidia-b200"),
                "eks": MachineType("p6-b200.48xlarge", 8),
            },
        ),
        AcceleratorSpec(
            key="A100-80G",
            display_name="NVIDIA A100 SXM 80 GB",
            memory_mib=81920,
            gpus_per_node=8,
            fp8=False,
            nvlink=True,
            product_label="NVIDIA-A100-SXM4-80GB",
            machine_types={
                "gke": MachineType("a2-ultragpu-8g", 8, gpu_type="nvidia-a100-80gb"),
                "eks": MachineType("p4de.24xlarge", 8),
            },
        ),
        AcceleratorSpec(
            key="L40S-48G",
            display_name="NVIDIA L40S 48 GB",
            memory_mib=46068,
            gpus_per_node=8,
            fp8=True,
            nvlink=False,
            product_label="NVIDIA-L40S",
            machine_types={
                "eks": MachineType("g6e.48xlarge", 8),
                "scaleway": MachineType("L40S-8-48G", 8, zones_note="fr-par-2"),
            },
        ),
    )
}


def get_accelerator(key: str) -> AcceleratorSpec:
    """The catalog entry for `key`; a KeyError names the known keys."""
    try:
        return ACCELERATORS[key]
    except KeyError:
        raise KeyError(
            f"unknown accelerator {key!r}; known: {', '.join(sorted(ACCELERATORS))}"
        ) from None
