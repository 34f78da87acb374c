"""Reports read from the ledger: `inferplane usage` and `inferplane invoice`.

Both read the same default, the ledger of `inferplane dev` in this directory, and both say so when
the ledger they were pointed at does not exist.
"""

from __future__ import annotations

import typer

from inferplane.ledger import (
    DEFAULT_DEV_LEDGER_URL,
    Ledger,
    LedgerConfigError,
    LedgerError,
    LedgerNotFoundError,
    open_ledger,
)

LEDGER_URL_ENV = "INFERPLANE_LEDGER_URL"  # keeps a DSN's password off the command line

LedgerOption = typer.Option(
    DEFAULT_DEV_LEDGER_URL, "--ledger", envvar=LEDGER_URL_ENV,
    help="sqlite:///path.db or postgresql://user@host/db (also read from "
         f"{LEDGER_URL_ENV}, which keeps a password off the command line). "
         "Default: the ledger of `inferplane dev` in this directory.")


def open_for_report(url: str) -> Ledger:
    """Open an existing ledger read-only for a report, or exit with what is wrong and what to do."""
    try:
        return open_ledger(url, create=False)
    except LedgerNotFoundError as missing:
        hint = " -- `inferplane dev` creates it there" if url == DEFAULT_DEV_LEDGER_URL else ""
        typer.echo(f"error: {missing}{hint}; pass --ledger URL to read another ledger", err=True)
        raise typer.Exit(2) from None
    except LedgerConfigError as bad:
        typer.echo(f"error: --ledger: {bad}", err=True)
        raise typer.Exit(2) from None
    except LedgerError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None
