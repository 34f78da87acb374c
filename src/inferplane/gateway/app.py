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
what the client got; 499 = the client went away mid-stream). Requests refused with 401 get none
(there is no key to bill, and strangers must not be able to grow the ledger); they are counted
in the auth-failure metric. GET requests (/v1/models) are not metered.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import orjson

from inferplane.catalog import get_model
from inferplane.gateway.access_log import AccessLog
from inferplane.gateway.auth import authenticate, check_model_allowed
from inferplane.gateway.errors import GatewayError
from inferplane.gateway.keys import RELOAD_INTERVAL_SECONDS, ApiKey, KeyEntry, KeyStore
from inferplane.gateway.limits import Limiter, Reservation, estimate_prompt_tokens, month_of
from inferplane.gateway.metering import StreamMeter, Usage, usage_from_body
from inferplane.gateway.metrics import GatewayMetrics
from inferplane.gateway.proxy import (
    FORWARDED_REQUEST_HEADERS,
    Upstream,
    openai_error_from_upstream,
    send_body,
    sse_error_event,
    upstream_timeout,
    upstream_unreachable,
)
from inferplane.gateway.reasoning import ReasoningDecision, apply_reasoning_toggle
from inferplane.ledger.records import UsageRecord, price
from inferplane.gateway.settings import GatewaySettings, ModelRoute
from inferplane.gateway.upstream import UpstreamError, UpstreamResponse, UpstreamTimeout
from inferplane.gateway.validation import (
    parse_json_object,
    request_fields,
    shown,
    unknown_model,
)

log = logging.getLogger("inferplane.gateway")

# What the gateway forwards: path -> method. Both POST paths generate and are metered (streams
# with vLLM's stream_options); everything else, vLLM's LoRA admin endpoints included, is 404.
SERVED_PATHS = {"/v1/chat/completions": "POST", "/v1/completions": "POST", "/v1/models": "GET"}
SERVED_LIST = ", ".join(SERVED_PATHS)
BUDGET_REFRESH_SECONDS = 30.0
WATCH_DISCONNECT_AFTER_SECONDS = 0.02
_SANE_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,64}$")
_PROCESS_PREFIX = os.urandom(7).hex()  # new at every start: ids never repeat across restarts
_REQUEST_COUNTER = itertools.count(1)
_JSON = (b"content-type", b"application/json")
_ZERO_USAGE = Usage()
_ZERO = Decimal(0)
_ANONYMOUS = ApiKey(
    entry=KeyEntry(id="key_anonymous", sha256="0" * 64, tenant="anonymous",
                   created_at=datetime(2000, 1, 1, tzinfo=timezone.utc)),
    expires_at_epoch=None, allowed_models=frozenset())


class _DisconnectWatchers:
    """Runs GatewayApp.watch_disconnect for the requests that need it: streams at once, other
    requests once they have lasted WATCH_DISCONNECT_AFTER_SECONDS. The delayed ones are started
    by one sweep (every that many seconds, while any waits), not by a timer per request."""

    __slots__ = ("_delayed", "_running", "_timer")

    def __init__(self) -> None:
        # ex -> (monotonic start, receive, task to cancel); ex -> its running watcher task
        self._delayed: dict[Exchange, tuple[float, Any, asyncio.Task | None]] = {}
        self._running: dict[Exchange, asyncio.Task] = {}
        self._timer: asyncio.TimerHandle | None = None

    def watch(self, ex: "Exchange", receive: Any, task: asyncio.Task | None,
              delayed: bool) -> None:
        if not delayed:
            self._start(ex, receive, task)
            return
        self._delayed[ex] = (ex.started, receive, task)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(
                WATCH_DISCONNECT_AFTER_SECONDS, self._sweep)

    def stop(self, ex: "Exchange") -> None:
        if self._delayed.pop(ex, None) is None:
            task = self._running.pop(ex, None)
            if task is not None:
                task.cancel()

    def _start(self, ex: "Exchange", receive: Any, task: asyncio.Task | None) -> None:
        self._running[ex] = asyncio.ensure_future(GatewayApp.watch_disconnect(ex, receive, task))

    def _sweep(self) -> None:
        due = time.perf_counter() - WATCH_DISCONNECT_AFTER_SECONDS
        for ex, (started, receive, task) in list(self._delayed.items()):
            if started <= due:
                del self._delayed[ex]
                self._start(ex, receive, task)
        self._timer = (asyncio.get_running_loop().call_later(WATCH_DISCONNECT_AFTER_SECONDS,
                                                             self._sweep)
                       if self._delayed else None)


class ClientGone(Exception):
    """The client disconnected before its request body arrived: nothing to answer."""


def new_request_id(client_value: bytes | None) -> str:
    """Unique per request: a random per-process prefix and a counter (no system call per
    request). A sane client X-Request-Id is kept in front so logs join up, but never used alone:
    it is the ledger's idempotency key, and a client repeating an id must not make its next
    request a free "replay"."""
    unique = f"{_PROCESS_PREFIX}{next(_REQUEST_COUNTER):010x}"
    if client_value and _SANE_REQUEST_ID.match(client_value):
        return f"{client_value.decode()}.{unique}"
    return "req_" + unique


@dataclass(eq=False, slots=True)
class Exchange:
    """State of one request as it moves through the pipeline (hashed by identity)."""

    request_id: str
    method: str
    path: str
    started: float  # perf_counter()
    created_at: datetime
    key: ApiKey | None = None
    model: str = ""
    route: ModelRoute | None = None
    streamed: bool = False
    status: int = 0
    usage: Usage | None = None
    ttft_seconds: float | None = None
    reservation: Reservation | None = None
    response_started: bool = False
    response_complete: bool = False
    client_gone: bool = False
    meter: StreamMeter | None = None
    extra_headers: list[tuple[bytes, bytes]] = field(default_factory=list)

    @property
    def model_label(self) -> str:
        return self.model if self.route is not None else "unknown"


class GatewayApp:
    """The sidecar as an ASGI application (uvicorn runs it; tests may too)."""

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
        self._tasks: list[asyncio.Task] = []
        self._watchers = _DisconnectWatchers()
        self.access_log = AccessLog() if settings.access_log else None

    # --- lifecycle --------------------------------------------------------------------------

    async def startup(self) -> None:
        """Open the ledger, load keys and month-to-date spend, connect to vLLM."""
        from inferplane.ledger import AsyncLedgerWriter, open_ledger

        self.ledger = await asyncio.to_thread(open_ledger, self.settings.ledger_url)
        failures = self.metrics.ledger_commit_failures
        self.writer = AsyncLedgerWriter(self.ledger, on_failure=lambda error: failures.inc())
        self.shipper = self._make_shipper()
        if self.keys is not None:
            self.keys.on_reload.append(lambda keys: self.metrics.keys_loaded.set(len(keys)))
            self.keys.reload_if_changed()
            if not self.keys.loaded:
                log.warning("no keys loaded from %s: every request gets 401 until it exists",
                            self.keys.path)
            self._tasks.append(asyncio.create_task(self._watch_keys()))
        await self.refresh_spend()
        if self.shipper is not None:
            await asyncio.to_thread(self.shipper.refresh_state)
            self.shipper.start()  # ships what a previous container left in the spool, at once
        if self._others_spend():
            self._tasks.append(asyncio.create_task(self._refresh_spend_forever()))
        if self.access_log is not None:
            self._tasks.append(asyncio.create_task(self._flush_access_log_forever()))
        await self.upstream.start()

    async def shutdown(self) -> None:
        """Stop background work, then commit every record still queued."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await self.upstream.close()
        if self.writer is not None:
            try:
                await self.writer.aclose()
            finally:
                try:
                    await self._drain_spool()
                finally:
                    self.ledger.close()

    def _make_shipper(self) -> Any:
        """The spool's shipper to the central ledger, if one is configured (not started)."""
        from inferplane.ledger.sqlite import SQLiteLedger
        from inferplane.ledger.shipper import LedgerShipper

        settings = self.settings
        central_url = settings.resolved_central_ledger_url()
        if not central_url:
            return None
        if not isinstance(self.ledger, SQLiteLedger):
            raise ValueError("a central ledger is configured, so ledger_url must be the local "
                             "SQLite spool (sqlite:///...), not another central database")
        metrics = self.metrics
        metrics.spool_max_records.set(settings.spool_max_records)

        def shipped(count: int, seconds: float) -> None:
            metrics.shipped_records.inc(count)
            metrics.ship_latency.observe(seconds)

        writer = self.writer
        return LedgerShipper(
            self.ledger, central_url, batch_records=settings.ship_batch_records,
            interval_seconds=settings.ship_interval_seconds,
            retry_max_seconds=settings.ship_retry_max_seconds,
            max_spool_records=settings.spool_max_records,
            retention_seconds=settings.spool_retention_hours * 3600,
            spooled_count=lambda: writer.committed_total,
            on_shipped=shipped, on_failure=lambda error: metrics.ship_failures.inc())

    async def _drain_spool(self) -> None:
        """Ship what the spool still holds, for at most ship_drain_seconds (the pod's grace)."""
        if self.shipper is None:
            return
        try:
            left = await asyncio.to_thread(self.shipper.drain, self.settings.ship_drain_seconds)
            if left:
                log.warning("%d usage records are still in the spool %s (central ledger: %s); "
                            "they ship when a gateway starts on this volume again", left,
                            self.settings.ledger_url, self.shipper.last_error)
        finally:
            await asyncio.to_thread(self.shipper.close)

    def _others_spend(self) -> bool:
        """Whether other gateways add to the spend this one reads: replicas shipping to a central
        ledger, or sharing a PostgreSQL one. Alone on its SQLite file, the gateway has read the
        month at startup and settles every cost it commits since, so re-reading is only cost:
        the month's summary took 2.2 s of CPU (GIL held, in SQLite's Python Decimal sum) per
        million records here, every BUDGET_REFRESH_SECONDS, and kept the WAL from restarting
        meanwhile (transient WAL peaks of 80-115 MB in a 10-minute soak)."""
        from inferplane.ledger.sqlite import SQLiteLedger

        return self.shipper is not None or not isinstance(self.ledger, SQLiteLedger)

    async def _watch_keys(self) -> None:
        assert self.keys is not None
        failures_seen = 0
        while True:
            await asyncio.sleep(RELOAD_INTERVAL_SECONDS)
            try:
                self.keys.reload_if_changed()
            except Exception:  # the watcher must outlive any surprise
                log.exception("keys reload failed")
            if self.keys.reload_failures != failures_seen:
                self.metrics.key_reload_failures.inc(self.keys.reload_failures - failures_seen)
                failures_seen = self.keys.reload_failures

    async def refresh_spend(self) -> None:
        """Month-to-date cost per key from the ledger, for the monthly budgets."""
        now = datetime.now(timezone.utc)
        month_start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        self.limiter.begin_spend_refresh()
        spent = None
        if self.shipper is not None:
            # Every replica's spend: the central ledger plus this spool's unshipped records.
            from inferplane.ledger import LedgerError

            try:
                spent = await asyncio.to_thread(self.shipper.month_to_date_spend, month_start,
                                                self.settings.currency)
            except LedgerError as error:
                log.warning("central ledger unavailable for month-to-date spend (%s); using "
                            "this replica's own records", error)
        if spent is None:
            rows = await asyncio.to_thread(self.ledger.summary, ("key_id",), month_start)
            spent = {row.group["key_id"]: row.cost for row in rows
                     if row.currency == self.settings.currency}
        self.limiter.finish_spend_refresh(month_start.strftime("%Y-%m"), spent)

    async def _flush_access_log_forever(self) -> None:
        try:
            while True:
                await asyncio.sleep(1.0)
                self.access_log.flush()
        finally:
            self.access_log.flush()

    async def _refresh_spend_forever(self) -> None:
        while True:
            await asyncio.sleep(BUDGET_REFRESH_SECONDS)
            try:
                await self.refresh_spend()
            except Exception as error:  # keep the last known spend; try again later
                log.warning("could not read month-to-date spend from the ledger: %s", error)

    # --- ASGI -------------------------------------------------------------------------------

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind == "http":
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

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as error:
                    log.exception("gateway startup failed")
                    await send({"type": "lifespan.startup.failed", "message": str(error)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                try:
                    await self.shutdown()
                except Exception as error:
                    log.exception("gateway shutdown lost usage records")
                    await send({"type": "lifespan.shutdown.failed", "message": str(error)})
                    return
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def metrics_endpoint(self, send: Any) -> None:
        """Prometheus exposition: the gateway's series (budgets and upstream readiness brought up
        to date now), followed by vLLM's."""
        healthy, upstream = await asyncio.gather(self.upstream.healthy(), self.upstream.metrics())
        self.metrics.upstream_ready.set(1 if healthy else 0)
        if self.shipper is not None:
            from inferplane.ledger import LedgerError

            try:
                await asyncio.to_thread(self.shipper.refresh_state)
            except LedgerError as error:
                log.warning("could not read the spool's state: %s", error)
            self.metrics.spool_records.set(self.shipper.depth)
            self.metrics.spool_oldest_age.set(self.shipper.oldest_unshipped_age_seconds())
            self.metrics.spool_refused_records.set(self.shipper.refused_total)
        if self.keys is not None:
            month = month_of(time.time())
            for key in self.keys.keys():
                budget = key.entry.monthly_budget
                if budget is not None:
                    spent = self.limiter.spent(key.key_id, month)
                    ratio = float(spent / budget) if budget else (1.0 if spent else 0.0)
                    self.metrics.budget_spent_ratio.labels(key.key_id).set(ratio)
        await send_body(send, 200, [(b"content-type", self.metrics.content_type.encode())],
                        self.metrics.render(upstream))

    async def readyz(self, send: Any) -> None:
        problems = []
        if self.keys is not None and not self.keys.loaded:
            problems.append(f"no keys loaded from {self.keys.path}")
        if self.writer is None:
            problems.append("ledger not open")
        elif self.writer.backlog_full:
            problems.append("usage ledger backlog full")
        if self.shipper is not None and self.shipper.spool_full:
            problems.append("usage spool full: the central ledger is not taking records")
        upstream_ready = await self.upstream.healthy()
        self.metrics.upstream_ready.set(1 if upstream_ready else 0)
        if not upstream_ready:
            problems.append("model server not ready")
        if problems:
            body = json.dumps({"status": "not ready", "problems": problems}).encode()
            await send_body(send, 503, [_JSON], body)
        else:
            await send_body(send, 200, [_JSON], b'{"status":"ready"}')

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
        if served_method is None:  # never logged or recorded raw: it may hold CR/LF
            path = shown(repr(path)[1:-1])
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
            return _ANONYMOUS
        try:
            return authenticate(authorization, self.keys, time.time())
        except GatewayError as error:
            self.metrics.auth_failures.labels(error.reason).inc()
            raise

    async def _post(self, ex: Exchange, scope: dict, receive: Any, send: Any,
                    forward: list[tuple[str, str]], content_length: bytes | None) -> None:
        body = await self._read_body(receive, content_length)
        payload = parse_json_object(body)
        fields = request_fields(payload)
        route = self.routes.get(fields.model)
        if route is None:
            ex.model = shown(fields.model)  # recorded as asked, but bounded in length
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
            body = orjson.dumps(payload)
        prompt_estimate = estimate_prompt_tokens(len(body))
        cap = fields.max_tokens
        if cap is None:
            cap = max(0, self.max_model_len[route.served_name] - prompt_estimate)
        completion_cap = cap * fields.choices
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
                  route.output_price_per_million), time.time())
        path_qs = ex.path + ("?" + scope["query_string"].decode("latin-1")
                             if scope["query_string"] else "")
        # From here on, a client that goes away cancels this task: the upstream client then
        # closes its connection, which makes vLLM stop generating (as if the client were its own).
        # The watcher is a task of its own, started only once a request outlives a few
        # milliseconds: short answers (and every benchmark of the fast path) never pay for it.
        self._watchers.watch(ex, receive, asyncio.current_task(), delayed=not fields.stream)
        try:
            response = await self.upstream.open("POST", path_qs, forward, body)
            try:
                if fields.stream and response.status == 200 and \
                        response.content_type == "text/event-stream":
                    await self._relay_stream(
                        ex, response, send,
                        keep_chunk_usage=fields.continuous_usage,
                        keep_final_usage=fields.include_usage)
                else:
                    await self._relay_body(ex, response, send)
            finally:
                response.release()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not ex.client_gone or task is None:
                raise  # the server is shutting down, not the client leaving
            task.uncancel()
            await self._client_left(ex)
        finally:
            self._watchers.stop(ex)

    async def _get(self, ex: Exchange, scope: dict, send: Any,
                   forward: list[tuple[str, str]]) -> None:
        path_qs = ex.path + ("?" + scope["query_string"].decode("latin-1")
                             if scope["query_string"] else "")
        response = await self.upstream.open("GET", path_qs, forward, None)
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

    def _response_headers(self, ex: Exchange, content_type: bytes) -> list[tuple[bytes, bytes]]:
        return [(b"content-type", content_type), (b"x-request-id", ex.request_id.encode()),
                *ex.extra_headers]

    # --- relaying responses -----------------------------------------------------------------

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
        ex.status = status
        if not await self._record(ex):
            raise self._unmetered()
        ex.response_started = ex.response_complete = True
        await send_body(send, status, self._response_headers(ex, content_type), data)

    async def _relay_stream(self, ex: Exchange, response: UpstreamResponse, send: Any,
                            keep_chunk_usage: bool, keep_final_usage: bool) -> None:
        """Forward SSE events as they arrive; the final `[DONE]` only after the record commits."""
        ex.streamed = True
        ex.meter = meter = StreamMeter(keep_chunk_usage, keep_final_usage)
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

    @staticmethod
    async def watch_disconnect(ex: Exchange, receive: Any, task: asyncio.Task | None) -> None:
        """Cancel `task` when the client disconnects before its response is complete."""
        # After the body, receive() only returns when the client goes (or the response is done).
        while (await receive())["type"] != "http.disconnect":
            pass
        if not ex.response_complete and task is not None:
            ex.client_gone = True
            task.cancel()

    async def _client_left(self, ex: Exchange) -> None:
        """Bill a request whose client went away: what the stream had generated by then (vLLM's
        continuous usage of the last chunk seen), nothing for an unfinished whole response."""
        ex.status = 499
        if ex.meter is not None and ex.usage is None:
            ex.usage = ex.meter.usage()
        try:
            await self._record(ex)
        except asyncio.CancelledError:  # cancelled again: the writer still commits the record
            pass

    # --- metering and the end of every request -----------------------------------------------

    def _make_record(self, ex: Exchange) -> UsageRecord:
        usage = ex.usage or _ZERO_USAGE
        route = ex.route
        input_price = route.input_price_per_million if route else _ZERO
        output_price = route.output_price_per_million if route else _ZERO
        key = ex.key or _ANONYMOUS
        return UsageRecord(
            request_id=ex.request_id, key_id=key.key_id, tenant=key.tenant, model=ex.model,
            endpoint=ex.path, created_at=ex.created_at, prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens, cached_tokens=usage.cached_tokens,
            input_price_per_million=input_price, output_price_per_million=output_price,
            cost=price(usage.prompt_tokens, usage.completion_tokens, input_price, output_price),
            currency=self.settings.currency, status=ex.status, streamed=ex.streamed,
            latency_ms=(time.perf_counter() - ex.started) * 1000.0,
            ttft_ms=None if ex.ttft_seconds is None else ex.ttft_seconds * 1000.0,
            reasoning_tokens=usage.reasoning_tokens,
        )

    async def _record(self, ex: Exchange) -> bool:
        """Commit the usage record of `ex`. False when it was not kept (the response must then
        not complete); True when committed, or queued for retry while the database is down."""
        from inferplane.ledger import LedgerUnavailableError

        record = self._make_record(ex)
        ok = True
        started = time.perf_counter()
        try:
            await self.writer.write(record)
            self.metrics.observe_ledger_write(time.perf_counter() - started)
        except LedgerUnavailableError as error:
            # Still queued and retried by the writer: deliver, but say so.
            self.metrics.ledger_write_failures.inc()
            log.warning("usage record %s not yet committed (queued for retry): %s",
                        ex.request_id, error)
        except Exception as error:
            self.metrics.ledger_write_failures.inc()
            log.error("usage record %s was not kept: %s", ex.request_id, error)
            ok = False
        if ok:
            self._settle(ex, record.cost)
            if ex.route is not None:
                self.metrics.observe_usage(ex.model, record.key_id, record.prompt_tokens,
                                           record.completion_tokens, record.cost,
                                           record.currency)
        return ok

    def _settle(self, ex: Exchange, cost: Decimal) -> None:
        if ex.reservation is not None:
            usage = ex.usage or _ZERO_USAGE
            self.limiter.settle(ex.reservation, usage.total_tokens, cost)

    @staticmethod
    def _unmetered() -> GatewayError:
        error = GatewayError(503, "Usage metering is unavailable; the response was withheld. "
                             "Retry shortly.", type="server_error", code="metering_unavailable",
                             reason="ledger_unavailable", headers=[(b"retry-after", b"5")])
        error.record = False  # type: ignore[attr-defined]
        return error

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

    def _finish(self, ex: Exchange) -> None:
        if ex.reservation is not None and not ex.reservation.settled:
            # The record was not kept: release the reservation, charge nothing locally.
            self.limiter.settle(ex.reservation, 0, _ZERO)
        elapsed = time.perf_counter() - ex.started
        model = ex.model_label
        key_id = ex.key.key_id if ex.key is not None else "none"
        self.metrics.observe_request(
            model, key_id, ex.status, elapsed if ex.route is not None else None,
            ex.ttft_seconds if ex.streamed else None)
        if self.access_log is not None:
            self.access_log.record(ex.request_id, ex.method, ex.path, ex.status, key_id, model,
                                   elapsed)
