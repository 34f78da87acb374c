"""Prometheus metrics of the gateway, in a registry of its own (no process-global state).

Labels carry the public key id and the served model name only; a model name the gateway does not
serve is counted as "unknown" so that bad input cannot blow up the label space.
"""

from __future__ import annotations

from decimal import Decimal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

PREFIX = "inferplane_gateway"
LATENCY_BUCKETS_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120,
                           300, 600)
LEDGER_BUCKETS_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5,
                          5, 10, 30)
TTFT_BUCKETS_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class GatewayMetrics:
    """Every counter and histogram the gateway exports."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(f"{PREFIX}_requests", "Responses sent, by status",
                                ["model", "key_id", "status"], registry=r)
        self.tokens = Counter(f"{PREFIX}_tokens", "Tokens metered",
                              ["model", "key_id", "direction"], registry=r)
        self.cost = Counter(f"{PREFIX}_cost", "Cost metered, in the configured currency",
                            ["model", "key_id", "currency"], registry=r)
        self.latency = Histogram(f"{PREFIX}_request_latency_seconds",
                                 "Time from request to the last byte sent", ["model"],
                                 buckets=LATENCY_BUCKETS_SECONDS, registry=r)
        self.ttft = Histogram(f"{PREFIX}_time_to_first_token_seconds",
                              "Time from request to the first streamed chunk", ["model"],
                              buckets=TTFT_BUCKETS_SECONDS, registry=r)
        self.auth_failures = Counter(f"{PREFIX}_auth_failures", "Requests refused with 401",
                                     ["reason"], registry=r)
        self.rejections = Counter(
            f"{PREFIX}_rejected_requests",
            "Requests refused by the gateway (limits, bad input), by reason", ["reason"],
            registry=r)
        self.upstream_errors = Counter(f"{PREFIX}_upstream_errors",
                                       "Upstream failures (connect, timeout, 5xx, broken stream)",
                                       ["reason"], registry=r)
        self.ledger_write_failures = Counter(
            f"{PREFIX}_ledger_write_failures",
            "Usage records not committed when their response finished (kept for retry or lost)",
            registry=r)
        self.ledger_commit_failures = Counter(f"{PREFIX}_ledger_commit_failures",
                                              "Failed ledger transactions (each retry counted)",
                                              registry=r)
        self.ledger_write_latency = Histogram(
            f"{PREFIX}_ledger_write_latency_seconds",
            "Time a response waited for its usage record to commit to the local ledger (spool)",
            buckets=LEDGER_BUCKETS_SECONDS, registry=r)
        # The spool -> central ledger path (gateway/shipper.py); zero without a central ledger.
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
        self.in_flight = Gauge(f"{PREFIX}_requests_in_flight", "Requests being served", registry=r)
        self.upstream_ready = Gauge(f"{PREFIX}_upstream_ready",
                                    "1 when vLLM's /health answered 200 at the last check",
                                    registry=r)
        self.budget_spent_ratio = Gauge(f"{PREFIX}_key_budget_spent_ratio",
                                        "Month-to-date cost over the key's monthly budget",
                                        ["key_id"], registry=r)
        self._children: dict[tuple[str, str], tuple] = {}
        self._request_children: dict[tuple[str, str, int], object] = {}
        self._model_children: dict[str, tuple] = {}

    def observe_usage(self, model: str, key_id: str, prompt_tokens: int, completion_tokens: int,
                      cost: Decimal, currency: str) -> None:
        children = self._children.get((model, key_id))
        if children is None:
            # Label lookups are the costly part of prometheus-client: resolve once per pair.
            children = (self.tokens.labels(model, key_id, "input"),
                        self.tokens.labels(model, key_id, "output"),
                        self.cost.labels(model, key_id, currency))
            self._children[(model, key_id)] = children
        if prompt_tokens:
            children[0].inc(prompt_tokens)
        if completion_tokens:
            children[1].inc(completion_tokens)
        if cost:
            children[2].inc(float(cost))

    def observe_request(self, model: str, key_id: str, status: int, latency_seconds: float | None,
                        ttft_seconds: float | None) -> None:
        """One finished request (latency and TTFT only for served models)."""
        counter = self._request_children.get((model, key_id, status))
        if counter is None:
            counter = self.requests.labels(model, key_id, str(status))
            self._request_children[(model, key_id, status)] = counter
        counter.inc()
        if latency_seconds is not None:
            histograms = self._model_children.get(model)
            if histograms is None:
                histograms = (self.latency.labels(model), self.ttft.labels(model))
                self._model_children[model] = histograms
            histograms[0].observe(latency_seconds)
            if ttft_seconds is not None:
                histograms[1].observe(ttft_seconds)

    def render(self, upstream_exposition: bytes = b"") -> bytes:
        """The gateway's series, then vLLM's (relayed: vLLM listens on the pod's loopback only,
        so Prometheus scrapes both through the gateway's port)."""
        own = generate_latest(self.registry)
        if not upstream_exposition:
            return own
        if not upstream_exposition.endswith(b"\n"):
            upstream_exposition += b"\n"
        return own + upstream_exposition
