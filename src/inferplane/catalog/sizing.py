"""Sizing: does a model fit at a tensor-parallel size on a GPU type, and with how much KV cache?

The arithmetic follows how vLLM allocates memory: each GPU may use `gpu_memory_utilization` of
its memory; weights are split evenly over the tensor-parallel group; a per-GPU runtime overhead
(activations at the profiled batch, CUDA graphs, NCCL buffers) is set aside; what is left is KV
cache. KV heads are split over the group too, and replicated when TP exceeds their count.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from inferplane.catalog.accelerators import AcceleratorSpec
from inferplane.catalog.models import ModelSpec

GIB = 1024**3
GB = 10**9
# Measured order of magnitude for 70B-400B dense models in vLLM at the default
# max-num-batched-tokens: activation peak + CUDA graphs + NCCL buffers + CUDA context.
RUNTIME_OVERHEAD_BYTES_PER_GPU = 4 * GIB
VALID_TENSOR_PARALLEL_SIZES = (1, 2, 4, 8)
KV_DTYPE_BYTES = {"auto": 2, "bfloat16": 2, "float16": 2, "fp8": 1, "fp8_e4m3": 1, "fp8_e5m2": 1}


class SizingError(ValueError):
    """The model cannot run as configured; the message carries the numbers, `field` the knob."""

    def __init__(self, message: str, field: str = "tensor_parallel_size"):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class SizingReport:
    """What a replica looks like in memory; every number in bytes unless named otherwise."""

    model: str
    accelerator: str
    tensor_parallel_size: int
    gpu_memory_utilization: float
    gpu_memory_bytes: int
    usable_bytes: int  # tp x memory x utilization
    weights_bytes: int
    overhead_bytes: int
    kv_budget_bytes: int
    kv_bytes_per_token: int  # across the TP group, replication included
    kv_token_capacity: int
    max_model_len: int
    kv_bytes_per_full_sequence: int
    max_full_context_sequences: int
    replicas: int
    gpus_per_node: int
    total_gpus: int
    nodes: int

    def as_dict(self) -> dict:
        return asdict(self)


def kv_dtype_bytes(kv_cache_dtype: str) -> int:
    """Bytes per KV element for vLLM's --kv-cache-dtype value."""
    try:
        return KV_DTYPE_BYTES[kv_cache_dtype]
    except KeyError:
        raise SizingError(
            f"unknown kv cache dtype {kv_cache_dtype!r}; use one of {', '.join(KV_DTYPE_BYTES)}",
            field="kv_cache_dtype",
        ) from None


def size(
    model: ModelSpec,
    accelerator: AcceleratorSpec,
    tensor_parallel_size: int,
    max_model_len: int,
    gpu_memory_utilization: float = 0.90,
    kv_cache_dtype: str = "auto",
    replicas: int = 1,
    gpus_per_node: int | None = None,
    min_full_context_sequences: int = 1,
) -> SizingReport:
    """Size one deployment; raise SizingError with the numbers when it cannot work."""
    tp = tensor_parallel_size
    per_node = gpus_per_node or accelerator.gpus_per_node
    if tp not in VALID_TENSOR_PARALLEL_SIZES:
        raise SizingError(
            f"tensor_parallel_size {tp} is not one of {VALID_TENSOR_PARALLEL_SIZES}: "
            "vLLM splits attention heads evenly, so use a power of two up to 8"
        )
    if tp > per_node:
        raise SizingError(
            f"tensor_parallel_size {tp} needs {tp} GPUs in one node, but a node has {per_node} "
            f"x {accelerator.key}; lower tensor_parallel_size or use a node with more GPUs"
        )
    if model.attention_heads % tp or model.kv_heads % tp and tp % model.kv_heads:
        raise SizingError(
            f"{model.key} has {model.attention_heads} attention heads and {model.kv_heads} KV "
            f"heads, which tensor_parallel_size {tp} does not divide evenly"
        )
    if max_model_len > model.max_context:
        raise SizingError(
            f"max_model_len {max_model_len} exceeds {model.key}'s context of "
            f"{model.max_context} tokens; lower it to {model.max_context} or less",
            field="max_model_len",
        )

    per_gpu_usable = int(accelerator.memory_bytes * gpu_memory_utilization)
    usable = tp * per_gpu_usable
    weights = model.weights_bytes
    overhead = tp * RUNTIME_OVERHEAD_BYTES_PER_GPU
    kv_budget = usable - weights - overhead
    if kv_budget <= 0:
        smallest = _smallest_fitting_tp(model, accelerator, gpu_memory_utilization, per_node)
        hint = (
            f"use tensor_parallel_size {smallest}"
            if smallest
            else "use a larger accelerator, a quantized variant, or more GPUs per node"
        )
        raise SizingError(
            f"{model.key} does not fit on {tp} x {accelerator.key}: weights are "
            f"{weights / GB:.1f} GB, but {tp} x {accelerator.memory_bytes / GB:.1f} GB at "
            f"gpu_memory_utilization {gpu_memory_utilization} leaves {usable / GB:.1f} GB, "
            f"{overhead / GB:.1f} GB of which is runtime overhead; {hint}"
        )

    replication = max(1, tp // model.kv_heads)
    dtype_bytes = kv_dtype_bytes(kv_cache_dtype)
    kv_per_token = model.kv_bytes_per_token(dtype_bytes) * replication
    per_sequence = model.kv_bytes_per_sequence(max_model_len, dtype_bytes) * replication
    capacity = kv_budget // max(kv_per_token, 1)
    full_sequences = kv_budget // per_sequence
    if full_sequences < min_full_context_sequences:
        fitting_len = _largest_fitting_len(model, kv_budget, dtype_bytes, replication,
                                           min_full_context_sequences)
        raise SizingError(
            f"{model.key} on {tp} x {accelerator.key}: after {weights / GB:.1f} GB of weights "
            f"the KV cache has {kv_budget / GB:.1f} GB, room for {full_sequences} sequence(s) of "
            f"max_model_len {max_model_len} ({per_sequence / GB:.1f} GB each), but "
            f"{min_full_context_sequences} are required; lower max_model_len to {fitting_len}, "
            "raise tensor_parallel_size, or set kv_cache_dtype: fp8",
            field="max_model_len",
        )
    total_gpus = tp * replicas
    return SizingReport(
        model=model.key,
        accelerator=accelerator.key,
        tensor_parallel_size=tp,
        gpu_memory_utilization=gpu_memory_utilization,
        gpu_memory_bytes=accelerator.memory_bytes,
        usable_bytes=usable,
        weights_bytes=weights,
        overhead_bytes=overhead,
        kv_budget_bytes=kv_budget,
        kv_bytes_per_token=kv_per_token,
        kv_token_capacity=capacity,
        max_model_len=max_model_len,
        kv_bytes_per_full_sequence=per_sequence,
        max_full_context_sequences=full_sequences,
        replicas=replicas,
        gpus_per_node=per_node,
        total_gpus=total_gpus,
        nodes=-(-total_gpus // per_node) if tp <= per_node else replicas,
    )


def smallest_tensor_parallel_size(
    model: ModelSpec,
    accelerator: AcceleratorSpec,
    max_model_len: int,
    gpu_memory_utilization: float = 0.90,
    kv_cache_dtype: str = "auto",
    gpus_per_node: int | None = None,
) -> int | None:
    """The smallest TP at which one full-context sequence fits, or None if none does."""
    for tp in VALID_TENSOR_PARALLEL_SIZES:
        try:
            size(model, accelerator, tp, max_model_len, gpu_memory_utilization, kv_cache_dtype,
                 gpus_per_node=gpus_per_node)
        except SizingError:
            continue
        return tp
    return None


def _smallest_fitting_tp(model, accelerator, utilization, per_node) -> int | None:
    for tp in VALID_TENSOR_PARALLEL_SIZES:
        if tp > per_node:
            break
        usable = tp * int(accelerator.memory_bytes * utilization)
        if usable - model.weights_bytes - tp * RUNTIME_OVERHEAD_BYTES_PER_GPU > 0:
            return tp
    return None


def _largest_fitting_len(model, kv_budget, dtype_bytes, replication, sequences) -> int:
    """The largest max_model_len (a multiple of 1024) at which `sequences` fit."""
    low, high = 0, model.max_context // 1024
    while low < high:
        mid = (low + high + 1) // 2
        need = model.kv_bytes_per_sequence(mid * 1024, dtype_bytes) * replication * sequences
        if need <= kv_budget:
            low = mid
        else:
            high = mid - 1
    return low * 1024
