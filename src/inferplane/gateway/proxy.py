"""The way to vLLM: the upstream client with its errors mapped to OpenAI-shaped ones, header
hygiene, and ASGI send helpers.

Only a short allow-list of request headers goes upstream: the client's Authorization never does
(vLLM has no use for it, and its logs must not see it), nor cookies or hop-by-hop headers.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from inferplane.gateway.errors import GatewayError, error_body, upstream_error
from inferplane.gateway.upstream import (
    UpstreamClient,
    UpstreamError,
    UpstreamResponse,
    UpstreamTimeout,
)

# Request headers worth passing on: the body's type and trace context.
FORWARDED_REQUEST_HEADERS = frozenset({b"content-type", b"accept", b"traceparent", b"tracestate"})
HEALTH_TIMEOUT_SECONDS = 2.0
# vLLM's own abort (served with --enable-scale-out, render.GATEWAY_VLLM_ARGS): the request ends
# as "abort" and its stream still carries every token generated and the final usage.
ABORT_PATH = "/inference/v1/abort_requests"
_UPSTREAM_ERROR_SNIPPET = 500

log = logging.getLogger("inferplane.gateway")


class Upstream:
    """The vLLM server: requests on pooled connections, plus its /health and /metrics."""

    def __init__(self, base_url: str, read_timeout_seconds: float) -> None:
        self.base_url = base_url.rstrip("/")
        self.client = UpstreamClient(self.base_url, read_timeout_seconds)
        # Probes and scrapes get their own connections and a short timeout.
        self.probe_client = UpstreamClient(self.base_url, HEALTH_TIMEOUT_SECONDS,
                                           connect_timeout_seconds=HEALTH_TIMEOUT_SECONDS)
        self.abort_supported = True  # until vLLM answers that it has no abort endpoint

    async def start(self) -> None:
        """Nothing to open ahead of time: connections are made on first use."""

    async def close(self) -> None:
        self.client.close()
        self.probe_client.close()

    async def open(self, method: str, target: str, headers: list[tuple[str, str]],
                   body: bytes | None) -> UpstreamResponse:
        """Send a request; the caller reads and releases the response. 502/504 GatewayError
        when vLLM cannot be reached or does not answer in time."""
        try:
            return await self.client.request(method, target, headers, body)
        except UpstreamTimeout:
            raise upstream_timeout() from None
        except UpstreamError:
            raise upstream_unreachable() from None

    async def _probe(self, path: str) -> tuple[int, bytes]:
        try:
            response = await self.probe_client.request("GET", path, [])
            try:
                return response.status, await response.read()
            finally:
                response.release()
        except UpstreamError:
            return 0, b""

    async def abort(self, request_ids: list[str]) -> bool:
        """Ask vLLM to stop these requests (its ids); False when it cannot be asked: a vLLM
        without the abort endpoint (403 without --enable-scale-out, 404 on the simulator) is
        not asked again."""
        if not self.abort_supported:
            return False
        try:
            response = await self.probe_client.request(
                "POST", ABORT_PATH, [("content-type", "application/json")],
                json.dumps({"request_ids": request_ids}).encode())
            try:
                await response.read()
            finally:
                response.release()
        except UpstreamError:
            return False
        if response.status in (403, 404, 405):
            self.abort_supported = False
            log.warning("vLLM has no abort endpoint (%s %d): a client leaving a stream is "
                        "stopped by closing, which may leave a step or more unbilled; serve "
                        "vLLM with --enable-scale-out", ABORT_PATH, response.status)
        return response.status == 200

    async def healthy(self) -> bool:
        """vLLM's /health answers 200 (weights loaded, engine running)."""
        status, _ = await self._probe("/health")
        return status == 200

    async def metrics(self) -> bytes:
        """vLLM's own /metrics exposition, or b"" when it cannot be read now."""
        status, body = await self._probe("/metrics")
        return body if status == 200 else b""


def upstream_timeout() -> GatewayError:
    return upstream_error(504, "The model server did not answer in time.",
                          code="upstream_timeout", reason="upstream_timeout")


def upstream_unreachable(error: BaseException | None = None) -> GatewayError:
    return upstream_error(502, "The model server is not reachable; retry shortly.",
                          code="upstream_unavailable", reason="upstream_unreachable")


def openai_error_from_upstream(status: int, body: bytes) -> bytes:
    """An upstream error body in the OpenAI shape: kept if it already is, wrapped otherwise
    (vLLM's older flat `{"object": "error", "message": ...}`, FastAPI's `{"detail": ...}`, text)."""
    data: Any = None
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        pass
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        return body
    error_type = "invalid_request_error" if status < 500 else "server_error"
    param = code = None
    if isinstance(data, dict) and isinstance(data.get("message"), str):
        message = data["message"]
        error_type = data.get("type") if isinstance(data.get("type"), str) else error_type
        param = data.get("param") if isinstance(data.get("param"), str) else None
        code = data.get("code") if isinstance(data.get("code"), (str, int)) else None
    elif isinstance(data, dict) and "detail" in data:
        message = json.dumps(data["detail"], ensure_ascii=False)[:_UPSTREAM_ERROR_SNIPPET]
    else:
        text = body[:_UPSTREAM_ERROR_SNIPPET].decode("utf-8", "replace").strip()
        message = f"The model server answered {status}" + (f": {text}" if text else ".")
    return error_body(message, type=error_type, param=param, code=code)


def sse_error_event(message: str, code: str) -> bytes:
    """An error as the last event of a stream whose 200 status is already sent (as vLLM does)."""
    return b"data: " + error_body(message, type="server_error", code=code) + b"\n\n"


async def send_body(send: Any, status: int, headers: list[tuple[bytes, bytes]],
                    body: bytes) -> None:
    """A whole response in two ASGI messages."""
    await send({"type": "http.response.start", "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
