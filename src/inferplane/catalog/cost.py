"""Throughput and cost estimates: what a buyer asks first. Every formula is printed by `plan`.

Decode is memory-bound: each step reads every weight once plus the KV cache of the batch, so

    step_s = max( (weights + batch x context x kv_per_token) / (tp x bandwidth x bandwidth_eff),
                  2 x params x tokens_per_step / (tp x flops x mfu) )

where tokens_per_step = batch x (1 + input_per_output) with continuous batching mixing the
prompts' prefill into the decode steps. Output tokens/s = batch / step_s, input tokens/s =
input_per_output x batch / step_s. The efficiencies are typical of vLLM on these GPUs; measured
figures (cost.output_tokens_per_second / cost.input_tokens_per_second) replace the estimate.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from decimal import ROUND_HALF_UP, Decimal

from inferplane.catalog.accelerators import AcceleratorSpec
from inferplane.catalog.models import ModelSpec

HOURS_PER_MONTH = Decimal("730")  # 8760 / 12


@dataclass(frozen=True)
class ThroughputEstimate:
    """Tokens per second of one replica under a steady mixed load."""

    output_tokens_per_second: float
    input_tokens_per_second: float
    batch: int
    step_seconds: float
    bound: str  # "memory" or "compute"
    measured: bool


@dataclass(frozen=True)
class CostEstimate:
    """Self-hosted cost per million tokens and the break-even volume against an API's prices."""

    node_hourly_price: Decimal
    nodes: int
    monthly_cost: Decimal
    cost_per_million_input: Decimal  # node time split in the API's price proportion
    cost_per_million_output: Decimal
    monthly_output_capacity: int  # output tokens per month at full load, all replicas
    api_cost_per_million_output_with_inputs: Decimal  # API price of 1M output + its inputs
    break_even_monthly_output_tokens: int
    self_hosting_can_win: bool

    def as_dict(self) -> dict:
        return {k: (str(v) if isinstance(v, Decimal) else v) for k, v in asdict(self).items()}


def estimate_throughput(
    model: ModelSpec,
    accelerator: AcceleratorSpec,
    tensor_parallel_size: int,
    batch: int,
    context_tokens: int,
    input_per_output: float,
    kv_dtype_bytes: int = 2,
    mfu: float = 0.4,
    bandwidth_efficiency: float = 0.7,
) -> ThroughputEstimate:
    """Estimate a replica's steady throughput from the catalog (see the module docstring)."""
    tp = tensor_parallel_size
    flops = accelerator.bf16_dense_tflops * 1e12
    if model.bytes_per_weight <= 1 and accelerator.fp8_dense_tflops:
        flops = accelerator.fp8_dense_tflops * 1e12
    bytes_per_step = model.weights_bytes + batch * model.kv_bytes_per_sequence(context_tokens, kv_dtype_bytes)
    memory_s = bytes_per_step / (tp * accelerator.memory_bandwidth_gb_per_s * 1e9 * bandwidth_efficiency)
    tokens_per_step = batch * (1 + input_per_output)
    compute_s = 2 * model.parameters_billion * 1e9 * tokens_per_step / (tp * flops * mfu)
    step = max(memory_s, compute_s)
    return ThroughputEstimate(
        output_tokens_per_second=batch / step,
        input_tokens_per_second=batch * input_per_output / step,
        batch=batch,
        step_seconds=step,
        bound="memory" if memory_s >= compute_s else "compute",
        measured=False,
    )


def estimate_cost(
    throughput: ThroughputEstimate,
    node_hourly_price: Decimal,
    nodes: int,
    replicas: int,
    input_price_per_million: Decimal,
    output_price_per_million: Decimal,
    input_per_output: float,
) -> CostEstimate:
    """Cost per million tokens at full load, and the monthly volume where self-hosting breaks even."""
    monthly = node_hourly_price * HOURS_PER_MONTH * nodes
    per_second_per_replica = node_hourly_price * nodes / Decimal(3600) / Decimal(replicas)
    ratio = Decimal(str(input_per_output))
    # Split each second of node time between input and output tokens in the proportion of the
    # API's own prices, so each line compares like with like: self-hosted / API is then the same
    # ratio for input and for output, the ratio of the two monthly bills at full load.
    weight = (output_price_per_million / input_price_per_million
              if input_price_per_million else Decimal(1))
    input_rate = Decimal(str(throughput.input_tokens_per_second))
    output_rate = Decimal(str(throughput.output_tokens_per_second))
    cost_in = per_second_per_replica / (input_rate + weight * output_rate) * 10**6
    cost_out = cost_in * weight
    capacity = int(throughput.output_tokens_per_second * 3600 * 730 * replicas)
    api_per_million_output = output_price_per_million + ratio * input_price_per_million
    break_even = int(monthly / api_per_million_output * 10**6) if api_per_million_output else 0
    cent = Decimal("0.0001")
    return CostEstimate(
        node_hourly_price=node_hourly_price,
        nodes=nodes,
        monthly_cost=monthly.quantize(Decimal("0.01"), ROUND_HALF_UP),
        cost_per_million_input=cost_in.quantize(cent, ROUND_HALF_UP),
        cost_per_million_output=cost_out.quantize(cent, ROUND_HALF_UP),
        monthly_output_capacity=capacity,
        api_cost_per_million_output_with_inputs=api_per_million_output,
        break_even_monthly_output_tokens=break_even,
        self_hosting_can_win=break_even <= capacity,
    )
