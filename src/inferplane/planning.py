"""Capacity and cost plans built from the sizing report and the catalog's cost model."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from inferplane.catalog.cost import CostEstimate, ThroughputEstimate, estimate_cost, estimate_throughput
from inferplane.catalog.sizing import GB, SizingReport, kv_dtype_bytes
from inferplane.config import DeploymentConfig

DEFAULT_CONCURRENCY = 64


def node_hourly_price(config: DeploymentConfig) -> Decimal | None:
    """The configured node price, else the catalog's USD example for this cloud's machine."""
    if config.cost.node_hourly_price is not None:
        return config.cost.node_hourly_price
    machine = config.accelerator_spec.machine_types.get(config.cloud)
    if machine is None or machine.example_hourly_usd is None or config.metering.currency != "USD":
        return None
    return Decimal(str(machine.example_hourly_usd))


def decode_concurrency(config: DeploymentConfig, report: SizingReport) -> int:
    """Sequences a replica decodes at once: configured, else 64 or what the KV cache holds."""
    cost = config.cost
    if cost.concurrency:
        return cost.concurrency
    fits = report.kv_token_capacity // cost.average_context_tokens
    return max(1, min(config.model.max_num_seqs or DEFAULT_CONCURRENCY, DEFAULT_CONCURRENCY, fits))


def throughput(config: DeploymentConfig, report: SizingReport) -> ThroughputEstimate:
    """Measured figures from config when given, else the catalog estimate."""
    cost = config.cost
    ratio = cost.input_tokens_per_output_token
    concurrency = decode_concurrency(config, report)
    if cost.output_tokens_per_second:
        output = cost.output_tokens_per_second
        return ThroughputEstimate(output, cost.input_tokens_per_second or output * ratio,
                                  concurrency, 0.0, "measured", True)
    return estimate_throughput(
        config.model_spec, config.accelerator_spec, report.tensor_parallel_size, concurrency,
        cost.average_context_tokens, ratio, kv_dtype_bytes(config.model.kv_cache_dtype),
        cost.mfu, cost.bandwidth_efficiency,
    )


def cost_estimate(config: DeploymentConfig, report: SizingReport) -> tuple[ThroughputEstimate, CostEstimate | None]:
    """Throughput always; cost only when a node price is known."""
    rate = throughput(config, report)
    price = node_hourly_price(config)
    if price is None:
        return rate, None
    return rate, estimate_cost(rate, price, report.nodes, report.replicas,
                               config.input_price_per_million, config.output_price_per_million,
                               config.cost.input_tokens_per_output_token)


def plan_document(config: DeploymentConfig, report: SizingReport) -> dict[str, Any]:
    """`plan -o json`: the sizing numbers, plus throughput and cost."""
    rate, cost = cost_estimate(config, report)
    document = report.as_dict()
    document["throughput"] = {k: getattr(rate, k) for k in rate.__dataclass_fields__}
    document["cost"] = cost.as_dict() if cost else None
    document["currency"] = config.metering.currency
    document["start_seconds"] = {kind: dict(zip(("cold", "warm"), config.start_seconds(kind)))
                                 for kind in ("pvc", "host_path", "empty_dir")}
    return document


def plan_rows(config: DeploymentConfig, report: SizingReport) -> list[tuple[str, str]]:
    """(label, value) rows of the plan table; each value shows its unit."""
    tp = report.tensor_parallel_size
    rows = [
        ("model", f"{config.model_spec.display_name} [{report.model}]"),
        ("accelerator", f"{config.accelerator_spec.display_name} [{report.accelerator}]"),
        ("tensor parallel size", f"{tp} GPUs per replica"),
        ("GPU memory", f"{tp} x {report.gpu_memory_bytes / GB:.1f} GB = {tp * report.gpu_memory_bytes / GB:.1f} GB"),
        ("usable at utilization", f"{report.usable_bytes / GB:.1f} GB (gpu_memory_utilization {report.gpu_memory_utilization})"),
        ("weights", f"{report.weights_bytes / GB:.1f} GB"),
        ("runtime overhead", f"{report.overhead_bytes / GB:.1f} GB"),
        ("KV-cache budget", f"{report.kv_budget_bytes / GB:.1f} GB"),
        ("KV per token", f"{report.kv_bytes_per_token / 1024:.0f} KiB"),
        ("KV token capacity", f"{report.kv_token_capacity:,} tokens"),
        ("max model len", f"{report.max_model_len:,} tokens ({report.kv_bytes_per_full_sequence / GB:.1f} GB of KV each)"),
        ("full-context sequences", f"{report.max_full_context_sequences} at once per replica"),
        ("replicas", str(report.replicas)),
        ("GPUs", f"{report.total_gpus} ({report.gpus_per_node} per node)"),
        ("nodes", str(report.nodes)),
        ("startup probe budget", f"{config.startup_budget_seconds} s ({config.model_cache.kind} cache)"),
    ]
    return rows + start_rows(config) + cost_rows(config, report)


def start_rows(config: DeploymentConfig) -> list[tuple[str, str]]:
    """Cold start and warm restart of a replica for each cache choice (formula: config.start_seconds)."""
    rows = []
    for kind in ("pvc", "host_path", "empty_dir"):
        cold, warm = config.start_seconds(kind)
        chosen = "  <- configured" if kind == config.model_cache.kind else ""
        rows.append((f"start with {kind}", f"cold {cold / 60:.0f} min, warm restart {warm / 60:.0f} min{chosen}"))
    return rows


def cost_rows(config: DeploymentConfig, report: SizingReport) -> list[tuple[str, str]]:
    """Throughput, self-hosted cost per million tokens, and the break-even volume."""
    currency = config.metering.currency
    rate, cost = cost_estimate(config, report)
    how = ("measured (cost.*_tokens_per_second)" if rate.measured else
           f"estimated, {rate.bound}-bound: batch {rate.batch}, "
           f"{config.cost.average_context_tokens} context tokens, step {rate.step_seconds * 1000:.1f} ms "
           "(formula: src/inferplane/catalog/cost.py)")
    rows = [
        ("API prices", f"{config.input_price_per_million} / {config.output_price_per_million} "
                       f"{currency} per million input / output tokens"),
        ("workload mix", f"{config.cost.input_tokens_per_output_token:g} input tokens per output token"),
        ("throughput per replica", f"{rate.output_tokens_per_second:,.0f} output + "
                                   f"{rate.input_tokens_per_second:,.0f} input tokens/s, {how}"),
    ]
    if cost is None:
        rows.append(("self-hosted cost", "set cost.node_hourly_price (no list price for "
                                         f"{config.cloud} in {currency})"))
        return rows
    ratio = cost.cost_per_million_output / config.output_price_per_million if config.output_price_per_million else 0
    rows += [
        ("node price", f"{cost.node_hourly_price} {currency}/h x {cost.nodes} node(s) = "
                       f"{cost.monthly_cost:,} {currency}/month (730 h)"),
        ("self-hosted cost", f"{cost.cost_per_million_input} / {cost.cost_per_million_output} "
                             f"{currency} per million input / output tokens at full load "
                             f"({ratio:.2f} x the API prices)"),
        ("monthly capacity", f"{cost.monthly_output_capacity / 1e6:,.0f} M output tokens at full load"),
        ("break-even volume", f"{cost.break_even_monthly_output_tokens / 1e6:,.0f} M output tokens/month "
                              f"(+{config.cost.input_tokens_per_output_token:g}x input): "
                              + ("self-hosting is cheaper above it" if cost.self_hosting_can_win
                                 else "above this config's capacity: at these prices the API is "
                                      "cheaper; self-hosting buys residency and control")),
    ]
    return rows


def plan_table(rows: list[tuple[str, str]]) -> str:
    """Two aligned columns."""
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label.ljust(width)}  {value}" for label, value in rows)


def waiting_requests_per_replica(config: DeploymentConfig) -> int:
    """Queue depth per replica that asks for another: 10% of what a replica decodes at once."""
    configured = config.autoscaling.waiting_requests_per_replica
    return configured or max(1, -(-decode_concurrency(config, config.sizing()) // 10))
