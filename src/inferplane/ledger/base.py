"""What every ledger backend shares: the interface, the errors, record checks and time helpers."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from datetime import date, datetime, time, timezone
from decimal import Decimal
from typing import Callable, Sequence

from inferplane.ledger.records import UsageRecord

# What `summary()` can group by; `day` and `month` are UTC calendar periods of `created_at`.
# The prices (as the decimal text they were recorded with) let an invoice show one line per price.
# `outcome` is "served" or "refused" (REFUSED_SQL), `status` the HTTP status the client got.
SUMMARY_GROUPS = ("key_id", "tenant", "model", "endpoint", "day", "month",
                  "input_price_per_million", "output_price_per_million", "outcome", "status")
# A refused request never reached the model: the gateway (or vLLM) answered 4xx before
# generating. 499 (the client left) is served: it is billed for what was generated.
REFUSED_SQL = "(status >= 400 AND status < 500 AND status <> 499)"
OUTCOME_SQL = f"CASE WHEN {REFUSED_SQL} THEN 'refused' ELSE 'served' END"


def is_refused(status: int) -> bool:
    """The Python side of REFUSED_SQL."""
    return 400 <= status < 500 and status != 499

# Fields a database column holds; `recorded_at` (commit time) exists only in the tables.
RECORD_FIELDS = tuple(field.name for field in fields(UsageRecord))


class LedgerError(Exception):
    """Base of every ledger error."""


class LedgerConfigError(LedgerError, ValueError):
    """The ledger URL (or an option in it) is wrong; the message says which forms work."""


class LedgerNotFoundError(LedgerError):
    """Opened with `create=False` and there is no ledger there yet."""


class LedgerSchemaError(LedgerError):
    """The database holds a newer schema than this inferplane knows: upgrade inferplane."""


class LedgerUnavailableError(LedgerError):
    """The database cannot be written right now (down, locked, disk full); worth retrying."""


class LedgerBacklogFullError(LedgerError):
    """The writer's in-memory retry buffer is full; this record was NOT kept."""


class LedgerRecordError(LedgerError, ValueError):
    """This record can never be written (a field has the wrong type or value)."""


@dataclass(frozen=True)
class UsageSummaryRow:
    """Totals of one group (e.g. one key, model and day) in one currency; cost is exact."""

    group: dict[str, str]
    currency: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cost: Decimal
    reasoning_tokens: int = 0  # of completion_tokens


class Ledger(ABC):
    """Durable, idempotent store of usage records keyed by request id."""

    @abstractmethod
    def write(self, records: Sequence[UsageRecord]) -> int:
        """Commit `records` in one transaction; replays are ignored. Returns how many were new.

        Durable when it returns. Raises LedgerUnavailableError when the database cannot be
        written now (nothing was written), LedgerRecordError for a record that never can be.
        """

    @abstractmethod
    def records(self, since: datetime | date | None = None, until: datetime | date | None = None,
                key_id: str | None = None) -> list[UsageRecord]:
        """Records with since <= created_at < until (UTC), oldest first."""

    @abstractmethod
    def summary(self, group_by: Sequence[str] = ("key_id", "model", "day"),
                since: datetime | date | None = None, until: datetime | date | None = None,
                key_id: str | None = None, served_only: bool = False) -> list[UsageSummaryRow]:
        """Token, request and exact cost totals per group (always also per currency);
        `served_only` leaves refused requests out (invoices)."""

    @abstractmethod
    def count(self) -> int:
        """How many records the ledger holds."""

    @abstractmethod
    def close(self) -> None:
        """Release the connections; the ledger cannot be used afterwards."""

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def check_group_by(group_by: Sequence[str]) -> tuple[str, ...]:
    """The group columns in the caller's order, or LedgerConfigError naming the allowed ones."""
    if isinstance(group_by, str):
        group_by = [part.strip() for part in group_by.split(",") if part.strip()]
    unknown = [name for name in group_by if name not in SUMMARY_GROUPS]
    if unknown:
        raise LedgerConfigError(f"cannot group usage by {', '.join(map(repr, unknown))}: "
                                f"choose from {', '.join(SUMMARY_GROUPS)}")
    return tuple(dict.fromkeys(group_by))  # drop repeats, keep order


def to_utc(moment: datetime | date | None) -> datetime | None:
    """A bound or timestamp as an aware UTC datetime; a date means its midnight UTC.

    Naive datetimes are taken as UTC (the gateway's records are UTC by contract) rather than
    rejected, so a record is never lost over a missing tzinfo.
    """
    if moment is None:
        return None
    if not isinstance(moment, datetime):
        return datetime.combine(moment, time.min, tzinfo=timezone.utc)
    if moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def iso_utc(moment: datetime) -> str:
    """Fixed-width ISO-8601 in UTC (microseconds, +00:00), so text order is time order."""
    utc = to_utc(moment)
    assert utc is not None
    return utc.isoformat(timespec="microseconds")


def _check_text(name: str, value: object, *, required: bool = True) -> None:
    if not isinstance(value, str):
        raise LedgerRecordError(f"usage record field {name!r} must be a string, got {type(value).__name__}")
    if required and not value:
        raise LedgerRecordError(f"usage record field {name!r} must not be empty")
    if "\x00" in value:
        raise LedgerRecordError(f"usage record field {name!r} must not contain NUL characters")


def _check_count(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise LedgerRecordError(f"usage record field {name!r} must be an int >= 0, got {value!r}")


def _check_money(name: str, value: object) -> None:
    # Money is Decimal all the way: a float here would already have lost exactness.
    if not isinstance(value, Decimal) or not value.is_finite():
        raise LedgerRecordError(f"usage record field {name!r} must be a finite Decimal, got {value!r}")


def _check_millis(name: str, value: object, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise LedgerRecordError(f"usage record field {name!r} must be a finite number of ms, got {value!r}")


def _plainly_valid(record: object) -> bool:
    """The common case in one expression: exact types, nothing to explain (a record the gateway
    made). Anything else, subclasses included, takes the field-by-field check."""
    r = record
    return (type(r) is UsageRecord
            and type(r.request_id) is str and r.request_id != "" and "\x00" not in r.request_id
            and type(r.key_id) is str and "\x00" not in r.key_id
            and type(r.tenant) is str and "\x00" not in r.tenant
            and type(r.model) is str and "\x00" not in r.model
            and type(r.endpoint) is str and "\x00" not in r.endpoint
            and type(r.currency) is str and "\x00" not in r.currency
            and type(r.created_at) is datetime
            and type(r.prompt_tokens) is int and r.prompt_tokens >= 0
            and type(r.completion_tokens) is int and r.completion_tokens >= 0
            and type(r.cached_tokens) is int and r.cached_tokens >= 0
            and type(r.reasoning_tokens) is int and r.reasoning_tokens >= 0
            and type(r.input_price_per_million) is Decimal and r.input_price_per_million.is_finite()
            and type(r.output_price_per_million) is Decimal
            and r.output_price_per_million.is_finite()
            and type(r.cost) is Decimal and r.cost.is_finite()
            and type(r.status) is int and type(r.streamed) is bool
            and type(r.latency_ms) is float and math.isfinite(r.latency_ms)
            and (r.ttft_ms is None or type(r.ttft_ms) is float and math.isfinite(r.ttft_ms)))


def check_record(record: UsageRecord) -> None:
    """Raise LedgerRecordError (naming the field) for a record no database would accept.

    Checked before a record is queued, so that one bad record cannot block a batch.
    """
    if _plainly_valid(record):
        return
    if not isinstance(record, UsageRecord):
        raise LedgerRecordError(f"expected a UsageRecord, got {type(record).__name__}")
    _check_text("request_id", record.request_id)
    for name in ("key_id", "tenant", "model", "endpoint", "currency"):
        # Empty is allowed (e.g. no tenant when auth is off): refusing would lose the record.
        _check_text(name, getattr(record, name), required=False)
    if not isinstance(record.created_at, datetime):
        raise LedgerRecordError(f"usage record field 'created_at' must be a datetime, got {record.created_at!r}")
    for name in ("prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens"):
        _check_count(name, getattr(record, name))
    for name in ("input_price_per_million", "output_price_per_million", "cost"):
        _check_money(name, getattr(record, name))
    if isinstance(record.status, bool) or not isinstance(record.status, int):
        raise LedgerRecordError(f"usage record field 'status' must be an int, got {record.status!r}")
    if not isinstance(record.streamed, bool):
        raise LedgerRecordError(f"usage record field 'streamed' must be a bool, got {record.streamed!r}")
    _check_millis("latency_ms", record.latency_ms)
    _check_millis("ttft_ms", record.ttft_ms, optional=True)


def checked_rows(records: Sequence[UsageRecord], encode: Callable[[UsageRecord], tuple]) -> list[tuple]:
    """Every record checked (a bad one refuses the whole batch before anything is written), then
    encoded for a backend's INSERT."""
    for record in records:
        check_record(record)
    return [encode(record) for record in records]
