"""`inferplane usage` on real ledgers: table, CSV and JSON, grouping, periods, totals, errors."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from inferplane.cli import app
from inferplane.ledger import DEFAULT_DEV_LEDGER_PATH, DEFAULT_DEV_LEDGER_URL, open_ledger
from inferplane.ledger.records import UsageRecord, price
from inferplane.testing.postgres import postgres_server, postgres_url  # noqa: F401

PRICES = {"nemotron-ultra": (Decimal("0.60"), Decimal("1.80")), "llama-8b": (Decimal("0.15"), Decimal("0.60"))}


def sample_records() -> list[UsageRecord]:
    """Three keys, two models, three UTC days (one record just before midnight), one EUR record."""
    records = []
    start = datetime(2026, 11, 1, 9, 0, tzinfo=timezone.utc)
    for i in range(240):
        model = "nemotron-ultra" if i % 3 else "llama-8b"
        input_price, output_price = PRICES[model]
        prompt, completion = 17 * i + 1, 7 * i % 501
        records.append(UsageRecord(
            request_id=f"req-{i}", key_id=f"key-{i % 3}", tenant=f"tenant-{i % 2}", model=model,
            endpoint="/v1/chat/completions", created_at=start + timedelta(minutes=17 * i),
            prompt_tokens=prompt, completion_tokens=completion, cached_tokens=i % 5,
            reasoning_tokens=completion // 3,
            input_price_per_million=input_price, output_price_per_million=output_price,
            cost=price(prompt, completion, input_price, output_price), currency="USD",
            status=200, streamed=bool(i % 2), latency_ms=100.0, ttft_ms=10.0))
    records.append(UsageRecord(
        request_id="req-eur", key_id="key-0", tenant="tenant-0", model="nemotron-ultra",
        endpoint="/v1/completions", created_at=datetime(2026, 11, 2, 23, 59, 59, tzinfo=timezone.utc),
        prompt_tokens=1000, completion_tokens=1000, cached_tokens=0,
        input_price_per_million=Decimal("0.55"), output_price_per_million=Decimal("1.65"),
        cost=price(1000, 1000, Decimal("0.55"), Decimal("1.65")), currency="EUR",
        status=200, streamed=False, latency_ms=100.0, ttft_ms=None))
    return records


RECORDS = sample_records()
DAYS = sorted({r.created_at.date().isoformat() for r in RECORDS})


def _fill(url: str) -> str:
    with open_ledger(url) as ledger:
        ledger.write(RECORDS)
    return url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def filled_ledger(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return _fill(f"sqlite:///{tmp_path}/ledger.db")
    return _fill(request.getfixturevalue("postgres_url"))


def usage(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["usage", *args])
    return result.exit_code, result.stdout, result.stderr


def expected(records, group_of) -> dict[tuple, dict[str, object]]:
    totals: dict[tuple, dict[str, object]] = defaultdict(
        lambda: {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0,
                 "reasoning_tokens": 0, "cached_tokens": 0, "cost": Decimal(0)})
    for record in records:
        row = totals[group_of(record) + (record.currency,)]
        row["requests"] += 1
        for name in ("prompt_tokens", "completion_tokens", "reasoning_tokens", "cached_tokens",
                     "cost"):
            row[name] += getattr(record, name)
    return dict(totals)


def test_json_rows_and_totals_equal_the_records(filled_ledger: str) -> None:
    code, out, err = usage("--ledger", filled_ledger, "-o", "json")
    assert code == 0, err
    report = json.loads(out)
    assert report["group_by"] == ["key_id", "model", "day", "outcome"]
    assert {row["outcome"] for row in report["rows"]} == {"served"}
    got = {(row["key_id"], row["model"], row["day"], row["currency"]):
           {name: Decimal(row[name]) if name == "cost" else row[name]
            for name in ("requests", "prompt_tokens", "completion_tokens", "reasoning_tokens",
                         "cached_tokens", "cost")}
           for row in report["rows"]}
    assert got == expected(RECORDS, lambda r: (r.key_id, r.model, r.created_at.date().isoformat()))
    totals = {total["currency"]: total for total in report["totals"]}
    assert set(totals) == {"EUR", "USD"}
    usd = [r for r in RECORDS if r.currency == "USD"]
    assert Decimal(totals["USD"]["cost"]) == sum((r.cost for r in usd), Decimal(0))
    assert totals["USD"]["requests"] == len(usd)
    assert totals["USD"]["prompt_tokens"] == sum(r.prompt_tokens for r in usd)
    assert Decimal(totals["EUR"]["cost"]) == Decimal("0.00220")
    # the totals the ledger computed equal the sum of the rows it printed
    assert sum(Decimal(row["cost"]) for row in report["rows"] if row["currency"] == "USD") == \
        Decimal(totals["USD"]["cost"])


def test_csv_parses_and_its_columns_sum_to_the_ledger(filled_ledger: str) -> None:
    code, out, err = usage("--ledger", filled_ledger, "-o", "csv", "--by", "tenant,model")
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert list(rows[0]) == ["tenant", "model", "currency", "requests", "prompt_tokens",
                             "completion_tokens", "reasoning_tokens", "cached_tokens", "cost"]
    got = {(row["tenant"], row["model"], row["currency"]): (int(row["requests"]), Decimal(row["cost"]))
           for row in rows}
    want = {group: (values["requests"], values["cost"])
            for group, values in expected(RECORDS, lambda r: (r.tenant, r.model)).items()}
    assert got == want
    assert sum(int(row["requests"]) for row in rows) == len(RECORDS)
    assert "e-" not in out.lower()  # exact decimals, never scientific notation


def test_table_ends_with_a_total_per_currency(filled_ledger: str) -> None:
    code, out, err = usage("--ledger", filled_ledger, "--by", "key")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["key", "requests"]
    totals = [line.split() for line in lines if line.startswith("TOTAL")]
    usd = [r for r in RECORDS if r.currency == "USD"]
    assert [total[:6] + [Decimal(total[6]), total[7]] for total in totals] == [
        ["TOTAL", "1", "1,000", "1,000", "0", "0", Decimal("0.0022"), "EUR"],
        ["TOTAL", f"{len(usd):,}", f"{sum(r.prompt_tokens for r in usd):,}",
         f"{sum(r.completion_tokens for r in usd):,}", f"{sum(r.reasoning_tokens for r in usd):,}",
         f"{sum(r.cached_tokens for r in usd):,}", sum((r.cost for r in usd), Decimal(0)), "USD"],
    ]
    assert sum(1 for line in lines if line.startswith("key-")) == 3 + 1  # key-0 also has the EUR row
    cost_column = [line.split()[-2] for line in lines if line.startswith(("key-", "TOTAL"))]
    assert len({len(cost) for cost in cost_column}) == 1  # one decimal scale: the points line up


def test_table_of_totals_only(filled_ledger: str) -> None:
    code, out, err = usage("--ledger", filled_ledger, "--by", "")
    assert code == 0, err
    assert [line.split()[0] for line in out.splitlines()[2:]] == ["TOTAL", "TOTAL"]


def test_until_includes_the_named_day_and_since_starts_it(filled_ledger: str) -> None:
    code, out, err = usage("--ledger", filled_ledger, "-o", "json", "--since", DAYS[1], "--until", DAYS[1],
                           "--by", "day")
    assert code == 0, err
    report = json.loads(out)
    assert {row["day"] for row in report["rows"]} == {DAYS[1]}
    in_day = [r for r in RECORDS if r.created_at.date().isoformat() == DAYS[1]]
    assert sum(row["requests"] for row in report["rows"]) == len(in_day)
    assert any(r.created_at.time() >= datetime.strptime("23:59:59", "%H:%M:%S").time() for r in in_day)


def test_totals_only_and_by_month(filled_ledger: str) -> None:
    code, out, _ = usage("--ledger", filled_ledger, "-o", "json", "--by", "")
    report = json.loads(out)
    assert code == 0 and report["group_by"] == []
    assert [row["currency"] for row in report["rows"]] == ["EUR", "USD"]
    assert report["rows"] == report["totals"]
    code, out, _ = usage("--ledger", filled_ledger, "-o", "json", "--by", "month,key")
    assert code == 0
    assert {(row["month"], row["key_id"]) for row in json.loads(out)["rows"]} == {
        ("2026-11", "key-0"), ("2026-11", "key-1"), ("2026-11", "key-2")}


def test_empty_period_prints_no_rows_and_no_totals(filled_ledger: str) -> None:
    code, out, _ = usage("--ledger", filled_ledger, "--since", "2030-01-01")
    assert code == 0
    assert "(no usage recorded in this period)" in out and "TOTAL" not in out
    code, out, _ = usage("--ledger", filled_ledger, "--since", "2030-01-01", "-o", "json")
    assert json.loads(out)["rows"] == [] and json.loads(out)["totals"] == []


def test_default_ledger_is_the_dev_state_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert DEFAULT_DEV_LEDGER_URL == "sqlite:///.inferplane/dev/ledger.db"
    _fill(DEFAULT_DEV_LEDGER_URL)
    assert (tmp_path / DEFAULT_DEV_LEDGER_PATH).is_file()
    code, out, err = usage("-o", "json", "--by", "")
    assert code == 0, err
    assert sum(row["requests"] for row in json.loads(out)["rows"]) == len(RECORDS)


def test_a_missing_ledger_is_an_error_and_is_not_created(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = usage()
    assert code == 2
    assert "no ledger at" in err and ".inferplane/dev/ledger.db" in err and "--ledger" in err
    assert not (tmp_path / ".inferplane").exists()


@pytest.mark.parametrize("args, message", [
    (["--by", "key,week"], "cannot group by week"),
    (["-o", "yaml"], "choose one of table, csv, json"),
    (["--since", "1 Nov"], "not a date"),
    (["--ledger", "mysql://db/ledger"], "unsupported scheme"),
])
def test_bad_options_exit_2_and_say_what_to_do(args: list[str], message: str, tmp_path: Path) -> None:
    ledger = _fill(f"sqlite:///{tmp_path}/ledger.db")
    code, _, err = usage("--ledger", ledger, *args)
    assert code == 2
    assert message in err


def test_the_installed_command_runs(tmp_path: Path) -> None:
    ledger = _fill(f"sqlite:///{tmp_path}/ledger.db")
    result = subprocess.run([sys.executable, "-m", "inferplane.cli", "usage", "--ledger", ledger, "-o", "csv",
                             "--by", "key"], capture_output=True, text=True, check=True)
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert sum(Decimal(row["cost"]) for row in rows if row["currency"] == "USD") == \
        sum((r.cost for r in RECORDS if r.currency == "USD"), Decimal(0))
