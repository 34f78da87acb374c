"""`inferplane usage`: token, request and cost totals from the ledger, as a table, CSV or JSON.

Costs are exact Decimals end to end (summed by the database, printed without rounding) and
each row carries its currency; totals are computed by the ledger separately from the rows.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Optional, Sequence

import typer

from inferplane.ledger import SUMMARY_GROUPS, Ledger, LedgerError, UsageSummaryRow
from inferplane.reports import LedgerOption, open_for_report
from inferplane.reports.cells import safe_cell

# What users type after --by, and the header each group gets in the table.
GROUP_ALIASES = {"key": "key_id", "key_id": "key_id", "tenant": "tenant", "model": "model",
                 "endpoint": "endpoint", "day": "day", "month": "month", "outcome": "outcome",
                 "status": "status"}
GROUP_HEADERS = {"key_id": "key", "tenant": "tenant", "model": "model", "endpoint": "endpoint",
                 "day": "day (UTC)", "month": "month (UTC)", "outcome": "outcome",
                 "status": "status"}
# Served requests reached the model (499, the client left, included: it is billed); refused ones
# were answered 4xx before generating (401/403/404/429, bad requests) and cost nothing.
DEFAULT_GROUPS = "key,model,day,outcome"
# reasoning_tokens are part of completion_tokens (billed at the output price), shown apart.
MEASURES = ("requests", "prompt_tokens", "completion_tokens", "reasoning_tokens", "cached_tokens",
            "cost")
OUTPUT_FORMATS = ("table", "csv", "json")


@dataclass(frozen=True)
class UsageReport:
    """Rows per group, and totals per currency, for since <= created_at < until (UTC)."""

    group_by: tuple[str, ...]
    since: datetime | date | None
    until: datetime | date | None
    rows: list[UsageSummaryRow]
    totals: list[UsageSummaryRow]


def build_report(ledger: Ledger, group_by: Sequence[str] = ("key_id", "model", "day"),
                 since: datetime | date | None = None, until: datetime | date | None = None) -> UsageReport:
    """Query the rows and, separately, the per-currency totals."""
    rows = ledger.summary(group_by=group_by, since=since, until=until)
    totals = ledger.summary(group_by=(), since=since, until=until)
    return UsageReport(tuple(group_by), since, until, rows, totals)


def _cost(value: Decimal) -> str:
    return format(value, "f")  # exact, never scientific notation


def _row_dict(row: UsageSummaryRow) -> dict[str, object]:
    return {**row.group, "currency": row.currency, "requests": row.requests,
            "prompt_tokens": row.prompt_tokens, "completion_tokens": row.completion_tokens,
            "reasoning_tokens": row.reasoning_tokens, "cached_tokens": row.cached_tokens,
            "cost": _cost(row.cost)}


def render_json(report: UsageReport) -> str:
    """Machine output: costs as decimal strings, so they stay exact through any JSON parser."""
    document = {
        "group_by": list(report.group_by),
        "since": report.since.isoformat() if report.since else None,
        "until": report.until.isoformat() if report.until else None,
        "rows": [_row_dict(row) for row in report.rows],
        "totals": [_row_dict(row) for row in report.totals],
    }
    return json.dumps(document, indent=2)


def render_csv(report: UsageReport) -> str:
    """One header line and one line per group; no totals line, so summing a column is right."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*report.group_by, "currency", *MEASURES])
    for row in report.rows:
        values = _row_dict(row)
        writer.writerow([safe_cell(values[name]) if name in report.group_by else values[name]
                         for name in (*report.group_by, "currency", *MEASURES)])
    return buffer.getvalue()


def render_table(report: UsageReport) -> str:
    """Aligned columns with a TOTAL line per currency; costs padded to one decimal scale."""
    labels = [GROUP_HEADERS[name] for name in report.group_by] or [""]
    headers = labels + ["requests", "prompt tokens", "completion tokens", "reasoning tokens",
                        "cached tokens", "cost", "currency"]
    shown = ([] if not report.group_by else report.rows) + report.totals
    # Padding with zeros keeps the value exact and lines the decimal points up.
    places = max((-row.cost.as_tuple().exponent for row in shown if row.cost.as_tuple().exponent < 0), default=0)

    def cells(row: UsageSummaryRow, label_cells: list[str]) -> list[str]:
        cost = row.cost.quantize(Decimal(1).scaleb(-places)) if places else row.cost
        return label_cells + [f"{row.requests:,}", f"{row.prompt_tokens:,}", f"{row.completion_tokens:,}",
                              f"{row.reasoning_tokens:,}", f"{row.cached_tokens:,}", _cost(cost),
                              row.currency]

    body = [cells(row, [safe_cell(row.group[name]) for name in report.group_by])
            for row in (report.rows if report.group_by else [])]
    totals = [cells(row, ["TOTAL"] + [""] * (len(labels) - 1)) for row in report.totals]
    widths = [max(len(line[i]) for line in [headers, *body, *totals]) for i in range(len(headers))]
    measures = range(len(labels), len(headers) - 1)  # right-aligned; labels and currency left

    def line(values: list[str]) -> str:
        return "  ".join(value.rjust(widths[i]) if i in measures else value.ljust(widths[i])
                         for i, value in enumerate(values)).rstrip()

    rule = "  ".join("-" * width for width in widths)
    lines = [line(headers), rule, *(line(values) for values in body)]
    if not report.rows:
        lines.append("(no usage recorded in this period)")
    if totals:
        if body:
            lines.append(rule)
        lines += [line(values) for values in totals]
    return "\n".join(lines)


def parse_group_by(text: str) -> tuple[str, ...]:
    """`key,model,day` -> ('key_id', 'model', 'day'); an empty text gives totals only."""
    names = [part.strip().lower() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in GROUP_ALIASES]
    if unknown:
        raise typer.BadParameter(f"cannot group by {', '.join(unknown)}; choose from "
                                 f"{', '.join(n for n in GROUP_ALIASES if n != 'key_id')}", param_hint="--by")
    groups = tuple(dict.fromkeys(GROUP_ALIASES[name] for name in names))
    assert set(groups) <= set(SUMMARY_GROUPS)
    return groups


def parse_bound(text: Optional[str], option: str, *, end_of_day: bool) -> datetime | date | None:
    """YYYY-MM-DD (UTC day; for --until the day is included) or an ISO-8601 time (exclusive)."""
    if text is None:
        return None
    try:
        day = date.fromisoformat(text)
    except ValueError:
        pass
    else:
        return day + timedelta(days=1) if end_of_day else day
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a date: write YYYY-MM-DD (UTC) or an ISO-8601 time",
                                 param_hint=option) from None


def usage_command(
    ledger: str = LedgerOption,
    since: Optional[str] = typer.Option(None, "--since", help="First UTC day (YYYY-MM-DD) or ISO-8601 time."),
    until: Optional[str] = typer.Option(None, "--until",
                                        help="Last UTC day, included (YYYY-MM-DD), or an ISO-8601 time (excluded)."),
    by: str = typer.Option(DEFAULT_GROUPS, "--by",
                           help="Group by any of key, tenant, model, endpoint, day, month, outcome "
                                "(served/refused), status ('' = totals only)."),
    output: str = typer.Option("table", "--output", "-o", help="table, csv or json"),
) -> None:
    """Report usage by key, model, day and outcome (served or refused): requests, tokens and
    exact cost totals.

    \b
    Example:  inferplane usage --since 2026-11-01 --by key,model,status -o csv
    """
    if output not in OUTPUT_FORMATS:
        raise typer.BadParameter(f"choose one of {', '.join(OUTPUT_FORMATS)}, not {output!r}", param_hint="--output")
    group_by = parse_group_by(by)
    lower = parse_bound(since, "--since", end_of_day=False)
    upper = parse_bound(until, "--until", end_of_day=True)
    opened = open_for_report(ledger)
    try:
        report = build_report(opened, group_by, lower, upper)
    except LedgerError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None
    finally:
        opened.close()
    rendered = {"table": render_table, "csv": render_csv, "json": render_json}[output](report)
    typer.echo(rendered, nl=not rendered.endswith("\n"))
