"""LedgerShipper: moves a sidecar's spooled usage records to the central PostgreSQL ledger.

Every gateway commits each record to its own SQLite ledger first (the spool: WAL, on a volume
that survives container restarts), so serving never waits on the network database. A thread
here ships what the spool holds in batches:

    read up to `batch_records` unshipped records -> INSERT ... ON CONFLICT (request_id) DO NOTHING
    in one central transaction -> mark them shipped in the spool

The central write is idempotent by request id, and the spool is marked only after the central
commit, so a crash anywhere in between ships the batch again and the central ledger ignores the
repeats: every spooled record arrives at least once and, by its primary key, at most once.

When the central ledger is unreachable the gateway keeps serving and the spool grows. At
`max_spool_records` unshipped records `spool_full` turns true: the gateway then refuses new
metered requests (503, and /readyz says not ready) until shipping catches up -- an unmetered
response is revenue given away, and an unbounded spool would fill the volume and then fail
requests mid-response instead of before they start. The bound is soft: requests admitted just
before it are still spooled.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Callable

from inferplane.ledger import Ledger, LedgerError, LedgerRecordError, open_ledger
from inferplane.ledger.postgres import redact_url
from inferplane.ledger.sqlite import REFUSED, SQLiteLedger

log = logging.getLogger("inferplane.shipper")


class LedgerShipper:
    """Ships a SQLite spool to a central ledger on a background thread; drains on request."""

    def __init__(self, spool: SQLiteLedger, central_url: str, *, batch_records: int = 500,
                 interval_seconds: float = 1.0, retry_initial_seconds: float = 0.2,
                 retry_max_seconds: float = 15.0, max_spool_records: int = 200_000,
                 retention_seconds: float = 24 * 3600.0,
                 spooled_count: Callable[[], int] = lambda: 0,
                 on_shipped: Callable[[int, float], None] | None = None,
                 on_failure: Callable[[BaseException], None] | None = None) -> None:
        if batch_records < 1 or max_spool_records < 1:
            raise ValueError("batch_records and max_spool_records must be at least 1")
        self.spool = spool
        self.central_url = central_url
        self.display_url = redact_url(central_url)
        self.batch_records = batch_records
        self.interval_seconds = interval_seconds
        self.retry_initial_seconds = retry_initial_seconds
        self.retry_max_seconds = retry_max_seconds
        self.max_spool_records = max_spool_records
        self.retention_seconds = retention_seconds
        self.on_shipped = on_shipped
        self.on_failure = on_failure
        # Records the writer has committed to the spool so far (its committed_total): lets
        # `spool_full` count records spooled since the last depth query without a query.
        self._spooled_count = spooled_count
        self.shipped_total = 0
        self.failures_total = 0
        self.refused_total = 0
        self.last_error: BaseException | None = None
        self.depth = 0  # unshipped records at the last spool query
        self.oldest_spooled_at: datetime | None = None
        self._spooled_at_refresh = 0
        self._central: Ledger | None = None
        self._lock = threading.Lock()  # one shipping step at a time (thread, drain, spend reads)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_prune = 0.0

    # --- state the gateway reads ------------------------------------------------------------

    @property
    def spool_full(self) -> bool:
        """True when the spool holds `max_spool_records` unshipped records (estimated between
        spool queries from the writer's commits: never under-counted)."""
        spooled_since = self._spooled_count() - self._spooled_at_refresh
        return self.depth + max(0, spooled_since) >= self.max_spool_records

    def oldest_unshipped_age_seconds(self) -> float:
        if self.oldest_spooled_at is None:
            return 0.0
        return max(0.0, (datetime.now(timezone.utc) - self.oldest_spooled_at).total_seconds())

    def refresh_state(self) -> None:
        """Query the spool's depth and oldest unshipped record (cheap: a partial index)."""
        spooled = self._spooled_count()
        depth, oldest, refused = self.spool.spool_state()
        self.depth, self.oldest_spooled_at, self.refused_total = depth, oldest, refused
        self._spooled_at_refresh = spooled

    # --- shipping ---------------------------------------------------------------------------

    def _central_ledger(self) -> Ledger:
        if self._central is None:
            # Opening migrates the central schema (versioned, under an advisory lock), so the
            # first replica to reach a new database creates its tables.
            self._central = open_ledger(self.central_url)
        return self._central

    def ship_once(self) -> int:
        """Ship one batch; return how many records left the spool (0: nothing waits).

        Raises LedgerError when the central ledger cannot take the batch now (nothing marked).
        """
        with self._lock:
            batch = self.spool.unshipped(self.batch_records)
            if not batch:
                return 0
            central = self._central_ledger()
            started = time.perf_counter()
            refused: list[str] = []
            try:
                central.write(batch)
            except LedgerRecordError:
                # One bad record must not hold the spool back: find it, keep it in the spool
                # marked refused (alerted on), ship the rest.
                for record in batch:
                    try:
                        central.write([record])
                    except LedgerRecordError as error:
                        log.error("central ledger refused usage record %s for good: %s",
                                  record.request_id, error)
                        refused.append(record.request_id)
            shipped = [record.request_id for record in batch if record.request_id not in refused]
            self.spool.mark_shipped(shipped)
            self.spool.mark_shipped(refused, REFUSED)
            seconds = time.perf_counter() - started
            self.shipped_total += len(shipped)
            self.refresh_state()
        if self.on_shipped is not None:
            self.on_shipped(len(shipped), seconds)
        return len(batch)

    def _failed(self, error: BaseException) -> None:
        self.failures_total += 1
        if self.failures_total == 1 or type(error) is not type(self.last_error):
            log.warning("shipping usage records to %s failed (they stay spooled and are "
                        "retried): %s", self.display_url, error)
        self.last_error = error
        if self.on_failure is not None:
            try:
                self.on_failure(error)
            except Exception:  # noqa: BLE001 - a metrics hook must not stop shipping
                log.exception("shipper on_failure callback raised")

    def _prune_if_due(self) -> None:
        now = time.monotonic()
        if now < self._next_prune:
            return
        self._next_prune = now + 60.0
        cutoff = datetime.now(timezone.utc) - timedelta(seconds=self.retention_seconds)
        try:
            self.spool.prune_shipped(cutoff)
        except LedgerError as error:
            log.warning("could not prune shipped records from the spool: %s", error)

    def start(self) -> None:
        """Start shipping in the background (at once: a restarted container ships what its
        predecessor spooled)."""
        self._thread = threading.Thread(target=self._run, name="inferplane-ledger-shipper",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        delay = self.retry_initial_seconds
        while not self._stop.is_set():
            try:
                shipped = self.ship_once()
                if shipped == 0:
                    self.refresh_state()
                    self._prune_if_due()
            except Exception as error:  # noqa: BLE001 - the shipper must outlive any failure
                self._failed(error)
                try:
                    self.refresh_state()
                except LedgerError:
                    pass
                self._stop.wait(delay)
                delay = min(delay * 2, self.retry_max_seconds)
                continue
            delay = self.retry_initial_seconds
            if shipped < self.batch_records:  # caught up: ship again after the interval
                self._stop.wait(self.interval_seconds)

    def stop(self) -> None:
        """Stop the background thread (after its current batch)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def drain(self, timeout_seconds: float) -> int:
        """Stop the thread, then ship until the spool is empty or `timeout_seconds` pass;
        returns how many records are still unshipped (they stay in the spool)."""
        self.stop()
        deadline = time.monotonic() + timeout_seconds
        delay = self.retry_initial_seconds
        while True:
            try:
                if self.ship_once() == 0:
                    break
                delay = self.retry_initial_seconds
            except Exception as error:  # noqa: BLE001
                self._failed(error)
                if time.monotonic() + delay > deadline:
                    break
                time.sleep(delay)
                delay = min(delay * 2, self.retry_max_seconds)
            if time.monotonic() > deadline:
                break
        try:
            self.refresh_state()
        except LedgerError:
            pass
        return self.depth

    def month_to_date_spend(self, since: datetime | date, currency: str) -> dict[str, Decimal]:
        """Cost per key since `since` in `currency`: the central ledger's (every replica's)
        plus what this spool has not shipped yet. Exact: no batch ships between the reads."""
        with self._lock:
            rows = self._central_ledger().summary(("key_id",), since)
            spent = {row.group["key_id"]: row.cost for row in rows if row.currency == currency}
            for (key_id, row_currency), cost in self.spool.unshipped_cost_by_key(since).items():
                if row_currency == currency:
                    spent[key_id] = spent.get(key_id, Decimal(0)) + cost
        return spent

    def close(self) -> None:
        """Stop shipping and close the central connections (the spool is the caller's)."""
        self.stop()
        if self._central is not None:
            self._central.close()
            self._central = None
