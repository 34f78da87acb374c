"""The PostgreSQL ledger (psycopg 3): for several gateway replicas sharing one ledger.

Money is NUMERIC (exact, summed exactly by the server), times TIMESTAMPTZ. A commit returns
after the server has flushed its WAL (`synchronous_commit` on, the default), so a written
record survives a crash of the gateway and of the database server. Give the ledger its own
database (or schema, via `?options=-csearch_path%3Dinferplane`): the tables are named
`usage_records` and `schema_version`.
"""

from __future__ import annotations

import threading
from datetime import date, datetime, timezone
from typing import Any, Sequence
from urllib.parse import urlsplit, urlunsplit

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
    to_utc,
)
from inferplane.ledger.migrations import POSTGRES_MIGRATIONS, pending_migrations
from inferplane.ledger.records import UsageRecord

try:
    import psycopg
    from psycopg.conninfo import conninfo_to_dict
except ImportError:  # pragma: no cover - depends on the installed extras
    psycopg = None  # type: ignore[assignment]

_COLUMNS = ", ".join(RECORD_FIELDS)
_INSERT = (f"INSERT INTO usage_records ({_COLUMNS}) VALUES ({', '.join('%s' for _ in RECORD_FIELDS)}) "
           "ON CONFLICT (request_id) DO NOTHING")
_GROUP_EXPRESSIONS = {
    "key_id": "key_id",
    "tenant": "tenant",
    "model": "model",
    "endpoint": "endpoint",
    "day": "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
    "month": "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM')",
    # numeric::text keeps the recorded scale ('0.60'), the same text the SQLite ledger groups by.
    "input_price_per_million": "input_price_per_million::text",
    "output_price_per_million": "output_price_per_million::text",
    "outcome": OUTCOME_SQL,
    "status": "status",
}
# Serialises migrations of replicas that start at the same time (any constant; "infp" in ASCII).
_MIGRATION_LOCK_ID = 0x696E6670


def redact_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit((parts.scheme, user + host, parts.path, parts.query, parts.fragment))


def _encode(record: UsageRecord) -> tuple[object, ...]:
    return (
        record.request_id, record.key_id, record.tenant, record.model, record.endpoint,
        to_utc(record.created_at),
        record.prompt_tokens, record.completion_tokens, record.cached_tokens,
        record.input_price_per_million, record.output_price_per_million, record.cost,
        record.currency, record.status, record.streamed,
        float(record.latency_ms), None if record.ttft_ms is None else float(record.ttft_ms),
        record.reasoning_tokens,
    )


def _decode(row: tuple[Any, ...]) -> UsageRecord:
    (request_id, key_id, tenant, model, endpoint, created_at, prompt_tokens, completion_tokens,
     cached_tokens, input_price, output_price, cost, currency, status, streamed, latency_ms,
     ttft_ms, reasoning_tokens) = row
    return UsageRecord(
        request_id=request_id, key_id=key_id, tenant=tenant, model=model, endpoint=endpoint,
        created_at=created_at.astimezone(timezone.utc),
        prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, cached_tokens=cached_tokens,
        input_price_per_million=input_price, output_price_per_million=output_price, cost=cost,
        currency=currency, status=status, streamed=streamed, latency_ms=latency_ms, ttft_ms=ttft_ms,
        reasoning_tokens=reasoning_tokens,
    )


def _where(since: datetime | date | None, until: datetime | date | None,
           key_id: str | None, served_only: bool = False) -> tuple[str, list[object]]:
    clauses: list[str] = [f"NOT {REFUSED_SQL}"] if served_only else []
    params: list[object] = []
    if since is not None:
        clauses.append("created_at >= %s")
        params.append(to_utc(since))
    if until is not None:
        clauses.append("created_at < %s")
        params.append(to_utc(until))
    if key_id is not None:
        clauses.append("key_id = %s")
        params.append(key_id)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


class PostgresLedger(Ledger):
    """A ledger in a PostgreSQL database: one write and one read connection, each under a lock.

    A broken connection is dropped and reopened on the next call, so a database restart costs
    the writer a few retries, not a gateway restart.
    """

    def __init__(self, url: str, *, create: bool = True, connect_timeout_seconds: int = 10) -> None:
        if psycopg is None:
            raise LedgerError("the PostgreSQL ledger needs psycopg: pip install 'inferplane[postgres]'")
        self.url = url
        self.display_url = redact_url(url)
        self._connect_kwargs: dict[str, Any] = {"autocommit": True, "application_name": "inferplane-ledger"}
        try:
            given = conninfo_to_dict(url)
        except psycopg.Error as error:
            raise LedgerError(f"bad PostgreSQL URL {self.display_url}: {error}") from None
        # Defaults the URL may override: a server that stops answering (a partition, not a
        # refusal) then fails a write within about half a minute instead of hanging the writer.
        defaults = {"connect_timeout": connect_timeout_seconds, "keepalives": 1, "keepalives_idle": 10,
                    "keepalives_interval": 5, "keepalives_count": 3, "tcp_user_timeout": 30_000}
        self._connect_kwargs.update({name: value for name, value in defaults.items() if name not in given})
        self._closed = False
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._writer: Any = None
        self._reader: Any = None
        with self._write_lock:
            connection = self._writer_connection()
            try:
                self._migrate(connection, create=create)
            except psycopg.Error as error:
                self._drop(connection)
                raise LedgerError(f"cannot set up the ledger schema in {self.display_url}: "
                                  f"{str(error).strip()}") from error
            except BaseException:
                self._drop(connection)
                raise

    def _connect(self) -> Any:
        try:
            return psycopg.connect(self.url, **self._connect_kwargs)
        except psycopg.Error as error:
            raise LedgerUnavailableError(f"cannot connect to PostgreSQL ledger {self.display_url}: "
                                         f"{str(error).strip()}") from None

    def _writer_connection(self) -> Any:
        if self._writer is None or self._writer.closed:
            self._writer = self._connect()
        return self._writer

    def _migrate(self, connection: Any, *, create: bool) -> None:
        with connection.transaction():
            exists = connection.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()[0]
            if not exists and not create:
                raise LedgerNotFoundError(f"{self.display_url} holds no inferplane ledger (no schema_version table)")
            if exists:
                current = connection.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()[0]
                if not pending_migrations(current, POSTGRES_MIGRATIONS, self.display_url):
                    return  # up to date: nothing to lock or create (works on a read-only replica)
            connection.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK_ID,))
            connection.execute("CREATE TABLE IF NOT EXISTS schema_version ("
                               "version integer NOT NULL PRIMARY KEY, "
                               "applied_at timestamptz NOT NULL DEFAULT now())")
            current = connection.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()[0]
            for version, statements in pending_migrations(current, POSTGRES_MIGRATIONS, self.display_url):
                for statement in statements:
                    connection.execute(statement)
                connection.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))

    def _check_open(self) -> None:
        if self._closed:
            raise LedgerError(f"the PostgreSQL ledger {self.display_url} is closed")

    def write(self, records: Sequence[UsageRecord]) -> int:
        self._check_open()
        rows = checked_rows(records, _encode)
        if not rows:
            return 0
        with self._write_lock:
            connection = self._writer_connection()
            try:
                with connection.transaction(), connection.cursor() as cursor:
                    cursor.executemany(_INSERT, rows)  # pipelined: one round trip for the batch
                    return cursor.rowcount  # the sum over all rows: conflicts count 0
            except (psycopg.DataError, psycopg.IntegrityError) as error:
                raise LedgerRecordError(f"PostgreSQL ledger {self.display_url} refused a record: "
                                        f"{str(error).strip()}") from error
            except psycopg.Error as error:
                # Connection lost, server restarting, read-only after failover...: nothing is
                # known to be written (a lost COMMIT reply is safe: the retry is idempotent).
                self._drop(connection)
                raise LedgerUnavailableError(f"PostgreSQL ledger {self.display_url} not writable: "
                                             f"{str(error).strip()}") from error

    def _drop(self, connection: Any) -> None:
        if connection is self._writer:
            self._writer = None
        if connection is self._reader:
            self._reader = None
        try:
            connection.close()
        except psycopg.Error:
            pass

    def _query(self, query: str, params: Sequence[object]) -> list[tuple[Any, ...]]:
        self._check_open()
        with self._read_lock:
            for attempt in (1, 2):  # one reconnect: the server may have restarted since
                if self._reader is None or self._reader.closed:
                    self._reader = self._connect()
                connection = self._reader
                try:
                    return connection.execute(query, params).fetchall()
                except psycopg.OperationalError as error:
                    self._drop(connection)
                    if attempt == 2:
                        raise LedgerUnavailableError(f"PostgreSQL ledger {self.display_url} not readable: "
                                                     f"{str(error).strip()}") from error
        raise AssertionError("unreachable")

    def schema_version(self) -> int:
        """The newest migration applied to this database."""
        return self._query("SELECT max(version) FROM schema_version", ())[0][0]

    def records(self, since: datetime | date | None = None, until: datetime | date | None = None,
                key_id: str | None = None) -> list[UsageRecord]:
        where, params = _where(since, until, key_id)
        rows = self._query(f"SELECT {_COLUMNS} FROM usage_records{where} ORDER BY created_at, request_id",
                           params)
        return [_decode(row) for row in rows]

    def summary(self, group_by: Sequence[str] = ("key_id", "model", "day"),
                since: datetime | date | None = None, until: datetime | date | None = None,
                key_id: str | None = None, served_only: bool = False) -> list[UsageSummaryRow]:
        groups = check_group_by(group_by)
        expressions = [_GROUP_EXPRESSIONS[name] for name in groups] + ["currency"]
        where, params = _where(since, until, key_id, served_only)
        listed = ", ".join(expressions)
        rows = self._query(
            f"SELECT {listed}, count(*), sum(prompt_tokens), sum(completion_tokens), sum(cached_tokens), "
            f"sum(cost), sum(reasoning_tokens) FROM usage_records{where} GROUP BY {listed} "
            f"ORDER BY {listed}", params)
        width = len(groups)
        return [
            UsageSummaryRow(group=dict(zip(groups, row[:width])), currency=row[width],
                            requests=int(row[width + 1]), prompt_tokens=int(row[width + 2]),
                            completion_tokens=int(row[width + 3]), cached_tokens=int(row[width + 4]),
                            cost=row[width + 5], reasoning_tokens=int(row[width + 6]))
            for row in rows
        ]

    def count(self) -> int:
        return int(self._query("SELECT count(*) FROM usage_records", ())[0][0])

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self._write_lock, self._read_lock:
            for connection in (self._writer, self._reader):
                if connection is not None:
                    connection.close()
            self._writer = self._reader = None

    def __repr__(self) -> str:
        return f"PostgresLedger({self.display_url!r})"
