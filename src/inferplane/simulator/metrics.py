"""vLLM's Prometheus metrics, by vLLM's names and labels (`model_name`, `engine`).

The numbers live in plain ints and floats updated from the event loop and are turned into
metric families only when /metrics is scraped (a prometheus-client custom collector in the
app's own CollectorRegistry). That keeps per-token bookkeeping to an addition, which matters
when the simulator is the fast upstream in a benchmark.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from inferplane.metric_values import Histogram

FINISH_REASONS = ("stop", "length", "abort")
# Bucket bounds as vLLM's PrometheusStatLogger defines them.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
               7.5, 10.0, 20.0, 40.0, 80.0)
REQUEST_LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0,
                           50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)


def one_two_five_buckets(maximum: int) -> tuple[int, ...]:
    """1, 2, 5, 10, 20, 50, ... up to `maximum` (vLLM's token-count buckets)."""
    bounds: list[int] = []
    exponent = 0
    while True:
        for mantissa in (1, 2, 5):
            value = mantissa * 10**exponent
            if value > maximum:
                return tuple(bounds)
            bounds.append(value)
        exponent += 1


class ModelStats:
    """The state and counters vLLM reports for one served model."""

    def __init__(self, max_model_len: int, kv_capacity_tokens: int) -> None:
        self.kv_capacity_tokens = kv_capacity_tokens
        self.running = 0
        self.waiting = 0
        self.kv_tokens = 0
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.prefix_cache_queries = 0
        self.prefix_cache_hits = 0
        self.success = dict.fromkeys(FINISH_REASONS, 0)
        token_buckets = one_two_five_buckets(max_model_len)
        self.ttft = Histogram(TTFT_BUCKETS)
        self.inter_token = Histogram(ITL_BUCKETS)
        self.e2e = Histogram(REQUEST_LATENCY_BUCKETS)
        self.queue_time = Histogram(REQUEST_LATENCY_BUCKETS)
        self.request_prompt_tokens = Histogram(token_buckets)
        self.request_generation_tokens = Histogram(token_buckets)
        self.request_max_tokens = Histogram(token_buckets)


class SimulatorMetrics(Collector):
    """All models' stats, exposed as vLLM's metric families in a registry of their own."""

    def __init__(self, stats_by_model: dict[str, ModelStats]) -> None:
        self.stats_by_model = stats_by_model
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def collect(self) -> Iterator:
        labels = ["model_name", "engine"]
        models = [([name, "0"], stats) for name, stats in self.stats_by_model.items()]

        def gauge(name: str, documentation: str, read) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, documentation, labels=labels)
            for values, stats in models:
                family.add_metric(values, read(stats))
            return family

        def counter(name: str, documentation: str, read) -> CounterMetricFamily:
            family = CounterMetricFamily(name, documentation, labels=labels)
            for values, stats in models:
                family.add_metric(values, read(stats))
            return family

        def histogram(name: str, documentation: str, read) -> HistogramMetricFamily:
            family = HistogramMetricFamily(name, documentation, labels=labels)
            for values, stats in models:
                hist = read(stats)
                family.add_metric(values, hist.cumulative(), hist.sum)
            return family

        yield gauge("vllm:num_requests_running", "Number of requests in model execution batches.",
                    lambda s: s.running)
        yield gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.",
                    lambda s: s.waiting)
        yield gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.",
                    lambda s: min(1.0, s.kv_tokens / s.kv_capacity_tokens))
        yield counter("vllm:prefix_cache_queries",
                      "Prefix cache queries, in terms of number of queried tokens.",
                      lambda s: s.prefix_cache_queries)
        yield counter("vllm:prefix_cache_hits",
                      "Prefix cache hits, in terms of number of cached tokens.",
                      lambda s: s.prefix_cache_hits)
        yield counter("vllm:num_preemptions", "Cumulative number of preemption from the engine.",
                      lambda s: 0)
        yield counter("vllm:prompt_tokens", "Number of prefill tokens processed.",
                      lambda s: s.prompt_tokens)
        yield counter("vllm:generation_tokens", "Number of generation tokens processed.",
                      lambda s: s.generation_tokens)
        success = CounterMetricFamily("vllm:request_success",
                                      "Count of successfully processed requests.",
                                      labels=[*labels, "finished_reason"])
        for values, stats in models:
            for reason, count in stats.success.items():
                success.add_metric([*values, reason], count)
        yield success
        yield histogram("vllm:request_prompt_tokens", "Number of prefill tokens processed.",
                        lambda s: s.request_prompt_tokens)
        yield histogram("vllm:request_generation_tokens",
                        "Number of generation tokens processed.",
                        lambda s: s.request_generation_tokens)
        yield histogram("vllm:request_params_max_tokens",
                        "Histogram of the max_tokens request parameter.",
                        lambda s: s.request_max_tokens)
        yield histogram("vllm:time_to_first_token_seconds",
                        "Histogram of time to first token in seconds.", lambda s: s.ttft)
        yield histogram("vllm:inter_token_latency_seconds",
                        "Histogram of inter-token latency in seconds.", lambda s: s.inter_token)
        yield histogram("vllm:e2e_request_latency_seconds",
                        "Histogram of e2e request latency in seconds.", lambda s: s.e2e)
        yield histogram("vllm:request_queue_time_seconds",
                        "Histogram of time spent in WAITING phase for request.",
                        lambda s: s.queue_time)
