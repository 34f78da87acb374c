"""Bounds on what a client may make the gateway hold before its request is complete.

uvicorn's httptools protocol sets no limit on the size of a request head and no time limit on
reading it or the body: four connections sending 32 MB of never-ending headers grew the gateway
from 62 to 200 MB, and a body dripped a byte at a time held a request for minutes. This protocol
adds three bounds (GatewaySettings: max_header_bytes, header_timeout_seconds,
body_timeout_seconds): a head larger than the limit is answered 431, a head or a body that has
not arrived in time 408, both in the OpenAI error shape, and the connection is closed. The body's
size is bounded by the app (max_body_bytes, 413).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from inferplane.gateway.errors import GatewayError

_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


@dataclass(frozen=True)
class RequestLimits:
    """How big a request head may be, and how long its head and its body may take to arrive."""

    max_header_bytes: int = 64 * 1024
    header_timeout_seconds: float = 10.0
    body_timeout_seconds: float = 60.0


def bounded_protocol(limits: RequestLimits) -> type[HttpToolsProtocol]:
    """An httptools protocol class for uvicorn's `http=` that enforces `limits`."""
    return type("BoundedHttpToolsProtocol", (BoundedHttpToolsProtocol,), {"limits": limits})


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a head-size limit and head/body read deadlines."""

    limits = RequestLimits()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._head_bytes = 0
        self._reading_head = True
        self._awaiting_body = False
        self._deadline: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._arm(self.limits.header_timeout_seconds, "The request head")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._reading_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if self.transport.is_closing():
            return
        # Checked after parsing, so body bytes that came with the end of the head never count.
        # Deadlines are armed only for a head or body still incomplete after a read: a request
        # that arrives whole (nearly all of them) costs no timer.
        if self._reading_head:
            if self._head_bytes > self.limits.max_header_bytes:
                self._refuse(431, f"The request head is larger than the gateway's limit of "
                             f"{self.limits.max_header_bytes} bytes.", "request_header_too_large")
            elif self._deadline is None:
                self._arm(self.limits.header_timeout_seconds, "The request head")
        elif self._awaiting_body and self._deadline is None:
            self._arm(self.limits.body_timeout_seconds, "The request body")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if not self._reading_head:  # the next request on a kept-alive connection
            self._reading_head = True
            self._head_bytes = 0

    def on_headers_complete(self) -> None:
        self._reading_head = False
        self._awaiting_body = True
        self._disarm()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._awaiting_body = False
        self._disarm()
        super().on_message_complete()

    def handle_websocket_upgrade(self) -> None:
        self._disarm()
        super().handle_websocket_upgrade()

    def _arm(self, seconds: float, what: str) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._too_slow, what, seconds)

    def _disarm(self) -> None:
        if getattr(self, "_deadline", None) is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self, what: str, seconds: float) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self._refuse(408, f"{what} did not arrive within {seconds:g} seconds.",
                         "request_timeout")

    def _refuse(self, status: int, message: str, code: str) -> None:
        """Answer `status` (unless a response has started) and close the connection; a request
        the app is reading sees the client leave."""
        self._disarm()
        cycle = self.cycle
        if cycle is None or not cycle.response_started:
            body = GatewayError(status, message, code=code).body()
            self.transport.write(
                b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                b"connection: close\r\n\r\n" % (status, _REASONS[status], len(body)) + body)
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True
            cycle.message_event.set()
        self.transport.close()
