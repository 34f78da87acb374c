"""The access log: one line per request (id, method, path, status, key id, model, latency).

Never a body, a query string or a header (so never a key or a prompt). Lines are kept in memory
as tuples and written in one batch per second: `logging` would cost a LogRecord and a write
system call per request, a measurable share of the gateway's per-request budget.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class AccessLog:
    """Buffered access lines; `flush()` formats and writes them (the app calls it every second)."""

    def __init__(self, stream: TextIO | None = None, max_buffered: int = 100_000) -> None:
        self.stream = stream
        self.max_buffered = max_buffered
        self.dropped = 0
        self._lines: list[tuple] = []

    def record(self, request_id: str, method: str, path: str, status: int, key_id: str,
               model: str, latency_seconds: float) -> None:
        if len(self._lines) >= self.max_buffered:
            self.dropped += 1  # a stalled stderr must not grow memory without bound
            return
        self._lines.append((time.time(), request_id, method, path, status, key_id, model,
                            latency_seconds))

    def flush(self) -> None:
        lines, self._lines = self._lines, []
        if not lines:
            return
        out = []
        for moment, request_id, method, path, status, key_id, model, latency in lines:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(moment))
            millis = int((moment % 1) * 1000)
            out.append(f"{stamp},{millis:03d} INFO inferplane.gateway.access: {request_id} "
                       f"{method} {path} {status} key={key_id} model={model} "
                       f"{latency * 1000.0:.1f}ms\n")
        stream = self.stream or sys.stderr
        try:
            stream.write("".join(out))
            stream.flush()
        except (OSError, ValueError):  # a closed or broken stderr must not stop the gateway
            pass
