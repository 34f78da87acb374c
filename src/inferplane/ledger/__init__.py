"""The durable usage ledger: every response's UsageRecord, keyed (idempotently) by request id.

    ledger = open_ledger("sqlite:///.inferplane/dev/ledger.db")   # or postgresql://...
    writer = AsyncLedgerWriter(ledger)        # in the gateway: await writer.write(record)
    ledger.summary(group_by=("key_id", "model", "day"))

SQLite (WAL) is the default, one file beside the gateway; PostgreSQL serves several replicas.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

from inferplane.ledger.base import (
    SUMMARY_GROUPS,
    Ledger,
    LedgerBacklogFullError,
    LedgerConfigError,
    LedgerError,
    LedgerNotFoundError,
    LedgerRecordError,
    LedgerSchemaError,
    LedgerUnavailableError,
    UsageSummaryRow,
)
from inferplane.ledger.migrations import SCHEMA_VERSION

if TYPE_CHECKING:
    from inferplane.ledger.writer import AsyncLedgerWriter

# Where `inferplane dev` keeps its ledger and where `inferplane usage` looks by default
# (relative to the current directory).
DEFAULT_DEV_LEDGER_PATH = Path(".inferplane") / "dev" / "ledger.db"
DEFAULT_DEV_LEDGER_URL = f"sqlite:///{DEFAULT_DEV_LEDGER_PATH.as_posix()}"

URL_FORMS = ("sqlite:///relative/path.db", "sqlite:////absolute/path.db",
             "postgresql://user[:password]@host[:port]/database")
_SQLITE_OPTIONS = {"synchronous": str, "busy_timeout_ms": int}

__all__ = [
    "AsyncLedgerWriter", "DEFAULT_DEV_LEDGER_PATH", "DEFAULT_DEV_LEDGER_URL", "Ledger",
    "LedgerBacklogFullError", "LedgerConfigError", "LedgerError", "LedgerNotFoundError",
    "LedgerRecordError", "LedgerSchemaError", "LedgerUnavailableError", "SCHEMA_VERSION",
    "SUMMARY_GROUPS", "UsageSummaryRow", "open_ledger", "sqlite_path",
]


def __getattr__(name: str) -> object:
    # The writer pulls in asyncio; `inferplane usage` and the rest of the CLI never need it.
    if name == "AsyncLedgerWriter":
        from inferplane.ledger.writer import AsyncLedgerWriter

        return AsyncLedgerWriter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _bad_url(url: str, problem: str) -> LedgerConfigError:
    from inferplane.ledger.postgres import redact_url

    return LedgerConfigError(f"ledger URL {redact_url(url)!r}: {problem}; use one of: {', '.join(URL_FORMS)}")


def sqlite_path(url: str) -> Path:
    """The file a `sqlite:///...` URL names (three slashes: relative, four: absolute)."""
    parts = urlsplit(url)
    if parts.scheme != "sqlite":
        raise _bad_url(url, "not a sqlite:// URL")
    if parts.netloc:
        raise _bad_url(url, "a SQLite URL has no host (write three slashes before a relative path)")
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    if not path or path == ":memory:":
        raise _bad_url(url, "name a database file (an in-memory ledger would not be durable)")
    return Path(path)


def open_ledger(url: str, *, create: bool = True) -> Ledger:
    """Open (creating and migrating as needed) the ledger at `url`.

    `create=False` raises LedgerNotFoundError instead of creating an empty ledger (for reports).
    SQLite options go in the query: `?synchronous=full` (fsync each commit; default normal),
    `?busy_timeout_ms=5000`.
    """
    scheme = urlsplit(url).scheme if "://" in url else ""
    if scheme == "sqlite":
        from inferplane.ledger.sqlite import SQLiteLedger

        path = sqlite_path(url)
        options: dict[str, object] = {}
        for name, values in parse_qs(urlsplit(url).query, keep_blank_values=True).items():
            if name not in _SQLITE_OPTIONS:
                raise _bad_url(url, f"unknown SQLite option {name!r} (known: {', '.join(_SQLITE_OPTIONS)})")
            try:
                options[name] = _SQLITE_OPTIONS[name](values[-1])
            except ValueError:
                raise _bad_url(url, f"option {name!r} must be a number, not {values[-1]!r}") from None
        try:
            return SQLiteLedger(path, create=create, **options)  # type: ignore[arg-type]
        except ValueError as error:
            if isinstance(error, LedgerError):
                raise
            raise _bad_url(url, str(error)) from None
    if scheme in ("postgresql", "postgres"):
        from inferplane.ledger.postgres import PostgresLedger

        return PostgresLedger(url, create=create)
    raise _bad_url(url, f"unsupported scheme {scheme!r}" if scheme else "not a URL")
