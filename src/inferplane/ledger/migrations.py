"""The ledger's schema, as numbered migrations per database; applied in order when a ledger opens.

To change the schema, append a (version, statements) step to BOTH lists; never edit a step that
has shipped. `schema_version` holds one row per applied step.
"""

from __future__ import annotations

from inferplane.ledger.base import LedgerSchemaError

Migration = tuple[int, tuple[str, ...]]

# SQLite: money and prices are TEXT holding exact decimals (TEXT affinity keeps '0.60' as
# written; NUMERIC affinity would turn it into a float). Times are fixed-width UTC ISO-8601
# text, so comparing text compares times.
SQLITE_MIGRATIONS: tuple[Migration, ...] = (
    (1, (
        """
        CREATE TABLE usage_records (
            request_id               TEXT    NOT NULL PRIMARY KEY,
            key_id                   TEXT    NOT NULL,
            tenant                   TEXT    NOT NULL,
            model                    TEXT    NOT NULL,
            endpoint                 TEXT    NOT NULL,
            created_at               TEXT    NOT NULL,
            prompt_tokens            INTEGER NOT NULL CHECK (prompt_tokens >= 0),
            completion_tokens        INTEGER NOT NULL CHECK (completion_tokens >= 0),
            cached_tokens            INTEGER NOT NULL CHECK (cached_tokens >= 0),
            input_price_per_million  TEXT    NOT NULL,
            output_price_per_million TEXT    NOT NULL,
            cost                     TEXT    NOT NULL,
            currency                 TEXT    NOT NULL,
            status                   INTEGER NOT NULL,
            streamed                 INTEGER NOT NULL,
            latency_ms               REAL    NOT NULL,
            ttft_ms                  REAL,
            recorded_at              TEXT    NOT NULL
                DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now'))
        ) WITHOUT ROWID
        """,
        "CREATE INDEX usage_records_by_time ON usage_records (created_at)",
        "CREATE INDEX usage_records_by_key_time ON usage_records (key_id, created_at)",
    )),
    # 2: the shipped-marker of a sidecar's spool (ledger/shipper.py): 0 = not yet in the central
    # ledger, 1 = shipped, -1 = refused by the central ledger for good (kept here, alerted on).
    # The partial index holds only what waits, so depth and age stay cheap to read.
    (2, (
        "ALTER TABLE usage_records ADD COLUMN shipped INTEGER NOT NULL DEFAULT 0",
        "CREATE INDEX usage_records_unshipped ON usage_records (recorded_at) WHERE shipped = 0",
    )),
    # 3: reasoning tokens (of completion_tokens), as vLLM's reasoning parser reports them.
    (3, (
        "ALTER TABLE usage_records ADD COLUMN reasoning_tokens INTEGER NOT NULL DEFAULT 0 "
        "CHECK (reasoning_tokens >= 0)",
    )),
)

POSTGRES_MIGRATIONS: tuple[Migration, ...] = (
    (1, (
        """
        CREATE TABLE usage_records (
            request_id               text             NOT NULL PRIMARY KEY,
            key_id                   text             NOT NULL,
            tenant                   text             NOT NULL,
            model                    text             NOT NULL,
            endpoint                 text             NOT NULL,
            created_at               timestamptz      NOT NULL,
            prompt_tokens            bigint           NOT NULL CHECK (prompt_tokens >= 0),
            completion_tokens        bigint           NOT NULL CHECK (completion_tokens >= 0),
            cached_tokens            bigint           NOT NULL CHECK (cached_tokens >= 0),
            input_price_per_million  numeric          NOT NULL,
            output_price_per_million numeric          NOT NULL,
            cost                     numeric          NOT NULL,
            currency                 text             NOT NULL,
            status                   integer          NOT NULL,
            streamed                 boolean          NOT NULL,
            latency_ms               double precision NOT NULL,
            ttft_ms                  double precision,
            recorded_at              timestamptz      NOT NULL DEFAULT now()
        )
        """,
        "CREATE INDEX usage_records_by_time ON usage_records (created_at)",
        "CREATE INDEX usage_records_by_key_time ON usage_records (key_id, created_at)",
    )),
    # 2: the central ledger is read per tenant and month by `inferplane invoice`.
    (2, (
        "CREATE INDEX usage_records_by_tenant_time ON usage_records (tenant, created_at)",
    )),
    # 3: reasoning tokens (of completion_tokens), as vLLM's reasoning parser reports them.
    (3, (
        "ALTER TABLE usage_records ADD COLUMN reasoning_tokens bigint NOT NULL DEFAULT 0 "
        "CHECK (reasoning_tokens >= 0)",
    )),
)

SCHEMA_VERSION = max(version for version, _ in SQLITE_MIGRATIONS)
assert SCHEMA_VERSION == max(version for version, _ in POSTGRES_MIGRATIONS), "keep both dialects in step"


def pending_migrations(current_version: int, migrations: tuple[Migration, ...],
                       where: str) -> list[Migration]:
    """Steps newer than `current_version`; refuses a database newer than this code."""
    if current_version > SCHEMA_VERSION:
        raise LedgerSchemaError(
            f"ledger {where} has schema version {current_version}, but this inferplane knows only up "
            f"to {SCHEMA_VERSION}: upgrade inferplane (a ledger is never migrated downwards)")
    return [step for step in migrations if step[0] > current_version]
