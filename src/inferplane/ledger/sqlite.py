"""The SQLite ledger: the default, one file next to the gateway (WAL mode).

Durability: WAL with `synchronous=NORMAL`. A commit appends the transaction to the WAL file
with write() before COMMIT returns; only the fsync is deferred to checkpoints. Data that has
reached the kernel survives the death of the process (SIGKILL, OOM kill, a crash), which is
the failure this sidecar must survive. What NORMAL gives up is the last few commits on a power
loss or kernel crash (the database stays consistent). Pass `?synchronous=full` in the URL to
fsync every commit as well; with group commit that is one fsync per batch, not per request.

`write_inline()` is AsyncLedgerWriter's path on the event loop (a lone record, or the records
of one loop turn): the same WAL commit on the caller's thread through a third connection that never waits for a lock (busy timeout 0) and
never checkpoints (a checkpoint writes and fsyncs pages: `copy_back()` then `checkpoint()` do it
on the writer's thread instead, when `checkpoint_due`).
"""

from __future__ import annotations

import decimal
import sqlite3
import threading
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Sequence

from inferplane.ledger.base import (
    OUTCOME_SQL,
    RECORD_FIELDS,
    REFUSED_SQL,
    Ledger,
    LedgerError,
    LedgerNotFoundError,
    LedgerRecordError,
    LedgerUnavailableError,
    UsageSummaryRow,
    check_group_by,
    checked_rows,
    iso_utc,
    to_utc,
)
from inferplane.ledger.migrations import SQLITE_MIGRATIONS, pending_migrations
from inferplane.ledger.records import UsageRecord

SYNCHRONOUS_MODES = ("NORMAL", "FULL", "EXTRA")
# Values of the spool's shipped-marker (migration 2): waiting is 0.
SHIPPED = 1
REFUSED = -1

_COLUMNS = ", ".join(RECORD_FIELDS)
_INSERT = (f"INSERT INTO usage_records ({_COLUMNS}) VALUES ({', '.join('?' for _ in RECORD_FIELDS)}) "
           "ON CONFLICT (request_id) DO NOTHING")
_GROUP_EXPRESSIONS = {
    "key_id": "key_id",
    "tenant": "tenant",
    "model": "model",
    "endpoint": "endpoint",
    "day": "substr(created_at, 1, 10)",  # created_at is UTC ISO-8601 text
    "month": "substr(created_at, 1, 7)",
    "input_price_per_million": "input_price_per_million",  # TEXT, as recorded
    "output_price_per_million": "output_price_per_million",
    "outcome": OUTCOME_SQL,
    "status": "status",
}
# Inline commits, or records, between two checkpoints, whichever comes first. A lone record's
# commit writes ~4 WAL pages (16 KB); in the soak's group commits a record costs ~7 KB. Either
# cap comes at ~16 MB of WAL (high-water 22 MB in bench/soak.py; with 10,000 records it passed
# 64 MB when a reader postponed one restart). Each checkpoint slows the commits beside it:
# with wrk at concurrency 1 here, a checkpoint every 200 commits gave the gateway a p99 of
# 2.5-2.8 ms, every 1,000 2.2-2.4 ms (1.2-1.3 ms with none at all; direct 0.5 ms).
INLINE_COMMITS_PER_CHECKPOINT = 1000
INLINE_RECORDS_PER_CHECKPOINT = 2_000
WAL_SIZE_LIMIT_BYTES = 64 * 1024 * 1024
# How long a checkpoint waits for readers before leaving the WAL's restart to the next one.
CHECKPOINT_WAIT_MS = 100

# Errors that say "this data can never go in" rather than "the database is not writable now".
_RECORD_ERRORS = (sqlite3.IntegrityError, sqlite3.InterfaceError, sqlite3.DataError,
                  sqlite3.ProgrammingError)

# Sums are exact or fail: a context wide enough for any ledger, trapping any rounding.
_EXACT = decimal.Context(prec=200, traps=[decimal.Inexact, decimal.Overflow, decimal.InvalidOperation])


class _DecimalSum:
    """SQL aggregate `decimal_sum(text)`: SQLite's own sum() would add the texts as floats."""

    def __init__(self) -> None:
        self.total = Decimal(0)

    def step(self, value: str) -> None:
        self.total = _EXACT.add(self.total, Decimal(value))

    def finalize(self) -> str:
        return format(self.total, "f")


def _encode(record: UsageRecord) -> tuple[object, ...]:
    return (
        record.request_id, record.key_id, record.tenant, record.model, record.endpoint,
        iso_utc(record.created_at),
        record.prompt_tokens, record.completion_tokens, record.cached_tokens,
        format(record.input_price_per_million, "f"), format(record.output_price_per_million, "f"),
        format(record.cost, "f"),
        record.currency, record.status, int(record.streamed),
        float(record.latency_ms), None if record.ttft_ms is None else float(record.ttft_ms),
        record.reasoning_tokens,
    )


def _decode(row: sqlite3.Row | tuple) -> UsageRecord:
    (request_id, key_id, tenant, model, endpoint, created_at, prompt_tokens, completion_tokens,
     cached_tokens, input_price, output_price, cost, currency, status, streamed, latency_ms,
     ttft_ms, reasoning_tokens) = row
    return UsageRecord(
        request_id=request_id, key_id=key_id, tenant=tenant, model=model, endpoint=endpoint,
        created_at=datetime.fromisoformat(created_at),
        prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, cached_tokens=cached_tokens,
        input_price_per_million=Decimal(input_price), output_price_per_million=Decimal(output_price),
        cost=Decimal(cost), currency=currency, status=status, streamed=bool(streamed),
        latency_ms=latency_ms, ttft_ms=ttft_ms, reasoning_tokens=reasoning_tokens,
    )


def _where(since: datetime | date | None, until: datetime | date | None,
           key_id: str | None, served_only: bool = False) -> tuple[str, list[object]]:
    clauses: list[str] = [f"NOT {REFUSED_SQL}"] if served_only else []
    params: list[object] = []
    if since is not None:
        clauses.append("created_at >= ?")
        params.append(iso_utc(to_utc(since)))  # type: ignore[arg-type]
    if until is not None:
        clauses.append("created_at < ?")
        params.append(iso_utc(to_utc(until)))  # type: ignore[arg-type]
    if key_id is not None:
        clauses.append("key_id = ?")
        params.append(key_id)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


class SQLiteLedger(Ledger):
    """A ledger in one SQLite file: a write connection and a read connection, each under a lock.

    In the gateway only AsyncLedgerWriter's thread writes, so the write lock is uncontended;
    it exists so that tests and tools may call `write()` from any thread.
    """

    def __init__(self, path: str | Path, *, synchronous: str = "NORMAL", busy_timeout_ms: int = 5000,
                 create: bool = True) -> None:
        self.path = Path(path).expanduser().absolute()
        self.synchronous = synchronous.upper()
        if self.synchronous not in SYNCHRONOUS_MODES:
            raise ValueError(f"synchronous must be one of {', '.join(SYNCHRONOUS_MODES)}, not {synchronous!r}")
        if not self.path.exists():
            if not create:
                raise LedgerNotFoundError(f"no ledger at {self.path}")
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._busy_timeout_ms = busy_timeout_ms
        self._closed = False
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._inline_lock = threading.Lock()
        self._inline: sqlite3.Connection | None = None  # opened by the first write_inline()
        self._inline_commits = self._inline_records = 0  # since the last checkpoint()
        try:
            self._writer = self._connect()
            self._migrate(create=create)
            self._reader = self._connect()
        except sqlite3.Error as error:
            raise LedgerUnavailableError(f"cannot open SQLite ledger {self.path}: {error}") from error
        self._reader.create_aggregate("decimal_sum", 1, _DecimalSum)

    def _connect(self, busy_timeout_ms: int | None = None) -> sqlite3.Connection:
        # isolation_level=None: no implicit transactions; write() says BEGIN/COMMIT itself.
        if busy_timeout_ms is None:
            busy_timeout_ms = self._busy_timeout_ms
        connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                     timeout=busy_timeout_ms / 1000)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute(f"PRAGMA synchronous={self.synchronous}")
        connection.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        # After a checkpoint lets the WAL start over, its file is cut back to this size.
        connection.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT_BYTES}")
        return connection

    def _migrate(self, *, create: bool) -> None:
        connection = self._writer
        has_versions = connection.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'").fetchone()
        if not has_versions and not create:
            raise LedgerNotFoundError(f"{self.path} is not an inferplane ledger (no schema_version table)")
        if has_versions:
            current = connection.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()[0]
            if not pending_migrations(current, SQLITE_MIGRATIONS, str(self.path)):
                return  # up to date: no write lock needed (reports may read a read-only copy)
        # IMMEDIATE takes the write lock first, so two processes opening at once migrate once.
        connection.execute("BEGIN IMMEDIATE")
        try:
            connection.execute("CREATE TABLE IF NOT EXISTS schema_version ("
                               "version INTEGER NOT NULL PRIMARY KEY, applied_at TEXT NOT NULL)")
            current = connection.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()[0]
            for version, statements in pending_migrations(current, SQLITE_MIGRATIONS, str(self.path)):
                for statement in statements:
                    connection.execute(statement)
                connection.execute("INSERT INTO schema_version (version, applied_at) VALUES "
                                   "(?, strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now'))", (version,))
            connection.execute("COMMIT")
        except BaseException:
            self._rollback(connection)
            raise

    @classmethod
    def _insert(cls, connection: sqlite3.Connection, rows: list[tuple]) -> int:
        """One transaction of encoded rows on `connection`; how many were new. Rolled back and
        re-raised on any sqlite3.Error."""
        try:
            connection.execute("BEGIN IMMEDIATE")
            before = connection.total_changes
            connection.executemany(_INSERT, rows)
            inserted = connection.total_changes - before
            connection.execute("COMMIT")
            return inserted
        except sqlite3.Error:
            cls._rollback(connection)
            raise

    @staticmethod
    def _rollback(connection: sqlite3.Connection) -> None:
        # A failed ROLLBACK (e.g. the disk went away) must not hide the error that caused it;
        # SQLite rolls back an unfinished transaction by itself when the file is next opened.
        if connection.in_transaction:
            try:
                connection.execute("ROLLBACK")
            except sqlite3.Error:
                pass

    def schema_version(self) -> int:
        """The newest migration applied to this file."""
        with self._read_lock:
            return self._reader.execute("SELECT max(version) FROM schema_version").fetchone()[0]

    def _check_open(self) -> None:
        if self._closed:
            raise LedgerError(f"the SQLite ledger {self.path} is closed")

    def write(self, records: Sequence[UsageRecord]) -> int:
        self._check_open()
        rows = checked_rows(records, _encode)
        if not rows:
            return 0
        with self._write_lock:
            try:
                return self._insert(self._writer, rows)
            except sqlite3.Error as error:
                if isinstance(error, _RECORD_ERRORS):
                    raise LedgerRecordError(f"SQLite ledger {self.path} refused a record: {error}") from error
                # Locked, disk full, I/O error, read-only file: nothing was written; retry later.
                raise LedgerUnavailableError(f"SQLite ledger {self.path} not writable: {error}") from error

    def write_inline(self, records: Sequence[UsageRecord]) -> int | None:
        """Commit `records` now if that cannot wait for a lock; None when nothing was written.

        For a caller that must not block (an event loop): the database busy (another writer,
        a lock held elsewhere), another thread inside write_inline(), synchronous above NORMAL
        (an fsync per commit) or any error gives None at once, and the caller should hand the
        records to write() on another thread, which waits, retries and reports properly.
        Otherwise as durable as write() when it returns; returns how many were new.
        The records must have passed `check_record` (AsyncLedgerWriter.write() checks each one
        as it arrives): they are not checked again on this hot path.
        """
        if self._closed or self.synchronous != "NORMAL":
            return None
        rows = [_encode(record) for record in records]
        if not rows or not self._inline_lock.acquire(blocking=False):
            return None
        try:
            connection = self._inline
            if connection is None:
                try:
                    connection = self._connect(busy_timeout_ms=0)
                    connection.execute("PRAGMA wal_autocheckpoint=0")
                except sqlite3.Error:
                    return None
                self._inline = connection
            try:
                inserted = self._insert(connection, rows)
            except sqlite3.Error:
                return None
            self._inline_commits += 1
            self._inline_records += len(rows)
            return inserted
        finally:
            self._inline_lock.release()

    @property
    def checkpoint_due(self) -> bool:
        """True when inline commits have grown the WAL enough for a `checkpoint()`."""
        return (self._inline_commits >= INLINE_COMMITS_PER_CHECKPOINT
                or self._inline_records >= INLINE_RECORDS_PER_CHECKPOINT)

    def copy_back(self) -> None:
        """The first, long half of a checkpoint: copy the committed WAL pages into the database
        file and fsync it, PASSIVE, so inline commits go on meanwhile (~5 ms for 200 commits
        here; holding them off for it put the whole copy into a response's latency: p99 at
        concurrency 1 went from 1.2 to 8 ms). `checkpoint()` then only has what came in since.
        For the writer's thread; raises LedgerUnavailableError on failure."""
        self._wal_checkpoint("PASSIVE", self._busy_timeout_ms)

    def checkpoint(self) -> None:
        """Copy committed WAL pages into the database file and make the next commit start the
        WAL over, on the write connection. RESTART, not PASSIVE: a passive checkpoint between
        inline commits copied every frame, yet the WAL never started over and its file grew by
        every record (2 GB in a 3-minute soak). RESTART waits for readers and holds writers
        off meanwhile (AsyncLedgerWriter queues records for its thread while it checkpoints,
        after `copy_back()` has done the copying), so it waits at most CHECKPOINT_WAIT_MS: a
        long reader (a shipper batch, `inferplane usage`) only postpones the restart to the next
        checkpoint. For the writer's thread; raises LedgerUnavailableError on failure."""
        self._inline_commits = self._inline_records = 0
        self._wal_checkpoint("RESTART", CHECKPOINT_WAIT_MS)

    def _wal_checkpoint(self, mode: str, busy_timeout_ms: float) -> None:
        """`PRAGMA wal_checkpoint(mode)` on the write connection, waiting at most
        `busy_timeout_ms` for locks."""
        self._check_open()
        with self._write_lock:
            try:
                self._writer.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
                try:
                    self._writer.execute(f"PRAGMA wal_checkpoint({mode})").fetchall()
                finally:
                    self._writer.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_ms)}")
            except sqlite3.Error as error:
                raise LedgerUnavailableError(f"SQLite ledger {self.path}: checkpoint failed: {error}") from error

    def records(self, since: datetime | date | None = None, until: datetime | date | None = None,
                key_id: str | None = None) -> list[UsageRecord]:
        self._check_open()
        where, params = _where(since, until, key_id)
        with self._read_lock:
            rows = self._reader.execute(
                f"SELECT {_COLUMNS} FROM usage_records{where} ORDER BY created_at, request_id", params
            ).fetchall()
        return [_decode(row) for row in rows]

    def summary(self, group_by: Sequence[str] = ("key_id", "model", "day"),
                since: datetime | date | None = None, until: datetime | date | None = None,
                key_id: str | None = None, served_only: bool = False) -> list[UsageSummaryRow]:
        self._check_open()
        groups = check_group_by(group_by)
        expressions = [_GROUP_EXPRESSIONS[name] for name in groups] + ["currency"]
        where, params = _where(since, until, key_id, served_only)
        listed = ", ".join(expressions)
        query = (f"SELECT {listed}, count(*), sum(prompt_tokens), sum(completion_tokens), "
                 f"sum(cached_tokens), decimal_sum(cost), sum(reasoning_tokens) "
                 f"FROM usage_records{where} "
                 f"GROUP BY {listed} ORDER BY {listed}")
        with self._read_lock:
            rows = self._reader.execute(query, params).fetchall()
        width = len(groups)
        return [
            UsageSummaryRow(group=dict(zip(groups, row[:width])), currency=row[width],
                            requests=row[width + 1], prompt_tokens=row[width + 2],
                            completion_tokens=row[width + 3], cached_tokens=row[width + 4],
                            cost=Decimal(row[width + 5]), reasoning_tokens=row[width + 6])
            for row in rows
        ]

    def count(self) -> int:
        self._check_open()
        with self._read_lock:
            return self._reader.execute("SELECT count(*) FROM usage_records").fetchone()[0]

    # --- the spool side: records not yet in the central ledger (see ledger/shipper.py) -------

    def unshipped(self, limit: int) -> list[UsageRecord]:
        """Up to `limit` records not yet shipped to the central ledger, first spooled first."""
        self._check_open()
        with self._read_lock:
            rows = self._reader.execute(
                f"SELECT {_COLUMNS} FROM usage_records WHERE shipped = 0 "
                "ORDER BY recorded_at, request_id LIMIT ?", (limit,)).fetchall()
        return [_decode(row) for row in rows]

    def mark_shipped(self, request_ids: Sequence[str], state: int = SHIPPED) -> None:
        """Set the shipped-marker of `request_ids` (SHIPPED, or REFUSED for a record the central
        ledger will never take) in one transaction."""
        self._check_open()
        if not request_ids:
            return
        with self._write_lock:
            connection = self._writer
            try:
                connection.execute("BEGIN IMMEDIATE")
                connection.executemany("UPDATE usage_records SET shipped = ? WHERE request_id = ?",
                                       [(state, request_id) for request_id in request_ids])
                connection.execute("COMMIT")
            except sqlite3.Error as error:
                self._rollback(connection)
                raise LedgerUnavailableError(f"SQLite spool {self.path} not writable: {error}") from error

    def spool_state(self) -> tuple[int, datetime | None, int]:
        """(records waiting to ship, when the oldest of them was spooled, records refused)."""
        self._check_open()
        with self._read_lock:
            waiting, oldest = self._reader.execute(
                "SELECT count(*), min(recorded_at) FROM usage_records WHERE shipped = 0").fetchone()
            refused = self._reader.execute(
                "SELECT count(*) FROM usage_records WHERE shipped = ?", (REFUSED,)).fetchone()[0]
        return waiting, (datetime.fromisoformat(oldest) if oldest else None), refused

    def unshipped_cost_by_key(self, since: datetime | date) -> dict[tuple[str, str], Decimal]:
        """Exact cost per (key id, currency) of the records created since `since` that the
        central ledger does not hold yet (month-to-date spend = central + these)."""
        self._check_open()
        with self._read_lock:
            rows = self._reader.execute(
                "SELECT key_id, currency, decimal_sum(cost) FROM usage_records "
                "WHERE shipped = 0 AND created_at >= ? GROUP BY key_id, currency",
                (iso_utc(to_utc(since)),)).fetchall()  # type: ignore[arg-type]
        return {(key_id, currency): Decimal(cost) for key_id, currency, cost in rows}

    def prune_shipped(self, before: datetime) -> int:
        """Delete shipped records spooled before `before` (the central ledger holds them);
        returns how many. Keeps the spool file small on a long-lived pod."""
        self._check_open()
        # recorded_at is written by SQLite with milliseconds: compare in the same shape.
        cutoff = iso_utc(before)[:23] + "+00:00"
        with self._write_lock:
            try:
                cursor = self._writer.execute(
                    "DELETE FROM usage_records WHERE shipped = ? AND recorded_at < ?", (SHIPPED, cutoff))
            except sqlite3.Error as error:
                raise LedgerUnavailableError(f"SQLite spool {self.path} not writable: {error}") from error
            return cursor.rowcount

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self._write_lock, self._read_lock, self._inline_lock:
            if self._inline is not None:
                self._inline.close()
            self._reader.close()
            self._writer.close()

    def __repr__(self) -> str:
        return f"SQLiteLedger({str(self.path)!r}, synchronous={self.synchronous})"
