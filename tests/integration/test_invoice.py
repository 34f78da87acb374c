"""`inferplane invoice` on real ledgers (SQLite and PostgreSQL): lines per tenant, key and price,
exact totals that equal the sum of the records, month boundaries, and the consistency checks."""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from inferplane.cli import app
from inferplane.ledger import open_ledger
from inferplane.ledger.records import UsageRecord, price
from inferplane.testing.postgres import postgres_server, postgres_url  # noqa: F401

UTC = timezone.utc
OLD_PRICES = (Decimal("0.60"), Decimal("1.80"))
NEW_PRICES = (Decimal("0.5"), Decimal("1.525"))  # from 2026-11-15 on: one line per price pair


def record(n: int, created_at: datetime, key: str, tenant: str, prices=OLD_PRICES,
           currency: str = "EUR", prompt: int | None = None, completion: int | None = None) -> UsageRecord:
    prompt = 13 * n + 7 if prompt is None else prompt
    completion = 29 * n % 997 if completion is None else completion
    return UsageRecord(
        request_id=f"req-{n}", key_id=key, tenant=tenant, model="nvidia/Llama-3_1-Nemotron-Ultra-253B-v1",
        endpoint="/v1/chat/completions", created_at=created_at, prompt_tokens=prompt,
        completion_tokens=completion, cached_tokens=n % 3, reasoning_tokens=completion // 2,
        input_price_per_million=prices[0],
        output_price_per_million=prices[1], cost=price(prompt, completion, *prices),
        currency=currency, status=200, streamed=bool(n % 2), latency_ms=50.0, ttft_ms=5.0)


def sample_records() -> list[UsageRecord]:
    records = []
    start = datetime(2026, 11, 1, tzinfo=UTC)
    for n in range(300):
        created = start + timedelta(hours=2.3 * n)  # runs past the month's end
        key, tenant = [("key_a", "acme"), ("key_b", "acme"), ("key_c", "globex")][n % 3]
        prices = NEW_PRICES if created >= datetime(2026, 11, 15, tzinfo=UTC) else OLD_PRICES
        records.append(record(n, created, key, tenant, prices))
    # The month's edges: the last microsecond is in, the first instants around it are out.
    records.append(record(1001, datetime(2026, 11, 30, 23, 59, 59, 999999, tzinfo=UTC), "key_a", "acme",
                          NEW_PRICES))
    records.append(record(1002, datetime(2026, 12, 1, tzinfo=UTC), "key_a", "acme", NEW_PRICES))
    records.append(record(1003, datetime(2026, 10, 31, 23, 59, 59, 999999, tzinfo=UTC), "key_a", "acme"))
    # A different currency stays on lines and totals of its own.
    records.append(record(1004, datetime(2026, 11, 3, tzinfo=UTC), "key_c", "globex", currency="CHF"))
    return records


RECORDS = sample_records()
NOVEMBER = [r for r in RECORDS if datetime(2026, 11, 1, tzinfo=UTC) <= r.created_at
            < datetime(2026, 12, 1, tzinfo=UTC)]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    url = (f"sqlite:///{tmp_path}/ledger.db" if request.param == "sqlite"
           else request.getfixturevalue("postgres_url"))
    with open_ledger(url) as ledger:
        ledger.write(RECORDS)
    return url


def invoice(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["invoice", *args])
    return result.exit_code, result.stdout, result.stderr


def expected_lines() -> dict[tuple, dict[str, object]]:
    lines: dict[tuple, dict[str, object]] = defaultdict(
        lambda: {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0,
                 "reasoning_tokens": 0, "cached_tokens": 0, "cost": Decimal(0)})
    for r in NOVEMBER:
        line = lines[(r.tenant, r.key_id, r.currency, r.input_price_per_million,
                      r.output_price_per_million)]
        line["requests"] += 1
        for name in ("prompt_tokens", "completion_tokens", "reasoning_tokens", "cached_tokens",
                     "cost"):
            line[name] += getattr(r, name)
    return dict(lines)


def test_json_lines_carry_prices_and_add_up_to_the_records(ledger_url: str) -> None:
    code, out, err = invoice("--month", "2026-11", "--ledger", ledger_url, "-o", "json")
    assert code == 0, err
    document = json.loads(out)
    assert document["period"] == {"since": "2026-11-01", "until": "2026-12-01", "timezone": "UTC",
                                  "until_is": "exclusive"}
    got = {(line["tenant"], line["key_id"], line["currency"], Decimal(line["input_price_per_million"]),
            Decimal(line["output_price_per_million"])):
           {"requests": line["requests"], "prompt_tokens": line["prompt_tokens"],
            "completion_tokens": line["completion_tokens"],
            "reasoning_tokens": line["reasoning_tokens"], "cached_tokens": line["cached_tokens"],
            "cost": Decimal(line["cost"])} for line in document["lines"]}
    assert got == expected_lines()
    # key_a was billed at both prices this month: two lines, each naming its prices.
    assert {(k[3], k[4]) for k in got if k[1] == "key_a" and k[2] == "EUR"} == {OLD_PRICES, NEW_PRICES}
    # Totals per currency: exactly the sum of the month's records, as decimal text.
    totals = {row["currency"]: row for row in document["totals"]}
    for currency in ("EUR", "CHF"):
        month = [r for r in NOVEMBER if r.currency == currency]
        assert Decimal(totals[currency]["cost"]) == sum((r.cost for r in month), Decimal(0))
        assert totals[currency]["requests"] == len(month)
    tenants = {(row["tenant"], row["currency"]): Decimal(row["cost"]) for row in document["tenants"]}
    assert tenants[("acme", "EUR")] == sum((r.cost for r in NOVEMBER
                                           if r.tenant == "acme" and r.currency == "EUR"), Decimal(0))


def test_csv_columns_sum_to_the_totals_and_prices_stay_as_recorded(ledger_url: str) -> None:
    code, out, err = invoice("--month", "2026-11", "--ledger", ledger_url)
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert {row["month"] for row in rows} == {"2026-11"}
    assert {row["input_price_per_million"] for row in rows} == {"0.60", "0.5"}
    eur = [row for row in rows if row["currency"] == "EUR"]
    assert sum(Decimal(row["cost"]) for row in eur) == \
        sum((r.cost for r in NOVEMBER if r.currency == "EUR"), Decimal(0))
    assert sum(int(row["requests"]) for row in rows) == len(NOVEMBER)


def test_out_directory_gets_both_files(ledger_url: str, tmp_path: Path) -> None:
    code, _, err = invoice("--month", "2026-11", "--ledger", ledger_url, "--out", str(tmp_path / "inv"))
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "inv").iterdir()) == ["invoice-2026-11.csv",
                                                                     "invoice-2026-11.json"]


def test_ledger_url_from_the_environment(ledger_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERPLANE_LEDGER_URL", ledger_url)
    code, out, err = invoice("--month", "2026-12", "-o", "json")
    assert code == 0, err
    assert [line["requests"] for line in json.loads(out)["lines"]] == [1]  # only req-1002


def test_an_empty_month_has_no_lines(ledger_url: str) -> None:
    code, out, _ = invoice("--month", "2025-01", "--ledger", ledger_url, "-o", "json")
    assert code == 0
    document = json.loads(out)
    assert document["lines"] == [] and document["totals"] == []


def test_a_record_whose_cost_disagrees_with_its_prices_stops_the_invoice(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/ledger.db"
    tampered = record(1, datetime(2026, 11, 2, tzinfo=UTC), "key_a", "acme", prompt=1000, completion=0)
    tampered = UsageRecord(**{**tampered.__dict__, "cost": tampered.cost + Decimal("0.000001")})
    with open_ledger(url) as ledger:
        ledger.write([tampered])
    code, _, err = invoice("--month", "2026-11", "--ledger", url)
    assert code == 1
    assert "key_a" in err and "cost" in err


@pytest.mark.parametrize("args, message", [
    (["--month", "2026-13"], "YYYY-MM"),
    (["--month", "nov"], "YYYY-MM"),
    (["--month", "2026-11", "-o", "xml"], "csv, json"),
])
def test_bad_options_exit_2(args: list[str], message: str, tmp_path: Path) -> None:
    code, _, err = invoice(*args, "--ledger", f"sqlite:///{tmp_path}/none.db")
    assert code == 2 and message in err


def test_a_missing_ledger_is_an_error_not_an_empty_invoice(tmp_path: Path) -> None:
    code, _, err = invoice("--month", "2026-11", "--ledger", f"sqlite:///{tmp_path}/none.db")
    assert code == 2 and "no ledger" in err and "pass --ledger" in err
    assert not (tmp_path / "none.db").exists()
