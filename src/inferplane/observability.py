"""The Grafana dashboard and the Prometheus alerts, generated from the metric names we expose.

Every query is PromQL over three sources: the gateway's own series (`inferplane_gateway_*`),
vLLM's (`vllm:*`, relayed by the gateway's /metrics because vLLM listens on loopback only), and
the GPU operator's DCGM exporter (`DCGM_FI_*`). Tests parse every expression and check each metric
against a live gateway and simulator.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from inferplane.config import DeploymentConfig
from inferplane.planning import waiting_requests_per_replica

GATEWAY = "inferplane_gateway"
# DCGM exporter's default counters (GPU operator): not exposed by anything we run, so listed here.
DCGM_METRICS = ("DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE")
SCOPE = 'namespace="$namespace"'


@dataclass(frozen=True)
class Panel:
    """One time-series panel: title, unit (Grafana's), and (legend, PromQL) targets."""

    title: str
    unit: str
    targets: tuple[tuple[str, str], ...]
    description: str = ""


def _quantiles(metric: str, scope: str = SCOPE) -> tuple[tuple[str, str], ...]:
    return tuple(
        (f"p{int(q * 100)}", f"histogram_quantile({q}, sum by (le) (rate({metric}_bucket{{{scope}}}[5m])))")
        for q in (0.5, 0.95, 0.99)
    )


PANELS: tuple[Panel, ...] = (
    Panel("Requests by status", "reqps", (
        ("{{status}}", f"sum by (status) (rate({GATEWAY}_requests_total{{{SCOPE}}}[5m]))"),)),
    Panel("Tokens per second", "short", (
        ("{{direction}}", f"sum by (direction) (rate({GATEWAY}_tokens_total{{{SCOPE}}}[5m]))"),)),
    Panel("Cost per hour by key", "currencyUSD", (
        ("{{key_id}}", f"sum by (key_id) (increase({GATEWAY}_cost_total{{{SCOPE}}}[1h]))"),),
        "Spend in the configured currency over the last hour, by public key id."),
    Panel("Time to first token (vLLM)", "s", _quantiles("vllm:time_to_first_token_seconds")),
    Panel("Inter-token latency (vLLM)", "s", _quantiles("vllm:inter_token_latency_seconds")),
    Panel("Request latency through the gateway", "s", _quantiles(f"{GATEWAY}_request_latency_seconds")),
    Panel("Queue depth", "short", (
        ("waiting", f"sum(vllm:num_requests_waiting{{{SCOPE}}})"),
        ("running", f"sum(vllm:num_requests_running{{{SCOPE}}})"))),
    Panel("KV-cache usage", "percentunit", (
        ("{{pod}}", f"avg by (pod) (vllm:kv_cache_usage_perc{{{SCOPE}}})"),)),
    Panel("GPU utilisation (DCGM)", "percent", (
        ("{{Hostname}} GPU {{gpu}}", 'avg by (Hostname, gpu) (DCGM_FI_DEV_GPU_UTIL{exported_namespace="$namespace"})'),)),
    Panel("GPU memory used (DCGM)", "decmbytes", (
        ("{{Hostname}} GPU {{gpu}}", 'avg by (Hostname, gpu) (DCGM_FI_DEV_FB_USED{exported_namespace="$namespace"})'),)),
    Panel("Errors", "reqps", (
        ("upstream {{reason}}", f"sum by (reason) (rate({GATEWAY}_upstream_errors_total{{{SCOPE}}}[5m]))"),
        ("rejected {{reason}}", f"sum by (reason) (rate({GATEWAY}_rejected_requests_total{{{SCOPE}}}[5m]))"),
        ("auth {{reason}}", f"sum by (reason) (rate({GATEWAY}_auth_failures_total{{{SCOPE}}}[5m]))"))),
    Panel("Ledger write failures", "short", (
        ("failures", f"sum(increase({GATEWAY}_ledger_write_failures_total{{{SCOPE}}}[10m]))"),)),
    Panel("Usage spool (records not yet in the central ledger)", "short", (
        ("{{pod}} waiting", f"max by (pod) ({GATEWAY}_spool_records{{{SCOPE}}})"),
        ("{{pod}} oldest age (s)", f"max by (pod) ({GATEWAY}_spool_oldest_unshipped_age_seconds{{{SCOPE}}})"))),
)


def dashboard(config: DeploymentConfig) -> dict[str, Any]:
    """A Grafana dashboard (JSON model) for one deployment; import it or ship it in a ConfigMap."""
    panels = []
    for index, panel in enumerate(PANELS):
        panels.append({
            "id": index + 1,
            "type": "timeseries",
            "title": panel.title,
            "description": panel.description,
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "gridPos": {"h": 8, "w": 12, "x": (index % 2) * 12, "y": (index // 2) * 8},
            "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
            "targets": [{"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend,
                         "datasource": {"type": "prometheus", "uid": "${datasource}"}}
                        for i, (legend, expr) in enumerate(panel.targets)],
        })
    return {
        "title": f"inferplane — {config.name}",
        "uid": f"inferplane-{config.name}"[:40],
        "tags": ["inferplane", "vllm", config.model_spec.key],
        "timezone": "utc",
        "schemaVersion": 39,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus"},
            {"name": "namespace", "type": "custom", "query": config.namespace,
             "current": {"text": config.namespace, "value": config.namespace}},
        ]},
        "panels": panels,
    }


def alert_rules(config: DeploymentConfig) -> list[dict[str, Any]]:
    """PrometheusRule groups: model not ready, queue growing, errors, budgets, ledger, spool, and
    streams stopped without vLLM's abort (billing may fall short)."""
    scope = f'namespace="{config.namespace}"'
    pods = f'{scope},pod=~"{config.name}-.*"'
    # A replica loading its weights is expected to be not ready for the whole startup budget.
    not_ready_for = config.startup_budget_seconds + 300
    labels = {"service": config.name, "model": config.model_spec.key}
    fraction = config.observability.budget_alert_fraction
    rules = [
        {"alert": "InferplaneModelNotReady",
         "expr": f"max by (pod) ({GATEWAY}_upstream_ready{{{pods}}}) == 0",
         "for": f"{not_ready_for}s",
         "labels": {**labels, "severity": "critical"},
         "annotations": {"summary": "vLLM in {{ $labels.pod }} has not been ready for longer than "
                                    f"its startup budget ({config.startup_budget_seconds} s)",
                         "runbook": "kubectl logs -c vllm {{ $labels.pod }}; check the pre-fetch Job "
                                    "and GPU health (DCGM)"}},
        {"alert": "InferplaneQueueGrowing",
         "expr": (f"sum(vllm:num_requests_waiting{{{pods}}}) > "
                  f"{waiting_requests_per_replica(config)} * count(vllm:num_requests_running{{{pods}}})"),
         "for": "15m",
         "labels": {**labels, "severity": "warning"},
         "annotations": {"summary": "requests are queueing in vLLM faster than the replicas serve them",
                         "runbook": "raise autoscaling.max_replicas or add GPU nodes"}},
        {"alert": "InferplaneHighErrorRate",
         "expr": (f'sum(rate({GATEWAY}_requests_total{{{scope},status=~"5.."}}[5m])) / '
                  f"sum(rate({GATEWAY}_requests_total{{{scope}}}[5m])) > 0.05"),
         "for": "10m",
         "labels": {**labels, "severity": "critical"},
         "annotations": {"summary": "more than 5% of responses are server errors"}},
        {"alert": "InferplaneBudgetNearlySpent",
         "expr": f"max by (key_id) ({GATEWAY}_key_budget_spent_ratio{{{scope}}}) > {fraction}",
         "for": "5m",
         "labels": {**labels, "severity": "info"},
         "annotations": {"summary": f"key {{{{ $labels.key_id }}}} has spent over {fraction:.0%} "
                                    "of its monthly budget"}},
        {"alert": "InferplaneLedgerWriteFailures",
         "expr": f"sum(increase({GATEWAY}_ledger_write_failures_total{{{scope}}}[10m])) > 0",
         "for": "0m",
         "labels": {**labels, "severity": "critical"},
         "annotations": {"summary": "usage records failed to reach the ledger: billing data at risk"}},
        {"alert": "InferplaneSpoolNotShipping",
         "expr": f"max by (pod) ({GATEWAY}_spool_oldest_unshipped_age_seconds{{{pods}}}) > 600",
         "for": "5m",
         "labels": {**labels, "severity": "warning"},
         "annotations": {"summary": "{{ $labels.pod }} has not shipped usage to the central ledger "
                                    "for 10 minutes: is PostgreSQL reachable?"}},
        {"alert": "InferplaneSpoolNearlyFull",
         "expr": (f"max by (pod) ({GATEWAY}_spool_records{{{pods}}} / "
                  f"{GATEWAY}_spool_max_records{{{pods}}}) > 0.8"),
         "for": "5m",
         "labels": {**labels, "severity": "critical"},
         "annotations": {"summary": "{{ $labels.pod }}'s usage spool is over 80% full: at 100% it "
                                    "refuses requests (503) rather than serve them unmetered"}},
    ]
    from inferplane.render import uses_simulator  # render imports this module

    if not uses_simulator(config):  # the simulator has no abort endpoint: always half-close
        rules.append(
            {"alert": "InferplaneStreamsStoppedWithoutAbort",
             "expr": (f'sum(increase({GATEWAY}_upstream_stops_total{{{scope},how="half_close"}}'
                      "[1h])) > 0"),
             "for": "0m",
             "labels": {**labels, "severity": "warning"},
             "annotations": {
                 "summary": "streams whose clients left were stopped by half-close, not vLLM's "
                            "abort endpoint: such requests may be billed a few tokens short of "
                            "what vLLM generated",
                 "runbook": "the vllm container must run with --enable-scale-out (rendered by "
                            "inferplane): check a custom image's entrypoint or a patched "
                            "Deployment"}})
    return [{"name": f"inferplane-{config.name}", "rules": rules}]


def dashboard_json(config: DeploymentConfig) -> str:
    """The dashboard as stable, importable JSON text."""
    return json.dumps(dashboard(config), indent=2, sort_keys=True) + "\n"


def queries(config: DeploymentConfig) -> list[str]:
    """Every PromQL expression we ship: dashboard targets and alert rules."""
    exprs = [target["expr"] for panel in dashboard(config)["panels"] for target in panel["targets"]]
    exprs += [rule["expr"] for group in alert_rules(config) for rule in group["rules"]]
    return exprs
