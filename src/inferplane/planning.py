"""Human-readable capacity plans built from the sizing report."""

from __future__ import annotations

from inferplane.catalog.sizing import GB, SizingReport
from inferplane.config import DeploymentConfig


def plan_rows(config: DeploymentConfig, report: SizingReport) -> list[tuple[str, str]]:
    """(label, value) rows of the sizing table; each value shows its unit."""
    tp = report.tensor_parallel_size
    return [
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
        ("prices", f"{config.input_price_per_million} / {config.output_price_per_million} "
                   f"{config.metering.currency} per million input / output tokens"),
    ]


def plan_table(rows: list[tuple[str, str]]) -> str:
    """Two aligned columns."""
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label.ljust(width)}  {value}" for label, value in rows)
