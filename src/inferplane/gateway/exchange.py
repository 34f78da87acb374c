"""One request as it moves through the gateway: its state (Exchange), its id, and the watch
for a client that leaves before its response is complete."""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from inferplane.gateway.keys import ApiKey, KeyEntry
from inferplane.gateway.limits import Reservation
from inferplane.gateway.metering import StreamMeter, Usage
from inferplane.gateway.settings import ModelRoute

WATCH_DISCONNECT_AFTER_SECONDS = 0.02
_SANE_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,64}$")
# A client id holding something that looks like an API key (ours start "ip-", OpenAI's "sk-")
# is not kept: request ids reach logs, the ledger and response headers.
_KEY_IN_ID = re.compile(rb"(?i)(?:^|[^a-z0-9])(?:ip|sk)-")
_PROCESS_PREFIX = os.urandom(7).hex()  # new at every start: ids never repeat across restarts
_REQUEST_COUNTER = itertools.count(1)
ANONYMOUS = ApiKey(
    entry=KeyEntry(id="key_anonymous", sha256="0" * 64, tenant="anonymous",
                   created_at=datetime(2000, 1, 1, tzinfo=timezone.utc)),
    expires_at_epoch=None, allowed_models=frozenset())


class ClientGone(Exception):
    """The client disconnected before its request body arrived: nothing to answer."""


def new_request_id(client_value: bytes | None) -> str:
    """Unique per request: a random per-process prefix and a counter (no system call per
    request). A sane client X-Request-Id is kept in front so logs join up, but never used alone:
    it is the ledger's idempotency key, and a client repeating an id must not make its next
    request a free "replay"."""
    unique = f"{_PROCESS_PREFIX}{next(_REQUEST_COUNTER):010x}"
    if client_value and _SANE_REQUEST_ID.match(client_value) and \
            not _KEY_IN_ID.search(client_value):
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


class DisconnectWatchers:
    """Runs watch_disconnect for the requests that need it: streams at once, other
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
        self._running[ex] = asyncio.ensure_future(watch_disconnect(ex, receive, task))

    def _sweep(self) -> None:
        due = time.perf_counter() - WATCH_DISCONNECT_AFTER_SECONDS
        for ex, (started, receive, task) in list(self._delayed.items()):
            if started <= due:
                del self._delayed[ex]
                self._start(ex, receive, task)
        self._timer = (asyncio.get_running_loop().call_later(WATCH_DISCONNECT_AFTER_SECONDS,
                                                             self._sweep)
                       if self._delayed else None)


async def watch_disconnect(ex: Exchange, receive: Any, task: asyncio.Task | None) -> None:
    """Mark `ex` as left when the client disconnects before its response is complete, and
    cancel `task` (a stream's: vLLM then aborts) when one is given."""
    # After the body, receive() only returns when the client goes (or the response is done).
    while (await receive())["type"] != "http.disconnect":
        pass
    if not ex.response_complete:
        ex.client_gone = True
        if task is not None:
            task.cancel()
