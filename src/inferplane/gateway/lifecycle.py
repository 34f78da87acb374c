"""The gateway's life outside the request path: startup and shutdown (the ledger, its writer and
shipper, keys, month-to-date spend, background tasks), the ASGI lifespan, and the probes and
metrics endpoints. GatewayApp (app.py) inherits it."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
from datetime import datetime, timezone
from typing import Any

from inferplane.gateway.keys import RELOAD_INTERVAL_SECONDS
from inferplane.gateway.limits import month_of
from inferplane.gateway.proxy import send_body

log = logging.getLogger("inferplane.gateway")

BUDGET_REFRESH_SECONDS = 30.0
# The pod's preStop hook sends this to the gateway (PID 1 of its container) before SIGTERM.
DRAIN_SIGNAL = signal.SIGUSR1
_JSON = (b"content-type", b"application/json")


class Lifecycle:
    """Startup, shutdown, background work and the endpoints that are not the API."""

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
        try:
            asyncio.get_running_loop().add_signal_handler(DRAIN_SIGNAL, self.start_draining)
        except (RuntimeError, ValueError, NotImplementedError):
            pass  # not the main thread (a test serving it in a thread): call start_draining()

    def start_draining(self) -> None:
        """The pod is going: answer not-ready and close each connection after its response, so
        clients move to other pods before SIGTERM stops this one accepting."""
        if not self.draining:
            log.info("draining: /readyz answers 503 and every response closes its connection")
        self.draining = True

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

    async def _lifespan(self, receive: Any, send: Any) -> None:
        steps = {"lifespan.startup": (self.startup, "gateway startup failed"),
                 "lifespan.shutdown": (self.shutdown, "gateway shutdown lost usage records")}
        while True:
            message = await receive()
            if message["type"] not in steps:
                continue
            step, failure = steps[message["type"]]
            try:
                await step()
            except Exception as error:
                log.exception(failure)
                await send({"type": message["type"] + ".failed", "message": str(error)})
                return
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
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
        if self.draining:
            problems.append("draining: the pod is terminating")
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
