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
    # How the cloud sells this machine (see CAPACITY_OPTIONS); an empty tuple means on demand and
    # every other option the cloud has. A3 Ultra and A4 are not sold on demand on GKE:
    # https://cloud.google.com/kubernetes-engine/docs/concepts/gpus#gpu-consumption (reservations,
    # flex-start, spot); P5e is sold through Capacity Blocks only:
    # https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/capacity-blocks-how.html
    capacity: tuple[str, ...] = ()
    # Illustrative on-demand list price of the whole node in an EU region, USD per hour, as seen
    # in late 2026. Prices change and differ by commitment: set cost.node_hourly_price for yours.
    example_hourly_usd: float | None = None


# Ways of obtaining a node, per cloud. "reservation": a specific reservation (GKE) or On-Demand
# Capacity Reservation (EC2); "capacity_block": EC2 Capacity Blocks for ML; "flex_start": GKE's
# Dynamic Workload Scheduler; "spot": preemptible.
CAPACITY_OPTIONS: dict[str, tuple[str, ...]] = {
    "gke": ("on_demand", "reservation", "spot", "flex_start"),
    "eks": ("on_demand", "reservation", "spot", "capacity_block"),
    "scaleway": ("on_demand",),
}


def capacity_options(cloud: str, machine: "MachineType") -> tuple[str, ...]:
    """The ways `machine` can be obtained on `cloud`."""
    return machine.capacity or CAPACITY_OPTIONS.get(cloud, ("on_demand",))


@dataclass(frozen=True)
class AcceleratorSpec:
    """One GPU model and how it is sold in nodes."""

    key: str
    display_name: str
    memory_mib: int  # total memory as nvidia-smi reports it (marketing "80 GB" is 81559 MiB)
    gpus_per_node: int
    nvlink: bool
    product_label: str  # the GPU operator's nvidia.com/gpu.product node label
    memory_bandwidth_gb_per_s: float  # HBM/GDDR bandwidth per GPU, datasheet
    bf16_dense_tflops: float  # per GPU, dense (no sparsity), datasheet
    fp8_dense_tflops: float | None  # None where there are no FP8 tensor cores
    machine_types: dict[str, MachineType] = field(default_factory=dict)  # cloud -> machine

    @property
    def memory_bytes(self) -> int:
        return self.memory_mib * MIB

    @property
    def fp8(self) -> bool:
        """Native FP8 tensor cores (Hopper, Ada, Blackwell)."""
        return self.fp8_dense_tflops is not None


ACCELERATORS: dict[str, AcceleratorSpec] = {
    spec.key: spec
    for spec in (
        AcceleratorSpec(
            key="H100-80G",
            display_name="NVIDIA H100 SXM 80 GB",
            memory_mib=81559,
            gpus_per_node=8,
            nvlink=True,
            product_label="NVIDIA-H100-80GB-HBM3",
            memory_bandwidth_gb_per_s=3350,
            bf16_dense_tflops=989,
            fp8_dense_tflops=1979,
            machine_types={
                "gke": MachineType("a3-highgpu-8g", 8, gpu_type="nvidia-h100-80gb",
                                   example_hourly_usd=88.0),
                "eks": MachineType("p5.48xlarge", 8, example_hourly_usd=63.0),
                "scaleway": MachineType("H100-SXM-8-80G", 8, zones_note="fr-par-2",
                                        example_hourly_usd=25.0),
            },
        ),
        AcceleratorSpec(
            key="H200-141G",
            display_name="NVIDIA H200 SXM 141 GB",
            memory_mib=143771,
            gpus_per_node=8,
            nvlink=True,
            product_label="NVIDIA-H200",
            memory_bandwidth_gb_per_s=4800,
            bf16_dense_tflops=989,
            fp8_dense_tflops=1979,
            machine_types={
                "gke": MachineType("a3-ultragpu-8g", 8, gpu_type="nvidia-h200-141gb",
                                   capacity=("reservation", "spot", "flex_start")),
                # p5e.48xlarge is sold only as Capacity Blocks; p5en.48xlarge (H200, EFAv3) is the
                # H200 type EC2 sells on demand and with capacity reservations:
                # https://aws.amazon.com/ec2/instance-types/p5/ . Regions that offer it:
                # `aws ec2 describe-instance-type-offerings --location-type availability-zone
                #  --filters Name=instance-type,Values=p5en.48xlarge --region eu-north-1`
                "eks": MachineType("p5en.48xlarge", 8),
            },
        ),
        AcceleratorSpec(
            key="B200-192G",
            display_name="NVIDIA B200 192 GB",
            memory_mib=183359,
            gpus_per_node=8,
            nvlink=True,
            product_label="NVIDIA-B200",
            memory_bandwidth_gb_per_s=8000,
            bf16_dense_tflops=2250,
            fp8_dense_tflops=4500,
            machine_types={
                "gke": MachineType("a4-highgpu-8g", 8, gpu_type="nvidia-b200",
                                   capacity=("reservation", "spot", "flex_start")),
                "eks": MachineType("p6-b200.48xlarge", 8),
            },
        ),
        AcceleratorSpec(
            key="A100-80G",
            display_name="NVIDIA A100 SXM 80 GB",
            memory_mib=81920,
            gpus_per_node=8,
            nvlink=True,
            product_label="NVIDIA-A100-SXM4-80GB",
            memory_bandwidth_gb_per_s=2039,
            bf16_dense_tflops=312,
            fp8_dense_tflops=None,
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
            nvlink=False,
            product_label="NVIDIA-L40S",
            memory_bandwidth_gb_per_s=864,
            bf16_dense_tflops=362,
            fp8_dense_tflops=733,
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
