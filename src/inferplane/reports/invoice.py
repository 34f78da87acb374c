"""`inferplane invoice`: one month of the central ledger as invoice lines per tenant and key.

A line is one (tenant, key, model, currency, input price, output price): a key whose price
changed within the month gets one line per price, each with the per-million prices it was billed
at. Costs are exact Decimals summed by the database and never rounded here (rounding to the
currency's minor unit is the billing system's decision, made once on the total). Before anything
is printed the invoice is checked: each line's cost equals its tokens at its prices, and the
lines add up to the ledger's own per-currency totals, queried separately.
"""

from __future__ import annotations

import csv
import decimal
import io
import json
import re
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Optional

import typer

from inferplane.ledger import Ledger, LedgerError, UsageSummaryRow
from inferplane.reports import LedgerOption, open_for_report
from inferplane.reports.cells import safe_cell

LINE_GROUPS = ("tenant", "key_id", "model", "input_price_per_million", "output_price_per_million")
LINE_COLUMNS = ("month", "tenant", "key_id", "model", "currency", "input_price_per_million",
                "output_price_per_million", "requests", "prompt_tokens", "completion_tokens",
                "reasoning_tokens", "cached_tokens", "cost")
_TEXT_COLUMNS = ("tenant", "key_id", "model", "currency")
OUTPUT_FORMATS = ("csv", "json")
_MONTH = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")
_EXACT = decimal.Context(prec=200, traps=[decimal.Inexact, decimal.Overflow, decimal.InvalidOperation])


class InvoiceMismatchError(LedgerError):
    """The lines do not add up to the ledger's totals, or a line's cost to its tokens and prices."""


@dataclass(frozen=True)
class InvoiceLine:
    """Usage of one key at one pair of prices in one month; `cost` is the exact sum of records."""

    tenant: str
    key_id: str
    model: str
    currency: str
    input_price_per_million: Decimal
    output_price_per_million: Decimal
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cost: Decimal
    reasoning_tokens: int = 0  # of completion_tokens, billed at the output price with them


@dataclass(frozen=True)
class Invoice:
    """A month's lines, per-tenant subtotals and per-currency totals (all exact)."""

    month: str
    since: date
    until: date
    lines: list[InvoiceLine]
    tenants: list[UsageSummaryRow]
    totals: list[UsageSummaryRow]


def month_bounds(month: str) -> tuple[date, date]:
    """`2026-11` -> (2026-11-01, 2026-12-01): the UTC month, end exclusive."""
    match = _MONTH.match(month)
    if not match:
        raise ValueError(f"{month!r} is not a month; write YYYY-MM, e.g. 2026-11")
    year, number = int(match.group(1)), int(match.group(2))
    start = date(year, number, 1)
    return start, date(year + number // 12, number % 12 + 1, 1)


def build_invoice(ledger: Ledger, month: str) -> Invoice:
    """Query the lines and, separately, the totals; raise InvoiceMismatchError if they disagree."""
    since, until = month_bounds(month)
    # Refused requests (4xx before the model ran: unknown models, limits, bad requests) are no
    # invoice lines; they cost nothing and `inferplane usage --by outcome` counts them.
    rows = ledger.summary(group_by=LINE_GROUPS, since=since, until=until, served_only=True)
    lines = [InvoiceLine(
        tenant=row.group["tenant"], key_id=row.group["key_id"], model=row.group["model"],
        currency=row.currency,
        input_price_per_million=Decimal(row.group["input_price_per_million"]),
        output_price_per_million=Decimal(row.group["output_price_per_million"]),
        requests=row.requests, prompt_tokens=row.prompt_tokens,
        completion_tokens=row.completion_tokens, cached_tokens=row.cached_tokens,
        cost=Decimal(row.cost), reasoning_tokens=row.reasoning_tokens) for row in rows]
    tenants = ledger.summary(group_by=("tenant",), since=since, until=until, served_only=True)
    totals = ledger.summary(group_by=(), since=since, until=until, served_only=True)
    invoice = Invoice(month, since, until, lines, tenants, totals)
    check_invoice(invoice)
    return invoice


def check_invoice(invoice: Invoice) -> None:
    """Each line's cost is its tokens at its prices; lines add up to tenants and to totals."""
    for line in invoice.lines:
        priced = _EXACT.divide(
            _EXACT.add(_EXACT.multiply(Decimal(line.prompt_tokens), line.input_price_per_million),
                       _EXACT.multiply(Decimal(line.completion_tokens), line.output_price_per_million)),
            Decimal(1_000_000))
        if priced != line.cost:
            raise InvoiceMismatchError(
                f"{invoice.month} key {line.key_id} at {line.input_price_per_million}/"
                f"{line.output_price_per_million} per million: records cost {line.cost}, but its "
                f"tokens at those prices cost {priced}")
    for name, expected, key in (("tenant", invoice.tenants, lambda l: (l.tenant, l.currency)),
                                ("total", invoice.totals, lambda l: ("", l.currency))):
        summed: dict[tuple[str, str], list] = {}
        for line in invoice.lines:
            entry = summed.setdefault(key(line), [0, 0, 0, Decimal(0)])
            entry[0] += line.requests
            entry[1] += line.prompt_tokens
            entry[2] += line.completion_tokens
            entry[3] = _EXACT.add(entry[3], line.cost)
        wanted = {(row.group.get("tenant", ""), row.currency):
                  [row.requests, row.prompt_tokens, row.completion_tokens, Decimal(row.cost)]
                  for row in expected}
        if summed != wanted:
            raise InvoiceMismatchError(f"{invoice.month}: the lines add up to {summed} per {name}, "
                                       f"but the ledger's {name}s are {wanted}")


def _money(value: Decimal) -> str:
    return format(value, "f")  # exact, never scientific notation


def _line_dict(invoice: Invoice, line: InvoiceLine) -> dict[str, object]:
    return {"month": invoice.month, "tenant": line.tenant, "key_id": line.key_id, "model": line.model,
            "currency": line.currency,
            "input_price_per_million": _money(line.input_price_per_million),
            "output_price_per_million": _money(line.output_price_per_million),
            "requests": line.requests, "prompt_tokens": line.prompt_tokens,
            "completion_tokens": line.completion_tokens,
            "reasoning_tokens": line.reasoning_tokens, "cached_tokens": line.cached_tokens,
            "cost": _money(line.cost)}


def _sum_dict(row: UsageSummaryRow) -> dict[str, object]:
    return {**row.group, "currency": row.currency, "requests": row.requests,
            "prompt_tokens": row.prompt_tokens, "completion_tokens": row.completion_tokens,
            "reasoning_tokens": row.reasoning_tokens, "cached_tokens": row.cached_tokens,
            "cost": _money(Decimal(row.cost))}


def render_csv(invoice: Invoice) -> str:
    """A header and one row per line; no totals row, so summing a column stays right."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(LINE_COLUMNS)
    for line in invoice.lines:
        values = _line_dict(invoice, line)
        writer.writerow([safe_cell(values[name]) if name in _TEXT_COLUMNS else values[name]
                         for name in LINE_COLUMNS])
    return buffer.getvalue()


def render_json(invoice: Invoice) -> str:
    """Lines, per-tenant subtotals and per-currency totals; money as decimal strings."""
    return json.dumps({
        "month": invoice.month,
        "period": {"since": invoice.since.isoformat(), "until": invoice.until.isoformat(),
                   "timezone": "UTC", "until_is": "exclusive"},
        "lines": [_line_dict(invoice, line) for line in invoice.lines],
        "tenants": [_sum_dict(row) for row in invoice.tenants],
        "totals": [_sum_dict(row) for row in invoice.totals],
    }, indent=2) + "\n"


RENDERERS = {"csv": render_csv, "json": render_json}


def invoice_command(
    month: str = typer.Option(..., "--month", help="The UTC month to invoice, YYYY-MM."),
    ledger: str = LedgerOption,
    output: Optional[str] = typer.Option(None, "--output", "-o",
                                         help="csv or json; default: csv on stdout, both with --out"),
    out: Optional[Path] = typer.Option(None, "--out", help="Directory for invoice-YYYY-MM.csv/.json."),
) -> None:
    """Export a month's invoice lines per tenant and key, with the prices used, exact to the cent's
    last fraction.

    \b
    Example:  export INFERPLANE_LEDGER_URL=postgresql://billing@db.internal/ledger
              inferplane invoice --month 2026-11 --out invoices/
    """
    if output is not None and output not in OUTPUT_FORMATS:
        raise typer.BadParameter(f"choose one of {', '.join(OUTPUT_FORMATS)}, not {output!r}",
                                 param_hint="--output")
    try:
        month_bounds(month)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--month") from None
    opened = open_for_report(ledger)
    try:
        invoice = build_invoice(opened, month)
    except LedgerError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None
    finally:
        opened.close()
    if out is None:
        rendered = RENDERERS[output or "csv"](invoice)
        typer.echo(rendered, nl=False)
        return
    out.mkdir(parents=True, exist_ok=True)
    for name in ([output] if output else list(OUTPUT_FORMATS)):
        path = out / f"invoice-{month}.{name}"
        path.write_text(RENDERERS[name](invoice))
        typer.echo(f"wrote {path} ({len(invoice.lines)} lines)", err=True)
