"""The usage ledger against real SQLite files and a real PostgreSQL server.

Each behaviour runs on both backends (the PostgreSQL cases are marked `postgres`).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from collections import defaultdict
from dataclasses import replace
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Sequence

import pytest

from inferplane.ledger import (
    SCHEMA_VERSION,
    AsyncLedgerWriter,
    Ledger,
    LedgerBacklogFullError,
    LedgerConfigError,
    LedgerNotFoundError,
    LedgerRecordError,
    LedgerSchemaError,
    LedgerUnavailableError,
    open_ledger,
)
from inferplane.ledger.records import UsageRecord, price
from inferplane.testing.postgres import PostgresServer, postgres_server, postgres_url  # noqa: F401

INPUT_PRICE = Decimal("0.60")
OUTPUT_PRICE = Decimal("1.80")
DAY_ONE = datetime(2026, 11, 2, 12, 0, tzinfo=timezone.utc)


def make_record(request_id: str, *, key_id: str = "key-a", model: str = "nemotron-ultra",
                created_at: datetime = DAY_ONE, prompt_tokens: int = 100, completion_tokens: int = 20,
                cached_tokens: int = 0, currency: str = "USD", tenant: str = "acme",
                input_price: Decimal = INPUT_PRICE, output_price: Decimal = OUTPUT_PRICE) -> UsageRecord:
    return UsageRecord(
        request_id=request_id, key_id=key_id, tenant=tenant, model=model, endpoint="/v1/chat/completions",
        created_at=created_at, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
        cached_tokens=cached_tokens, input_price_per_million=input_price, output_price_per_million=output_price,
        cost=price(prompt_tokens, completion_tokens, input_price, output_price), currency=currency,
        status=200, streamed=True, latency_ms=12.5, ttft_ms=3.25,
    )


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the writer resolves asyncio futures; the gateway runs on asyncio


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def ledger_url(request: pytest.FixtureRequest, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/ledger.db"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def ledger(ledger_url: str):
    opened = open_ledger(ledger_url)
    yield opened
    opened.close()


# --- the Ledger API -------------------------------------------------------------------------


def test_replayed_request_ids_are_ignored_and_counted_as_not_new(ledger: Ledger) -> None:
    first = [make_record(f"req-{i}") for i in range(10)]
    assert ledger.write(first) == 10
    again = first[5:] + [make_record(f"req-{i}") for i in range(10, 15)]
    assert ledger.write(again) == 5
    assert ledger.write(first) == 0
    assert ledger.count() == 15


def test_a_replay_never_overwrites_the_first_record(ledger: Ledger) -> None:
    ledger.write([make_record("req-1", prompt_tokens=100)])
    ledger.write([make_record("req-1", prompt_tokens=999_999)])
    (stored,) = ledger.records()
    assert stored.prompt_tokens == 100


def test_records_come_back_exactly_as_written(ledger: Ledger) -> None:
    paris = timezone(timedelta(hours=1))
    written = [
        make_record("req-a", created_at=datetime(2026, 11, 2, 9, 30, 15, 123456, tzinfo=paris)),
        replace(make_record("req-b", prompt_tokens=1, completion_tokens=0), ttft_ms=None, streamed=False,
                status=499, tenant=""),
    ]
    ledger.write(written)
    stored = {record.request_id: record for record in ledger.records()}
    assert stored == {record.request_id: record for record in written}
    assert stored["req-a"].created_at.utcoffset() == timedelta(0)  # read back in UTC
    assert stored["req-b"].cost == Decimal("0.0000006")


def test_cost_sums_are_exact_decimals(ledger: Ledger) -> None:
    # 3,333 one-token prompts at 0.60 per million: a float sum drifts off 0.0019998.
    ledger.write([make_record(f"tiny-{i}", prompt_tokens=1, completion_tokens=0) for i in range(3333)])
    mixed = [make_record(f"mixed-{i}", prompt_tokens=i * 7 + 1, completion_tokens=i * 3) for i in range(1000)]
    ledger.write(mixed)
    tiny_total = sum(price(1, 0, INPUT_PRICE, OUTPUT_PRICE) for _ in range(3333))
    assert tiny_total == Decimal("0.0019998")
    (tiny_row,) = ledger.summary(group_by=(), until=DAY_ONE + timedelta(days=1), key_id="key-a")[:1]
    expected = tiny_total + sum((record.cost for record in mixed), Decimal(0))
    assert tiny_row.cost == expected
    assert isinstance(tiny_row.cost, Decimal)
    assert tiny_row.requests == 4333
    assert tiny_row.prompt_tokens == 3333 + sum(record.prompt_tokens for record in mixed)


def _grouping_fixture() -> list[UsageRecord]:
    records = []
    days = [datetime(2026, 11, 1, 0, 0, tzinfo=timezone.utc),
            datetime(2026, 11, 1, 23, 59, 59, 999999, tzinfo=timezone.utc),
            # 00:30 in UTC+02:00 is still 1 November in UTC: days are UTC days
            datetime(2026, 11, 2, 0, 30, tzinfo=timezone(timedelta(hours=2))),
            datetime(2026, 11, 2, 8, 0, tzinfo=timezone.utc),
            datetime(2026, 12, 1, 0, 0, tzinfo=timezone.utc)]
    counter = 0
    for key_id in ("key-a", "key-b"):
        for model in ("nemotron-ultra", "llama-8b"):
            for created_at in days:
                counter += 1
                records.append(make_record(f"g-{counter}", key_id=key_id, model=model, created_at=created_at,
                                           prompt_tokens=counter * 11, completion_tokens=counter * 5,
                                           tenant="acme" if key_id == "key-a" else "globex"))
    return records


def _expected_groups(records: Sequence[UsageRecord], group_of) -> dict[tuple, tuple[int, int, int, Decimal]]:
    totals: dict[tuple, list] = defaultdict(lambda: [0, 0, 0, Decimal(0)])
    for record in records:
        row = totals[group_of(record)]
        row[0] += 1
        row[1] += record.prompt_tokens
        row[2] += record.completion_tokens
        row[3] += record.cost
    return {group: tuple(values) for group, values in totals.items()}


def test_summary_groups_by_key_model_and_utc_day(ledger: Ledger) -> None:
    records = _grouping_fixture()
    ledger.write(records)
    rows = ledger.summary(group_by=("key_id", "model", "day"))
    got = {(row.group["key_id"], row.group["model"], row.group["day"]):
           (row.requests, row.prompt_tokens, row.completion_tokens, row.cost) for row in rows}
    utc_day = lambda record: record.created_at.astimezone(timezone.utc).date().isoformat()  # noqa: E731
    assert got == _expected_groups(records, lambda r: (r.key_id, r.model, utc_day(r)))
    assert {row.group["day"] for row in rows} == {"2026-11-01", "2026-11-02", "2026-12-01"}
    assert [list(row.group) for row in rows][0] == ["key_id", "model", "day"]
    assert rows == sorted(rows, key=lambda row: tuple(row.group.values()))


def test_summary_by_tenant_month_and_totals_only(ledger: Ledger) -> None:
    records = _grouping_fixture()
    ledger.write(records)
    by_tenant_month = {(row.group["tenant"], row.group["month"]): (row.requests, row.prompt_tokens,
                                                                   row.completion_tokens, row.cost)
                       for row in ledger.summary(group_by=("tenant", "month"))}
    month = lambda record: record.created_at.astimezone(timezone.utc).strftime("%Y-%m")  # noqa: E731
    assert by_tenant_month == _expected_groups(records, lambda r: (r.tenant, month(r)))
    (total,) = ledger.summary(group_by=())
    assert total.group == {}
    assert (total.requests, total.cost) == (len(records), sum((r.cost for r in records), Decimal(0)))


def test_summary_never_adds_different_currencies(ledger: Ledger) -> None:
    ledger.write([make_record("usd-1"), make_record("usd-2"), make_record("eur-1", currency="EUR")])
    rows = ledger.summary(group_by=("key_id",))
    assert [(row.currency, row.requests) for row in rows] == [("EUR", 1), ("USD", 2)]


def test_since_is_inclusive_until_is_exclusive(ledger: Ledger) -> None:
    records = _grouping_fixture()
    ledger.write(records)
    since, until = datetime(2026, 11, 1, 23, 59, 59, 999999, tzinfo=timezone.utc), date(2026, 11, 2)
    selected = ledger.records(since=since, until=until)
    assert {record.created_at for record in selected} == {since}
    assert len(selected) == 4  # two keys x two models at that instant
    only_b = ledger.records(since=date(2026, 11, 2), key_id="key-b")
    assert {r.key_id for r in only_b} == {"key-b"}
    assert len(only_b) == 2 * 2  # 2 Nov 08:00 and 1 Dec, two models (00:30+02:00 is still 1 Nov)
    (row,) = ledger.summary(group_by=(), since=date(2026, 12, 1))
    assert row.requests == 4


def test_unknown_group_is_refused_with_the_choices(ledger: Ledger) -> None:
    with pytest.raises(LedgerConfigError, match="choose from key_id, tenant, model"):
        ledger.summary(group_by=("key_id", "week"))


@pytest.mark.parametrize("change, field", [
    ({"cost": 0.0006}, "cost"),
    ({"prompt_tokens": -1}, "prompt_tokens"),
    ({"completion_tokens": True}, "completion_tokens"),
    ({"request_id": ""}, "request_id"),
    ({"key_id": "a\x00b"}, "key_id"),
    ({"latency_ms": float("nan")}, "latency_ms"),
    ({"input_price_per_million": Decimal("NaN")}, "input_price_per_million"),
])
def test_bad_records_are_refused_and_their_batch_is_not_written(ledger: Ledger, change: dict, field: str) -> None:
    batch = [make_record("good-1"), replace(make_record("bad"), **change), make_record("good-2")]
    with pytest.raises(LedgerRecordError, match=field):
        ledger.write(batch)
    assert ledger.count() == 0


def test_naive_timestamps_are_taken_as_utc(ledger: Ledger) -> None:
    ledger.write([make_record("naive", created_at=datetime(2026, 11, 2, 23, 30))])
    (stored,) = ledger.records()
    assert stored.created_at == datetime(2026, 11, 2, 23, 30, tzinfo=timezone.utc)


# --- schema and URLs ------------------------------------------------------------------------


def _raw_execute(url: str, statement: str) -> list[tuple]:
    if url.startswith("sqlite:"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as connection:
            return connection.execute(statement).fetchall()
    import psycopg  # only the PostgreSQL cases need it

    with psycopg.connect(url, autocommit=True) as connection:
        cursor = connection.execute(statement)
        return cursor.fetchall() if cursor.description else []


def test_schema_is_versioned_and_migrated_once(ledger_url: str) -> None:
    open_ledger(ledger_url).close()
    open_ledger(ledger_url).close()
    # One row per applied step, each step once.
    assert _raw_execute(ledger_url, "SELECT version FROM schema_version ORDER BY version") == \
        [(version,) for version in range(1, SCHEMA_VERSION + 1)]


def test_a_newer_schema_is_refused(ledger_url: str) -> None:
    open_ledger(ledger_url).close()
    _raw_execute(ledger_url, f"INSERT INTO schema_version (version, applied_at) VALUES "
                             f"({SCHEMA_VERSION + 1}, '2026-11-28T00:00:00+00:00')")
    with pytest.raises(LedgerSchemaError, match="upgrade inferplane"):
        open_ledger(ledger_url)


def test_reports_do_not_create_ledgers(ledger_url: str, tmp_path) -> None:
    with pytest.raises(LedgerNotFoundError):
        open_ledger(ledger_url, create=False)
    if ledger_url.startswith("sqlite:"):
        assert not (tmp_path / "ledger.db").exists()


def test_sqlite_urls_relative_absolute_and_options(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with open_ledger("sqlite:///state/relative.db") as relative:
        relative.write([make_record("r")])
    assert (tmp_path / "state" / "relative.db").is_file()
    absolute = tmp_path / "absolute.db"
    with open_ledger(f"sqlite:///{absolute}?synchronous=full&busy_timeout_ms=250") as ledger:
        assert ledger.synchronous == "FULL"
        assert ledger._writer.execute("PRAGMA synchronous").fetchone() == (2,)
        assert ledger._writer.execute("PRAGMA busy_timeout").fetchone() == (250,)
    # WAL is a property of the file: another connection sees it.
    with sqlite3.connect(absolute) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)


@pytest.mark.parametrize("url, message", [
    ("mysql://x/y", "unsupported scheme 'mysql'"),
    ("ledger.db", "not a URL"),
    ("sqlite://host/ledger.db", "no host"),
    ("sqlite:///:memory:", "not be durable"),
    ("sqlite:///x.db?synchronous=off", "synchronous must be one of NORMAL, FULL, EXTRA"),
    ("sqlite:///x.db?journal=delete", "unknown SQLite option 'journal'"),
])
def test_bad_urls_name_the_accepted_forms(url: str, message: str, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(LedgerConfigError, match=message) as error:
        open_ledger(url)
    assert "sqlite:////absolute/path.db" in str(error.value)


def test_postgres_errors_never_show_the_password() -> None:
    with pytest.raises(LedgerUnavailableError) as error:
        open_ledger("postgresql://gateway:s3cret-pw@127.0.0.1:1/ledger")
    assert "s3cret-pw" not in str(error.value)
    assert "gateway:***@127.0.0.1:1" in str(error.value)


# --- AsyncLedgerWriter ----------------------------------------------------------------------


class GatedLedger(Ledger):
    """The real ledger behind a gate: writes wait until the test opens it (and are counted)."""

    def __init__(self, inner: Ledger, refuse_request_id: str | None = None) -> None:
        self.inner = inner
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.batches: list[int] = []
        self.refuse_request_id = refuse_request_id

    def write(self, records: Sequence[UsageRecord]) -> int:
        self.entered.set()
        self.gate.wait()
        if any(record.request_id == self.refuse_request_id for record in records):
            raise ValueError("value out of range for the column")  # as a database would refuse it
        self.batches.append(len(records))
        return self.inner.write(records)

    def records(self, *args, **kwargs):
        return self.inner.records(*args, **kwargs)

    def summary(self, *args, **kwargs):
        return self.inner.summary(*args, **kwargs)

    def count(self) -> int:
        return self.inner.count()

    def close(self) -> None:
        self.inner.close()


@pytest.mark.anyio
async def _wait_until(condition, what: str, limit_seconds: float = 30.0) -> None:
    """Poll until `condition()`; the limit only stops a hung test, it asserts no speed."""
    for _ in range(int(limit_seconds / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"gave up waiting for {what}")


def write_without_suspending(writer: AsyncLedgerWriter, request_id: str) -> None:
    """`writer.write()` finished at its first step (an inline commit, no thread hop)."""
    with pytest.raises(StopIteration):
        writer.write(make_record(request_id)).send(None)


@pytest.mark.anyio
async def test_write_returns_only_after_the_commit(ledger: Ledger) -> None:
    gated = GatedLedger(ledger)
    writer = AsyncLedgerWriter(gated)
    task = asyncio.create_task(writer.write(make_record("r-1")))
    await asyncio.to_thread(gated.entered.wait)
    await asyncio.sleep(0.05)
    assert not task.done()
    assert ledger.count() == 0
    gated.gate.set()
    await task
    assert ledger.count() == 1
    await writer.aclose()


@pytest.mark.anyio
async def test_concurrent_writes_share_commits(ledger: Ledger) -> None:
    gated = GatedLedger(ledger)
    writer = AsyncLedgerWriter(gated)
    tasks = [asyncio.create_task(writer.write(make_record("c-0")))]
    await asyncio.to_thread(gated.entered.wait)  # the first commit is held open...
    tasks += [asyncio.create_task(writer.write(make_record(f"c-{i}"))) for i in range(1, 500)]
    await _wait_until(lambda: writer.backlog == 500, "all writes to queue")
    gated.gate.set()  # ...so everything else queues behind it and goes in one transaction
    await asyncio.gather(*tasks)
    assert ledger.count() == 500
    assert gated.batches == [1, 499]
    assert (writer.committed_total, writer.commits_total, writer.failures_total) == (500, 2, 0)
    await writer.aclose()


@pytest.mark.anyio
async def test_many_concurrent_writers_all_commit(ledger: Ledger) -> None:
    writer = AsyncLedgerWriter(ledger)
    records = [make_record(f"m-{i}", prompt_tokens=i + 1) for i in range(2000)]
    await asyncio.gather(*(writer.write(record) for record in records))
    await writer.aclose()
    assert ledger.count() == 2000
    (total,) = ledger.summary(group_by=())
    assert total.cost == sum((record.cost for record in records), Decimal(0))
    assert writer.commits_total < 2000


@pytest.mark.anyio
async def test_a_record_the_database_refuses_fails_alone(ledger: Ledger) -> None:
    gated = GatedLedger(ledger, refuse_request_id="poison")
    writer = AsyncLedgerWriter(gated)
    first = asyncio.create_task(writer.write(make_record("first")))
    await asyncio.to_thread(gated.entered.wait)
    batch = [asyncio.create_task(writer.write(make_record(name))) for name in ("a", "poison", "b")]
    await _wait_until(lambda: writer.backlog == 4, "the batch to queue")
    gated.gate.set()
    results = await asyncio.gather(first, *batch, return_exceptions=True)
    assert results[0] is None and results[1] is None and results[3] is None
    assert isinstance(results[2], LedgerRecordError) and "poison" in str(results[2])
    assert sorted(record.request_id for record in ledger.records()) == ["a", "b", "first"]
    assert writer.dropped_total == 1
    await writer.aclose()


@pytest.mark.anyio
async def test_checked_fields_fail_before_queueing(ledger: Ledger) -> None:
    writer = AsyncLedgerWriter(ledger)
    with pytest.raises(LedgerRecordError, match="cost"):
        await writer.write(replace(make_record("float-cost"), cost=0.5))
    assert writer.backlog == 0
    await writer.aclose()


class WriterBug(BaseException):
    """Stands for a bug that escapes the writer's error handling."""


class BrokenLedger(GatedLedger):
    def write(self, records: Sequence[UsageRecord]) -> int:
        raise WriterBug("unexpected")


@pytest.mark.anyio
async def test_a_dead_writer_thread_fails_its_waiters_instead_of_hanging(ledger: Ledger) -> None:
    writer = AsyncLedgerWriter(BrokenLedger(ledger), commit_timeout_seconds=None)
    with pytest.raises(LedgerUnavailableError, match="WriterBug"):
        await writer.write(make_record("first"))
    with pytest.raises(Exception, match="ledger writer failed"):
        await writer.write(make_record("second"))
    assert writer.dropped_total == 2
    await writer.aclose()


def _lock_sqlite(path) -> sqlite3.Connection:
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    return blocker


@pytest.mark.anyio
async def test_sqlite_locked_records_wait_in_memory_and_are_committed_later(tmp_path) -> None:
    path = tmp_path / "ledger.db"
    ledger = open_ledger(f"sqlite:///{path}?busy_timeout_ms=20")
    seen_errors: list[BaseException] = []
    writer = AsyncLedgerWriter(ledger, commit_timeout_seconds=0.3, retry_initial_seconds=0.01,
                               retry_max_seconds=0.05, on_failure=seen_errors.append)
    blocker = _lock_sqlite(path)
    with pytest.raises(LedgerUnavailableError, match="stays queued"):
        await writer.write(make_record("while-locked"))
    assert writer.failures_total >= 1 and seen_errors
    assert "locked" in str(seen_errors[0])
    assert writer.backlog == 1
    blocker.execute("ROLLBACK")
    blocker.close()
    await _wait_until(lambda: writer.backlog == 0, "the retry to commit")
    await writer.write(make_record("after"))
    assert sorted(r.request_id for r in ledger.records()) == ["after", "while-locked"]
    await writer.aclose()
    ledger.close()


@pytest.mark.anyio
async def test_a_lone_sqlite_record_commits_inline_and_falls_back_to_the_thread_when_locked(tmp_path) -> None:
    path = tmp_path / "ledger.db"
    ledger = open_ledger(f"sqlite:///{path}?busy_timeout_ms=20")
    writer = AsyncLedgerWriter(ledger, commit_timeout_seconds=None, retry_initial_seconds=0.01,
                               retry_max_seconds=0.05)
    # Idle writer: write() finishes without ever suspending (no thread hop), and the record is
    # already committed: another connection sees it.
    write_without_suspending(writer, "inline")
    other = sqlite3.connect(path)
    assert other.execute("SELECT request_id FROM usage_records").fetchall() == [("inline",)]
    assert (writer.committed_total, writer.commits_total, writer.backlog) == (1, 1, 0)

    # Locked: the inline attempt gives up at once and the thread waits, retries and commits.
    blocker = _lock_sqlite(path)
    await asyncio.sleep(0)  # a new turn of the loop, so the next record may go inline again
    task = asyncio.create_task(writer.write(make_record("while-locked")))
    await _wait_until(lambda: writer.failures_total >= 1, "the thread to meet the lock")
    assert not task.done() and writer.backlog == 1
    blocker.execute("ROLLBACK")
    blocker.close()
    await task
    assert sorted(row[0] for row in other.execute("SELECT request_id FROM usage_records")) == [
        "inline", "while-locked"]
    other.close()
    await writer.aclose()
    ledger.close()


@pytest.mark.anyio
async def test_records_of_one_loop_turn_commit_together_on_the_loop(tmp_path) -> None:
    path = tmp_path / "ledger.db"
    ledger = open_ledger(f"sqlite:///{path}?busy_timeout_ms=20")
    writer = AsyncLedgerWriter(ledger, retry_initial_seconds=0.01, retry_max_seconds=0.05)
    threaded: list[int] = []
    ledger_write = ledger.write
    ledger.write = lambda records: threaded.append(len(records)) or ledger_write(records)
    # 50 writes started in one turn: the first commits at once, the other 49 in one transaction
    # at the start of the next turn, and the thread writes nothing.
    await asyncio.gather(*(writer.write(make_record(f"turn-{i}", prompt_tokens=i + 1))
                           for i in range(50)))
    assert (writer.committed_total, writer.commits_total, writer.backlog) == (50, 2, 0)
    assert threaded == []
    # Locked: the batch gives up at once and the thread commits it once the lock is gone.
    await asyncio.sleep(0)
    blocker = _lock_sqlite(path)
    tasks = [asyncio.create_task(writer.write(make_record(f"locked-{i}"))) for i in range(5)]
    await _wait_until(lambda: writer.failures_total >= 1, "the thread to meet the lock")
    assert not any(task.done() for task in tasks) and writer.backlog == 5
    blocker.execute("ROLLBACK")
    blocker.close()
    await asyncio.gather(*tasks)
    assert sum(threaded) >= 5
    await writer.aclose()
    assert ledger.count() == 55
    (total,) = ledger.summary(group_by=())
    assert total.prompt_tokens == sum(range(1, 51)) + 5 * make_record("x").prompt_tokens
    ledger.close()


@pytest.mark.anyio
async def test_inline_commits_are_checkpointed_by_the_writer_thread(tmp_path, monkeypatch) -> None:
    from inferplane.ledger import sqlite as sqlite_ledger

    monkeypatch.setattr(sqlite_ledger, "INLINE_COMMITS_PER_CHECKPOINT", 3)
    ledger = open_ledger(f"sqlite:///{tmp_path}/ledger.db")
    writer = AsyncLedgerWriter(ledger)
    for i in range(3):
        write_without_suspending(writer, f"cp-{i}")
        await asyncio.sleep(0)
    await _wait_until(lambda: not ledger.checkpoint_due, "the thread to checkpoint")
    await writer.aclose()
    assert ledger.count() == 3
    ledger.close()


def test_a_checkpoint_is_due_after_so_many_commits_or_so_many_records(tmp_path, monkeypatch) -> None:
    from inferplane.ledger import sqlite as sqlite_ledger

    monkeypatch.setattr(sqlite_ledger, "INLINE_COMMITS_PER_CHECKPOINT", 3)
    monkeypatch.setattr(sqlite_ledger, "INLINE_RECORDS_PER_CHECKPOINT", 10)
    ledger = open_ledger(f"sqlite:///{tmp_path}/ledger.db")
    for i in range(2):
        assert ledger.write_inline([make_record(f"lone-{i}")]) == 1
    assert not ledger.checkpoint_due
    assert ledger.write_inline([make_record("lone-2")]) == 1
    assert ledger.checkpoint_due  # three commits
    ledger.checkpoint()
    assert not ledger.checkpoint_due
    assert ledger.write_inline([make_record(f"group-{i}") for i in range(10)]) == 10
    assert ledger.checkpoint_due  # one commit, ten records
    ledger.close()


@pytest.mark.anyio
async def test_records_commit_inline_while_the_wal_is_copied_back_and_wait_only_for_the_restart(
        tmp_path, monkeypatch) -> None:
    # The copy is the long half of a checkpoint (page copies and fsyncs): records that waited
    # for it put all of it into their responses' latency (p99 at concurrency 1: 8 ms).
    from inferplane.ledger import sqlite as sqlite_ledger

    monkeypatch.setattr(sqlite_ledger, "INLINE_COMMITS_PER_CHECKPOINT", 2)
    ledger = open_ledger(f"sqlite:///{tmp_path}/ledger.db")
    copying, copy_may_end = threading.Event(), threading.Event()
    restarting, restart_may_end = threading.Event(), threading.Event()
    copy_back, restart = ledger.copy_back, ledger.checkpoint

    def slow_copy_back() -> None:
        copying.set()
        copy_may_end.wait(30)
        copy_back()

    def slow_restart() -> None:
        restarting.set()
        restart_may_end.wait(30)
        restart()

    monkeypatch.setattr(ledger, "copy_back", slow_copy_back)
    monkeypatch.setattr(ledger, "checkpoint", slow_restart)
    writer = AsyncLedgerWriter(ledger)
    for i in range(2):
        write_without_suspending(writer, f"before-{i}")
        await asyncio.sleep(0)
    await _wait_until(copying.is_set, "the thread to start copying back")
    write_without_suspending(writer, "during-copy")  # not waiting for the copy
    await asyncio.sleep(0)
    copy_may_end.set()
    await _wait_until(restarting.is_set, "the thread to start the restart")
    waiting = asyncio.ensure_future(writer.write(make_record("during-restart")))
    await asyncio.sleep(0.05)
    assert not waiting.done()  # held off while the WAL starts over
    restart_may_end.set()
    await waiting
    await writer.aclose()
    assert ledger.count() == 4 and not ledger.checkpoint_due
    ledger.close()


@pytest.mark.anyio
async def test_the_wal_starts_over_under_steady_inline_commits(tmp_path, monkeypatch) -> None:
    # Inline commits never stop under steady load; checkpoints must still complete and let the
    # WAL start over, or its file grows with every record (seen in a soak: 2 GB in 3 minutes).
    from inferplane.ledger import sqlite as sqlite_ledger

    monkeypatch.setattr(sqlite_ledger, "INLINE_COMMITS_PER_CHECKPOINT", 10)
    ledger = open_ledger(f"sqlite:///{tmp_path}/ledger.db")
    writer = AsyncLedgerWriter(ledger)
    for turn in range(600):
        await asyncio.gather(*(writer.write(make_record(f"steady-{turn}-{i}"))
                               for i in range(10)))
    await writer.aclose()
    assert ledger.count() == 6000
    # A few pages per commit, ~10 commits between checkpoints (more while the thread waits for
    # the GIL or a CPU): under 1 MB seen on an idle machine and up to 4.9 MB with both cores
    # busy compiling, 12 MB with several builds and test suites sharing 2 cores, against 52 MB
    # when the WAL never starts over (no checkpoints at all).
    assert (tmp_path / "ledger.db-wal").stat().st_size < 30_000_000
    ledger.close()


def test_a_checkpoint_with_a_reader_present_postpones_the_restart_and_loses_nothing(tmp_path) -> None:
    ledger = open_ledger(f"sqlite:///{tmp_path}/ledger.db")
    ledger.write([make_record(f"before-{i}") for i in range(50)])
    reader = sqlite3.connect(tmp_path / "ledger.db", isolation_level=None)
    reader.execute("BEGIN")
    assert reader.execute("SELECT count(*) FROM usage_records").fetchone() == (50,)  # a snapshot
    ledger.checkpoint()  # cannot restart the WAL under the reader: gives up, raises nothing
    ledger.write([make_record(f"after-{i}") for i in range(50)])
    assert reader.execute("SELECT count(*) FROM usage_records").fetchone() == (50,)
    reader.execute("COMMIT")
    reader.close()
    ledger.checkpoint()
    ledger.write([make_record("restarted")])
    assert ledger.count() == 101
    ledger.close()


@pytest.mark.anyio
async def test_backlog_is_bounded_and_overflow_is_refused_loudly(tmp_path) -> None:
    path = tmp_path / "ledger.db"
    ledger = open_ledger(f"sqlite:///{path}?busy_timeout_ms=20")
    writer = AsyncLedgerWriter(ledger, max_pending_records=3, commit_timeout_seconds=None,
                               retry_initial_seconds=0.01, retry_max_seconds=0.05)
    blocker = _lock_sqlite(path)
    held = [asyncio.create_task(writer.write(make_record(f"held-{i}"))) for i in range(3)]
    await _wait_until(lambda: writer.backlog == 3, "three records to queue")
    assert writer.backlog_full
    with pytest.raises(LedgerBacklogFullError, match="overflow not kept"):
        await writer.write(make_record("overflow not kept"))
    assert writer.dropped_total == 1
    blocker.execute("ROLLBACK")
    blocker.close()
    await asyncio.gather(*held)
    assert sorted(r.request_id for r in ledger.records()) == ["held-0", "held-1", "held-2"]
    await writer.aclose()
    ledger.close()


@pytest.mark.anyio
async def test_aclose_flushes_everything_accepted(ledger: Ledger) -> None:
    writer = AsyncLedgerWriter(ledger)
    tasks = [asyncio.create_task(writer.write(make_record(f"f-{i}"))) for i in range(300)]
    await asyncio.sleep(0)  # let every task queue its record
    await writer.aclose()
    assert ledger.count() == 300
    await asyncio.gather(*tasks)
    with pytest.raises(Exception, match="closed"):
        await writer.write(make_record("late"))


@pytest.mark.anyio
async def test_aclose_gives_up_loudly_when_the_database_stays_down(tmp_path) -> None:
    path = tmp_path / "ledger.db"
    ledger = open_ledger(f"sqlite:///{path}?busy_timeout_ms=20")
    writer = AsyncLedgerWriter(ledger, commit_timeout_seconds=None, retry_initial_seconds=0.01,
                               retry_max_seconds=0.05, close_timeout_seconds=0.3)
    blocker = _lock_sqlite(path)
    tasks = [asyncio.create_task(writer.write(make_record(f"lost-{i}"))) for i in range(5)]
    await _wait_until(lambda: writer.backlog == 5, "records to queue")
    with pytest.raises(LedgerUnavailableError, match="5 usage records could not be written"):
        await writer.aclose()
    assert writer.dropped_total == 5
    for outcome in await asyncio.gather(*tasks, return_exceptions=True):
        assert isinstance(outcome, LedgerUnavailableError)
    blocker.close()
    ledger.close()


@pytest.mark.anyio
@pytest.mark.postgres
async def test_postgres_restart_costs_retries_not_records(postgres_server: PostgresServer) -> None:
    server = PostgresServer(postgres_server.bin_dir).start()  # its own, so stopping it harms no test
    try:
        ledger = open_ledger(server.create_database("outage"))
        writer = AsyncLedgerWriter(ledger, commit_timeout_seconds=0.5, retry_initial_seconds=0.05,
                                   retry_max_seconds=0.2)
        await writer.write(make_record("before"))
        await asyncio.to_thread(server.stop)
        with pytest.raises(LedgerUnavailableError, match="stays queued"):
            await writer.write(make_record("during"))
        assert writer.failures_total >= 1
        await asyncio.to_thread(server.start)
        await writer.write(make_record("after"))
        await _wait_until(lambda: writer.backlog == 0, "the queued record to commit")
        await writer.aclose()
        assert sorted(r.request_id for r in ledger.records()) == ["after", "before", "during"]
        ledger.close()
    finally:
        server.destroy()


# --- crash safety: SIGKILL mid-stream, then replay --------------------------------------------

WRITER_SCRIPT = r"""
import asyncio, sys
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from inferplane.ledger import AsyncLedgerWriter, open_ledger
from inferplane.ledger.records import UsageRecord, price

url, count = sys.argv[1], int(sys.argv[2])
start = datetime(2026, 11, 2, tzinfo=timezone.utc)

def record(i):
    prompt, completion = i % 97 + 1, i % 31
    return UsageRecord(
        request_id=f"crash-{i}", key_id=f"key-{i % 3}", tenant="acme", model="nemotron-ultra",
        endpoint="/v1/chat/completions", created_at=start + timedelta(seconds=i),
        prompt_tokens=prompt, completion_tokens=completion, cached_tokens=0,
        input_price_per_million=Decimal("0.60"), output_price_per_million=Decimal("1.80"),
        cost=price(prompt, completion, Decimal("0.60"), Decimal("1.80")), currency="USD",
        status=200, streamed=False, latency_ms=1.0, ttft_ms=None)

async def main():
    ledger = open_ledger(url)
    writer = AsyncLedgerWriter(ledger)
    limit = asyncio.Semaphore(64)  # like 64 concurrent requests in the gateway

    async def one(i):
        async with limit:
            await writer.write(record(i))
            sys.stdout.write(f"crash-{i}\n")
            sys.stdout.flush()

    await asyncio.gather(*(one(i) for i in range(count)))
    await writer.aclose()
    ledger.close()
    print("done", flush=True)

asyncio.run(main())
"""
CRASH_RECORDS = 20_000


def _run_writer(url: str, *, kill_after_lines: int | None) -> list[str]:
    """Run the writer script; SIGKILL it after that many confirmed ids. Returns complete lines."""
    process = subprocess.Popen([sys.executable, "-c", WRITER_SCRIPT, url, str(CRASH_RECORDS)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    try:
        if kill_after_lines is not None:
            while len(lines) < kill_after_lines:
                line = process.stdout.readline()
                assert line, f"writer ended early: {process.stderr.read()}"
                lines.append(line)
            os.kill(process.pid, signal.SIGKILL)
        out, err = process.communicate(timeout=600)
    finally:
        if process.poll() is None:
            process.kill()
    lines += out.splitlines(keepends=True)
    if kill_after_lines is None:
        assert process.returncode == 0, err
    else:
        assert process.returncode == -signal.SIGKILL
    return [line.strip() for line in lines if line.endswith("\n")]  # a torn last line proves nothing


def test_sigkill_loses_no_confirmed_record_and_replay_adds_no_duplicate(ledger_url: str) -> None:
    confirmed = _run_writer(ledger_url, kill_after_lines=500)
    assert "done" not in confirmed, "the writer finished before the kill: nothing was tested"
    with open_ledger(ledger_url) as ledger:
        stored = {record.request_id for record in ledger.records()}
        assert set(confirmed) <= stored
        assert len(stored) < CRASH_RECORDS

    assert _run_writer(ledger_url, kill_after_lines=None)[-1] == "done"  # replay all of it
    with open_ledger(ledger_url) as ledger:
        assert ledger.count() == CRASH_RECORDS
        (total,) = ledger.summary(group_by=())
    expected_prompt = sum(i % 97 + 1 for i in range(CRASH_RECORDS))
    expected_completion = sum(i % 31 for i in range(CRASH_RECORDS))
    assert (total.requests, total.prompt_tokens, total.completion_tokens) == (
        CRASH_RECORDS, expected_prompt, expected_completion)
    assert total.cost == price(expected_prompt, expected_completion, INPUT_PRICE, OUTPUT_PRICE)

    _run_writer(ledger_url, kill_after_lines=None)  # and a second replay changes nothing
    with open_ledger(ledger_url) as ledger:
        assert ledger.count() == CRASH_RECORDS
        assert ledger.summary(group_by=()) == [total]
