"""The gateway ASGI app: wires auth, limits, the reasoning toggle, forwarding and metering.

The gateway serves only what it can meter: POST /v1/chat/completions and /v1/completions, and
GET /v1/models. Any other path under /v1/ is 404 for everyone, whatever vLLM behind it serves:
the Responses API, for one, runs generations that a later GET fetches (background mode) and
streams without continuous usage, so forwarding it would give away unbilled tokens. The path is
matched after percent-decoding and only the matched, canonical path is sent to vLLM, so an
encoded `?`, CR/LF or non-ASCII byte can neither slip past metering nor into the request line.

A request goes: authenticate -> read the body (bounded) -> check the fields the gateway
uses -> rewrite (reasoning toggle, stream usage options) -> admit against the key's limits ->
forward to vLLM -> meter the response -> commit its usage record -> finish the response ->
settle the limits. /healthz, /readyz and /metrics need no key.

Usage records: every response to an authenticated request gets one, errors included (status =
what the client got; 499 = the client went away: a stream is aborted and billed to its last chunk,
a whole response is read to its end and billed in full; docs/metering.md). Requests refused with 401 get none
(there is no key to bill, and strangers must not be able to grow the ledger); they are counted
in the auth-failure metric. GET requests (/v1/models) are not metered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timezone
from typing import Any

import orjson

from inferplane.catalog import get_model
from inferplane.gateway.access_log import AccessLog
from inferplane.gateway.auth import authenticate, check_model_allowed
from inferplane.gateway.errors import GatewayError
from inferplane.gateway.exchange import (
    ANONYMOUS,
    ClientGone,
    DisconnectWatchers,
    Exchange,
    new_request_id,
)
from inferplane.gateway.keys import ApiKey, KeyStore
from inferplane.gateway.lifecycle import Lifecycle
from inferplane.gateway.limits import Limiter, describe_estimate, estimate_prompt_tokens
from inferplane.gateway.metrics import GatewayMetrics
from inferplane.gateway.proxy import (
    FORWARDED_REQUEST_HEADERS,
    Upstream,
    openai_error_from_upstream,
    send_body,
)
from inferplane.gateway.reasoning import ReasoningDecision, apply_reasoning_toggle
from inferplane.gateway.recording import Recording
from inferplane.gateway.relaying import Relaying
from inferplane.gateway.settings import GatewaySettings, ModelRoute
from inferplane.gateway.upstream import UpstreamResponse
from inferplane.ledger.records import price
from inferplane.gateway.validation import (
    invalid_json_depth,
    parse_json_object,
    redacted,
    request_fields,
    shown,
    unknown_model,
)

log = logging.getLogger("inferplane.gateway")

# What the gateway forwards: path -> method. Both POST paths generate and are metered (streams
# with vLLM's stream_options); everything else, vLLM's LoRA admin endpoints included, is 404.
SERVED_PATHS = {"/v1/chat/completions": "POST", "/v1/completions": "POST", "/v1/models": "GET"}
SERVED_LIST = ", ".join(SERVED_PATHS)
UNKNOWN_MODEL = "(unknown)"  # the model of a record whose request named no served model
# After a client leaves a stream: how long to read what vLLM had already sent once it was told
# to stop (it ends the stream within milliseconds to a couple of seconds on a busy CPU; the
# bound is for a hung one).
UPSTREAM_ABORT_READ_SECONDS = 5.0
_JSON = (b"content-type", b"application/json")


def vllm_request_ids(path: str, request_id: str, prompts: int) -> list[str]:
    """vLLM's ids for a request the gateway sent with `x-request-id: request_id`: vLLM prefixes
    it (chatcmpl-, cmpl-) and numbers a completion's prompts (cmpl-<id>-<i>)."""
    if path == "/v1/chat/completions":
        return [f"chatcmpl-{request_id}"]
    return [f"cmpl-{request_id}", *(f"cmpl-{request_id}-{i}" for i in range(prompts))]


class GatewayApp(Lifecycle, Relaying, Recording):
    """The sidecar as an ASGI application (uvicorn runs it; tests may too). This module is the
    request path (routing, authentication, admission, forwarding); the app's life outside it is
    in lifecycle.py, relaying vLLM's answer in relaying.py, usage records in recording.py."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.routes: dict[str, ModelRoute] = {route.served_name: route for route in settings.models}
        self.max_model_len = {route.served_name: route.max_model_len
                              or get_model(route.catalog_key).max_context
                              for route in settings.models}
        self.metrics = GatewayMetrics()
        self.keys = KeyStore(settings.keys_file) if settings.auth_enabled else None
        self.limiter = Limiter(currency=settings.currency)
        self.upstream = Upstream(settings.upstream_url, settings.upstream_timeout_seconds)
        self.ledger: Any = None
        self.writer: Any = None
        self.shipper: Any = None  # LedgerShipper when a central ledger is configured
        self.draining = False  # set by start_draining() (SIGUSR1, the pod's preStop hook)
        self._tasks: list[asyncio.Task] = []
        self._watchers = DisconnectWatchers()
        self.access_log = AccessLog() if settings.access_log else None

    # --- ASGI -------------------------------------------------------------------------------

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind == "http":
            if self.draining:
                send = _closing(send)
            path = scope["path"]
            if path.startswith("/v1/"):
                await self.proxy(scope, receive, send)
            elif path == "/healthz":
                await send_body(send, 200, [_JSON], b'{"status":"ok"}')
            elif path == "/readyz":
                await self.readyz(send)
            elif path == "/metrics":
                await self.metrics_endpoint(send)
            else:
                error = GatewayError(404, "Not found: the API is under /v1/.", code="not_found")
                await send_body(send, 404, [_JSON], error.body())
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "websocket":
            await self._refuse_websocket(scope, receive, send)

    @staticmethod
    async def _refuse_websocket(scope: dict, receive: Any, send: Any) -> None:
        """Nothing here is served over WebSocket (it could not be metered): the handshake is
        refused, which uvicorn answers with 403. (Its denial-response extension would allow an
        OpenAI-shaped body, but uvicorn's sans-I/O implementation logs that as an error.)"""
        if (await receive())["type"] == "websocket.connect":
            await send({"type": "websocket.close", "code": 1008})

    # --- the request path -------------------------------------------------------------------

    async def proxy(self, scope: dict, receive: Any, send: Any) -> None:
        authorization = client_request_id = content_length = None
        forward: list[tuple[str, str]] = []
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value
            elif name == b"x-request-id":
                client_request_id = value
            elif name == b"content-length":
                content_length = value
            elif name in FORWARDED_REQUEST_HEADERS:
                forward.append((name.decode(), value.decode("latin-1")))
        path = scope["path"]
        served_method = SERVED_PATHS.get(path)
        if served_method is None:  # never logged or recorded raw: it may hold CR/LF or a key
            path = shown(redacted(repr(path)[1:-1]))
        ex = Exchange(new_request_id(client_request_id), scope["method"], path,
                      time.perf_counter(), datetime.now(timezone.utc))
        forward.append(("x-request-id", ex.request_id))
        self.metrics.series.in_flight += 1
        try:
            ex.key = self._authenticate(authorization)
            if served_method is None:
                raise GatewayError(404, f"Not found: this gateway serves {SERVED_LIST}.",
                                   code="not_found", reason="unserved_path")
            if ex.method != served_method:
                raise GatewayError(405, f"Method {shown(ex.method)} is not allowed on {ex.path}; "
                                   f"use {served_method}.", code="method_not_allowed",
                                   reason="method_not_allowed", headers=[
                                       (b"allow", served_method.encode())])
            if ex.method == "POST":
                await self._post(ex, scope, receive, send, forward, content_length)
            else:
                await self._get(ex, scope, send, forward)
        except GatewayError as error:
            await self._refuse(ex, error, send)
        except ClientGone:
            ex.status = 499
        except Exception:
            log.exception("request %s failed inside the gateway", ex.request_id)
            error = GatewayError(500, "The gateway failed on this request; it has been logged "
                                 f"as {ex.request_id}.", type="server_error",
                                 code="internal_error", reason="internal_error")
            if ex.response_started:
                ex.status = 500
            else:
                await self._refuse(ex, error, send)
        finally:
            self.metrics.series.in_flight -= 1
            self._finish(ex)

    def _authenticate(self, authorization: bytes | None) -> ApiKey:
        if self.keys is None:
            return ANONYMOUS
        try:
            return authenticate(authorization, self.keys, time.time())
        except GatewayError as error:
            self.metrics.auth_failures.labels(error.reason).inc()
            raise

    async def _post(self, ex: Exchange, scope: dict, receive: Any, send: Any,
                    forward: list[tuple[str, str]], content_length: bytes | None) -> None:
        body = await self._read_body(receive, content_length)
        payload = parse_json_object(body)
        fields = request_fields(payload, completions=ex.path == "/v1/completions")
        route = self.routes.get(fields.model)
        if route is None:
            # The ledger gets a fixed value, never the client's text (it reaches reports and
            # CSVs); the name asked for goes to the log, escaped and bounded.
            ex.model = UNKNOWN_MODEL
            log.info("request %s asked for an unknown model %s", ex.request_id,
                     shown(ascii(fields.model)))
            raise unknown_model(fields.model, list(self.routes))
        ex.model, ex.route = fields.model, route
        assert ex.key is not None
        check_model_allowed(ex.key, fields.model)
        rewritten = False
        if ex.path == "/v1/chat/completions":
            decision = apply_reasoning_toggle(
                payload, route.reasoning_style, route.reasoning_prompts,
                route.reasoning_default_on, ex.key.entry.reasoning_default)
            if decision is not None:
                rewritten = True
                self._reasoning_headers(ex, decision)
        if fields.stream and not fields.continuous_usage:
            options = payload.get("stream_options") or {}
            payload["stream_options"] = {**options, "include_usage": True,
                                         "continuous_usage_stats": True}
            rewritten = True
        if rewritten:
            try:
                body = orjson.dumps(payload)
            except orjson.JSONEncodeError:  # orjson writes less depth than it reads
                raise invalid_json_depth() from None
        prompt_estimate = estimate_prompt_tokens(len(body))
        cap = fields.max_tokens
        max_model_len = self.max_model_len[route.served_name]
        if cap is None:
            cap = max(0, max_model_len - prompt_estimate)
        completion_cap = cap * fields.generations  # n (or best_of) choices of every prompt
        if self.writer.backlog_full:
            raise GatewayError(503, "Usage metering is backed up; retry shortly.",
                               type="server_error", code="metering_unavailable",
                               reason="ledger_backlog",
                               headers=[(b"retry-after", b"5")])
        if self.shipper is not None and self.shipper.spool_full:
            # Fail closed: past the bound an answer could not be billed reliably (module doc
            # of ledger/shipper.py); other replicas, or this one once shipping resumes, serve.
            raise GatewayError(503, "Usage metering is backed up; retry shortly.",
                               type="server_error", code="metering_unavailable",
                               reason="spool_full", headers=[(b"retry-after", b"5")])
        ex.reservation = self.limiter.admit(
            ex.key, prompt_estimate + completion_cap,
            price(prompt_estimate, completion_cap, route.input_price_per_million,
                  route.output_price_per_million), time.time(),
            lambda: describe_estimate(prompt_estimate, cap, fields.generations,
                                      fields.max_tokens is not None, max_model_len))
        # From here on, a client that goes away from a stream cancels this task: the upstream
        # client then closes its connection, which makes vLLM stop generating (as if the client
        # were its own). A whole (non-streamed) response is not aborted: vLLM reports no usage
        # for an aborted one, so the gateway reads it to its end and bills all of it (499).
        # The watcher is a task of its own, started only once a request outlives a few
        # milliseconds: short answers (and every benchmark of the fast path) never pay for it.
        self._watchers.watch(ex, receive, asyncio.current_task() if fields.stream else None,
                             delayed=not fields.stream)
        try:
            # Only the canonical path goes upstream, never the query string: vLLM takes nothing
            # from it, and whatever a client puts there (a pasted key) stays out of vLLM's logs.
            response = await self.upstream.open("POST", ex.path, forward, body)
            try:
                if fields.stream and response.status == 200 and \
                        response.content_type == "text/event-stream":
                    await self._relay_stream(
                        ex, response, send,
                        keep_chunk_usage=fields.continuous_usage,
                        keep_final_usage=fields.include_usage, choices_per_prompt=fields.n)
                else:
                    await self._relay_body(ex, response, send)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if ex.client_gone and fields.stream and ex.meter is not None and task is not None:
                    task.uncancel()
                    await self._stop_upstream_stream(ex, response, fields.prompts)
                raise
            finally:
                response.release()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not (ex.client_gone and fields.stream) or task is None:
                raise  # the server is shutting down, not the client leaving
            task.uncancel()
            await self._client_left(ex)
        finally:
            self._watchers.stop(ex)

    async def _stop_upstream_stream(self, ex: Exchange, response: UpstreamResponse,
                                    prompts: int) -> None:
        """The client left a stream: stop vLLM and meter all it generated before billing
        (_client_left). vLLM's abort ends the request as "abort" and the stream still carries
        every token generated and the final usage. Without it, half-close: vLLM sees its client
        gone and drops what it had generated but not yet written (with n=4 on a busy CPU, 5 to 9
        tokens where one step is 4)."""
        assert ex.meter is not None
        if await self.upstream.abort(vllm_request_ids(ex.path, ex.request_id, prompts)):
            self.metrics.upstream_stops.labels("abort").inc()
            await response.read_rest(ex.meter.feed, UPSTREAM_ABORT_READ_SECONDS)
        else:
            self.metrics.upstream_stops.labels("half_close").inc()
            await response.read_rest_after_half_close(ex.meter.feed, UPSTREAM_ABORT_READ_SECONDS)

    async def _get(self, ex: Exchange, scope: dict, send: Any,
                   forward: list[tuple[str, str]]) -> None:
        response = await self.upstream.open("GET", ex.path, forward, None)  # no query string
        try:
            data = await self._read_upstream(response)
        finally:
            response.release()
        status = response.status
        if status >= 400:
            data = openai_error_from_upstream(status, data)
            if status >= 500:
                self.metrics.upstream_errors.labels("status_5xx").inc()
        elif ex.path == "/v1/models" and ex.key is not None and ex.key.allowed_models:
            data = self._only_allowed_models(data, ex.key)
        ex.status = status
        content_type = response.header(b"content-type", b"application/json")
        await send_body(send, status, [(b"content-type", content_type),
                                       (b"x-request-id", ex.request_id.encode())], data)
        ex.response_started = ex.response_complete = True

    async def _read_body(self, receive: Any, content_length: bytes | None) -> bytes:
        """The request body, refusing more than max_body_bytes (counted, not trusted from
        Content-Length; a declared length over the limit is refused before reading)."""
        limit = self.settings.max_body_bytes
        if content_length is not None and content_length.isdigit() and \
                int(content_length) > limit:
            raise self._too_large()
        chunks = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise self._too_large()
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _too_large(self) -> GatewayError:
        return GatewayError(413, f"The request body is larger than the gateway's limit of "
                            f"{self.settings.max_body_bytes} bytes.", code="request_too_large",
                            reason="body_too_large")

    @staticmethod
    def _reasoning_headers(ex: Exchange, decision: ReasoningDecision) -> None:
        ex.extra_headers.append((b"x-inferplane-reasoning", b"on" if decision.on else b"off"))
        if decision.system_prompt_moved:
            ex.extra_headers.append((b"x-inferplane-system-prompt", b"moved-to-user"))

    async def _refuse(self, ex: Exchange, error: GatewayError, send: Any) -> None:
        """Answer with the gateway's own error; authenticated requests still get a record."""
        ex.status = error.status
        if error.reason.startswith("upstream"):
            self.metrics.upstream_errors.labels(error.reason).inc()
        elif error.status != 401:
            self.metrics.rejections.labels(error.reason).inc()
        if ex.key is not None and getattr(error, "record", True) and ex.method == "POST":
            await self._record(ex)
        headers = [_JSON, (b"x-request-id", ex.request_id.encode()), *error.headers]
        await send_body(send, error.status, headers, error.body())
        ex.response_started = ex.response_complete = True


def _closing(send: Any) -> Any:
    """`send` with `Connection: close` on the response, while the pod drains: a keep-alive
    client then opens its next connection (to a pod still in the Service) instead of reusing this
    one until shutdown closes it under a request in flight."""
    async def closing_send(message: dict) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []),
                                              (b"connection", b"close")]}
        await send(message)
    return closing_send
