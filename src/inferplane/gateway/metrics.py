"""Prometheus metrics of the gateway, in a registry of its own (no process-global state).

Labels carry the public key id and the served model name only; a model name the gateway does not
serve is counted as "unknown" so that bad input cannot blow up the label space. The latency and
TTFT histograms are by model and key id too (a tenant's latency is what its SLO is about): 30
buckets per key and model, so a thousand keys make some 30,000 series — aggregate with
`sum by (le, model)` for the service as a whole.

The series every request updates (requests, tokens, cost, latencies, in flight) are plain numbers
updated on the event loop and exported at scrape time by a custom collector (metric_values.py):
a request then costs a few dict updates instead of ten locked metric updates. Everything updated
from other threads (the ledger writer, the shipper) stays a prometheus-client metric.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from inferplane.metric_values import Histogram as HistogramValues

PREFIX = "inferplane_gateway"
LATENCY_BUCKETS_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120,
                           300, 600)
LEDGER_BUCKETS_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5,
                          5, 10, 30)
TTFT_BUCKETS_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class _RequestSeries(Collector):
    """The per-request series, as plain numbers: updated on the event loop's thread only (a
    scrape from elsewhere iterates over copies, never over a dict being grown)."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, int], int] = {}
        self.tokens: dict[tuple[str, str, str], int] = {}
        self.cost: dict[tuple[str, str, str], float] = {}
        self.latency: dict[tuple[str, str], HistogramValues] = {}  # (model, key id) ->
        self.ttft: dict[tuple[str, str], HistogramValues] = {}
        self.ledger_write_latency = HistogramValues(LEDGER_BUCKETS_SECONDS)
        self.in_flight = 0

    def collect(self) -> Iterator:
        requests = CounterMetricFamily(f"{PREFIX}_requests", "Responses sent, by status",
                                       labels=["model", "key_id", "status"])
        for (model, key_id, status), value in list(self.requests.items()):
            requests.add_metric([model, key_id, str(status)], value)
        yield requests
        tokens = CounterMetricFamily(f"{PREFIX}_tokens", "Tokens metered",
                                     labels=["model", "key_id", "direction"])
        for labels, value in list(self.tokens.items()):
            tokens.add_metric(list(labels), value)
        yield tokens
        cost = CounterMetricFamily(f"{PREFIX}_cost", "Cost metered, in the configured currency",
                                   labels=["model", "key_id", "currency"])
        for labels, value in list(self.cost.items()):
            cost.add_metric(list(labels), value)
        yield cost
        for name, documentation, series in (
                ("request_latency_seconds", "Time from request to the last byte sent",
                 self.latency),
                ("time_to_first_token_seconds", "Time from request to the first streamed chunk",
                 self.ttft)):
            family = HistogramMetricFamily(f"{PREFIX}_{name}", documentation,
                                           labels=["model", "key_id"])
            for labels, values in list(series.items()):
                family.add_metric(list(labels), values.cumulative(), values.sum)
            yield family
        ledger = HistogramMetricFamily(
            f"{PREFIX}_ledger_write_latency_seconds",
            "Time a response waited for its usage record to commit to the local ledger (spool)")
        ledger.add_metric([], self.ledger_write_latency.cumulative(),
                          self.ledger_write_latency.sum)
        yield ledger
        yield GaugeMetricFamily(f"{PREFIX}_requests_in_flight", "Requests being served",
                                value=self.in_flight)


class GatewayMetrics:
    """Every counter and histogram the gateway exports."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.series = _RequestSeries()
        r.register(self.series)
        self.auth_failures = Counter(f"{PREFIX}_auth_failures", "Requests refused with 401",
                                     ["reason"], registry=r)
        self.rejections = Counter(
            f"{PREFIX}_rejected_requests",
            "Requests refused by the gateway (limits, bad input), by reason", ["reason"],
            registry=r)
        self.upstream_errors = Counter(f"{PREFIX}_upstream_errors",
                                       "Upstream failures (connect, timeout, 5xx, broken stream)",
                                       ["reason"], registry=r)
        self.upstream_stops = Counter(
            f"{PREFIX}_upstream_stops",
            "Streams stopped upstream because their client left, by how: vLLM's abort endpoint "
            "(every token generated is billed) or half-close (the fallback; may bill short)",
            ["how"], registry=r)
        # Exposed at 0 from the start: increase() cannot see a series's first event otherwise.
        for how in ("abort", "half_close"):
            self.upstream_stops.labels(how)
        self.ledger_write_failures = Counter(
            f"{PREFIX}_ledger_write_failures",
            "Usage records not committed when their response finished (kept for retry or lost)",
            registry=r)
        self.ledger_commit_failures = Counter(f"{PREFIX}_ledger_commit_failures",
                                              "Failed ledger transactions (each retry counted)",
                                              registry=r)
        # The spool -> central ledger path (ledger/shipper.py); zero without a central ledger.
        self.spool_records = Gauge(f"{PREFIX}_spool_records",
                                   "Usage records in the local spool not yet in the central ledger",
                                   registry=r)
        self.spool_max_records = Gauge(f"{PREFIX}_spool_max_records",
                                       "Unshipped records at which new requests are refused",
                                       registry=r)
        self.spool_oldest_age = Gauge(f"{PREFIX}_spool_oldest_unshipped_age_seconds",
                                      "Age of the oldest usage record not yet shipped", registry=r)
        self.spool_refused_records = Gauge(
            f"{PREFIX}_spool_refused_records",
            "Spooled usage records the central ledger refused for good (kept locally)", registry=r)
        self.shipped_records = Counter(f"{PREFIX}_ledger_shipped_records",
                                       "Usage records shipped to the central ledger", registry=r)
        self.ship_failures = Counter(f"{PREFIX}_ledger_ship_failures",
                                     "Failed attempts to ship a batch to the central ledger",
                                     registry=r)
        self.ship_latency = Histogram(f"{PREFIX}_ledger_ship_batch_seconds",
                                      "Time to commit one batch to the central ledger",
                                      buckets=LEDGER_BUCKETS_SECONDS, registry=r)
        self.keys_loaded = Gauge(f"{PREFIX}_keys_loaded", "API keys currently loaded", registry=r)
        self.key_reload_failures = Counter(f"{PREFIX}_keys_reload_failures",
                                           "Keys file reloads that failed validation", registry=r)
        self.upstream_ready = Gauge(f"{PREFIX}_upstream_ready",
                                    "1 when vLLM's /health answered 200 at the last check",
                                    registry=r)
        self.budget_spent_ratio = Gauge(f"{PREFIX}_key_budget_spent_ratio",
                                        "Month-to-date cost over the key's monthly budget",
                                        ["key_id"], registry=r)

    def observe_usage(self, model: str, key_id: str, prompt_tokens: int, completion_tokens: int,
                      cost: Decimal, currency: str) -> None:
        series = self.series
        if prompt_tokens:
            key = (model, key_id, "input")
            series.tokens[key] = series.tokens.get(key, 0) + prompt_tokens
        if completion_tokens:
            key = (model, key_id, "output")
            series.tokens[key] = series.tokens.get(key, 0) + completion_tokens
        if cost:
            key = (model, key_id, currency)
            series.cost[key] = series.cost.get(key, 0.0) + float(cost)

    def observe_request(self, model: str, key_id: str, status: int, latency_seconds: float | None,
                        ttft_seconds: float | None) -> None:
        """One finished request (latency and TTFT only for served models)."""
        series = self.series
        key = (model, key_id, status)
        series.requests[key] = series.requests.get(key, 0) + 1
        if latency_seconds is not None:
            labels = (model, key_id)
            histogram = series.latency.get(labels)
            if histogram is None:
                histogram = series.latency[labels] = HistogramValues(LATENCY_BUCKETS_SECONDS)
                series.ttft[labels] = HistogramValues(TTFT_BUCKETS_SECONDS)
            histogram.observe(latency_seconds)
            if ttft_seconds is not None:
                series.ttft[labels].observe(ttft_seconds)

    def observe_ledger_write(self, seconds: float) -> None:
        self.series.ledger_write_latency.observe(seconds)

    def render(self, upstream_exposition: bytes = b"") -> bytes:
        """The gateway's series, then vLLM's (relayed: vLLM listens on the pod's loopback only,
        so Prometheus scrapes both through the gateway's port)."""
        own = generate_latest(self.registry)
        if not upstream_exposition:
            return own
        if not upstream_exposition.endswith(b"\n"):
            upstream_exposition += b"\n"
        return own + upstream_exposition
