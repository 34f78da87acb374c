"""One rule for defaults across commands: the dev state in this directory when present; a file
that is not there is an error that says what to do, never an empty table with status 0."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from inferplane.cli import app
from inferplane.dev import ensure_demo_key
from inferplane.ledger import DEFAULT_DEV_LEDGER_URL, open_ledger

from .test_usage_cli import RECORDS


def run(*args: str):
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("INFERPLANE_LEDGER_URL", raising=False)
    monkeypatch.delenv("INFERPLANE_KEYS_FILE", raising=False)
    return tmp_path


def test_invoice_reads_the_dev_ledger_by_default_like_usage(in_tmp: Path) -> None:
    with open_ledger(DEFAULT_DEV_LEDGER_URL) as ledger:
        ledger.write(RECORDS)
    code, out, err = run("invoice", "--month", "2026-11", "-o", "json")
    assert code == 0, err
    assert sum(line["requests"] for line in json.loads(out)["lines"]) == len(RECORDS)


@pytest.mark.parametrize("command", [["usage"], ["invoice", "--month", "2026-11"]])
def test_reports_without_a_ledger_fail_the_same_way(in_tmp: Path, command: list[str]) -> None:
    code, _, err = run(*command)
    assert code == 2
    assert ".inferplane/dev/ledger.db" in err and "inferplane dev" in err and "--ledger" in err
    assert not (in_tmp / ".inferplane").exists()


@pytest.mark.parametrize("command", [["keys", "list"], ["keys", "revoke", "k-1"],
                                     ["keys", "secret", "--name", "s", "--namespace", "n"]])
def test_a_missing_keys_file_is_an_error(in_tmp: Path, command: list[str]) -> None:
    code, out, err = run(*command)
    assert code == 2 and out == ""
    assert "keys.json does not exist" in err and "inferplane keys create" in err


def test_keys_commands_use_the_dev_keys_when_present(in_tmp: Path) -> None:
    _, key_id = ensure_demo_key(Path(".inferplane/dev"))
    code, out, err = run("keys", "list", "-o", "json")
    assert code == 0, err
    assert [row["id"] for row in json.loads(out)] == [key_id]
    code, _, err = run("keys", "create", "--tenant", "acme")
    assert code == 0, err
    assert "in .inferplane/dev/keys.json" in err
    assert not (in_tmp / "keys.json").exists()


def test_keys_create_starts_a_keys_file_where_there_is_no_dev_state(in_tmp: Path) -> None:
    code, out, err = run("keys", "create", "--tenant", "acme")
    assert code == 0, err
    assert (in_tmp / "keys.json").is_file() and "in keys.json" in err
    code, out, _ = run("keys", "list", "-o", "json")
    assert code == 0 and json.loads(out)[0]["tenant"] == "acme"
