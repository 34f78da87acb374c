"""Relaying vLLM's answer to the client: a whole body (metered, recorded, then sent) or a stream
(forwarded event by event through the meter, `[DONE]` only after the record commits), and the
bill of a stream whose client left. GatewayApp (app.py) inherits it."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from inferplane.gateway.exchange import Exchange
from inferplane.gateway.keys import ApiKey
from inferplane.gateway.metering import StreamMeter, usage_from_body
from inferplane.gateway.proxy import (
    openai_error_from_upstream,
    send_body,
    sse_error_event,
    upstream_timeout,
    upstream_unreachable,
)
from inferplane.gateway.upstream import UpstreamError, UpstreamResponse, UpstreamTimeout


class Relaying:
    """Reading vLLM's response and sending it on."""

    @staticmethod
    async def _read_upstream(response: UpstreamResponse) -> bytes:
        try:
            return await response.read()
        except UpstreamTimeout:
            raise upstream_timeout() from None
        except UpstreamError:
            raise upstream_unreachable() from None

    @staticmethod
    def _only_allowed_models(data: bytes, key: ApiKey) -> bytes:
        try:
            listing = json.loads(data)
            listing["data"] = [model for model in listing["data"]
                               if isinstance(model, dict) and key.allows_model(model.get("id"))]
        except (ValueError, KeyError, TypeError):
            return data
        return json.dumps(listing, ensure_ascii=False, separators=(",", ":")).encode()

    def _response_headers(self, ex: Exchange, content_type: bytes) -> list[tuple[bytes, bytes]]:
        return [(b"content-type", content_type), (b"x-request-id", ex.request_id.encode()),
                *ex.extra_headers]

    async def _relay_body(self, ex: Exchange, response: UpstreamResponse,
                          send: Any) -> None:
        """A whole (non-streamed, or error) response: meter it, record it, then send it."""
        data = await self._read_upstream(response)
        status = response.status
        if status >= 400:
            data = openai_error_from_upstream(status, data)
            content_type = b"application/json"
            if status >= 500:
                self.metrics.upstream_errors.labels("status_5xx").inc()
        else:
            ex.usage = usage_from_body(data)
            content_type = response.header(b"content-type", b"application/json")
            if ex.usage is not None and ex.usage.completion_tokens:
                ex.ttft_seconds = time.perf_counter() - ex.started  # the client's first token
        ex.status = 499 if ex.client_gone else status
        if not await self._record(ex):
            raise self._unmetered()
        ex.response_started = ex.response_complete = True
        await send_body(send, status, self._response_headers(ex, content_type), data)

    async def _relay_stream(self, ex: Exchange, response: UpstreamResponse, send: Any,
                            keep_chunk_usage: bool, keep_final_usage: bool,
                            choices_per_prompt: int) -> None:
        """Forward SSE events as they arrive; the final `[DONE]` only after the record commits."""
        ex.streamed = True
        ex.meter = meter = StreamMeter(keep_chunk_usage, keep_final_usage, choices_per_prompt)
        content_type = response.header(b"content-type", b"text/event-stream")
        await send({"type": "http.response.start", "status": 200, "headers": [
            *self._response_headers(ex, content_type), (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no")]})
        ex.response_started = True
        broken: str | None = None
        try:
            while True:
                data = await response.readany()
                if not data:
                    break
                out = meter.feed(data)
                if out:
                    if ex.ttft_seconds is None:
                        ex.ttft_seconds = time.perf_counter() - ex.started
                    await send({"type": "http.response.body", "body": out, "more_body": True})
        except UpstreamTimeout:
            broken = "timeout"
        except UpstreamError:
            broken = "broken_stream"
        ex.usage = meter.usage()
        ex.status = 200 if broken is None else (504 if broken == "timeout" else 502)
        if broken is not None:
            self.metrics.upstream_errors.labels(broken).inc()
        recorded = await self._record(ex)
        tail = meter.leftover()
        if broken is not None:
            tail += sse_error_event("The model server stopped answering mid-stream.",
                                    "upstream_timeout" if broken == "timeout" else
                                    "upstream_stream_broken")
        elif not recorded:
            tail += sse_error_event("Usage metering is unavailable; this response is not "
                                    "complete.", "metering_unavailable")
        else:
            tail += meter.done_event or b""
        ex.response_complete = True
        await send({"type": "http.response.body", "body": tail, "more_body": False})

    async def _client_left(self, ex: Exchange) -> None:
        """Bill a stream whose client went away: what it had generated by then (vLLM's continuous
        usage of the last chunk seen of every choice)."""
        ex.status = 499
        if ex.meter is not None and ex.usage is None:
            ex.usage = ex.meter.usage()
        try:
            await self._record(ex)
        except asyncio.CancelledError:  # cancelled again: the writer still commits the record
            pass
