"""Metric values kept as plain numbers on an event loop and turned into Prometheus metric
families only when /metrics is scraped (a prometheus-client custom collector).

prometheus-client's own metric objects take a lock and several calls per update: about a
microsecond each, and a request through the gateway makes ten of them. Values that only the
event loop's thread updates and reads need neither.
"""

from __future__ import annotations

from bisect import bisect_left


class Histogram:
    """Bucket counts of one labelled histogram; `observe` can record a value several times."""

    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float, times: int = 1) -> None:
        self.counts[bisect_left(self.bounds, value)] += times
        self.sum += value * times
        self.count += times

    def cumulative(self) -> list[tuple[str, float]]:
        buckets, running = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts):
            running += count
            buckets.append(("+Inf" if bound == float("inf") else str(float(bound)), running))
        return buckets
