"""Keys: hashed storage, the `inferplane keys` commands, reloads (incl. Kubernetes' symlink swap)
and the 401 paths of authentication."""

from __future__ import annotations

import json
import os
import stat
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from inferplane.cli import app
from inferplane.gateway.auth import authenticate
from inferplane.gateway.errors import GatewayError
from inferplane.gateway.keys import (
    KeysFile,
    KeyStore,
    create_key,
    hash_key,
    load_keys_file,
    parse_expiry,
    revoke_key,
    save_keys_file,
)

runner = CliRunner()


def test_keys_are_random_prefixed_and_stored_only_as_sha256(tmp_path):
    keys_file = KeysFile()
    key, entry = create_key(keys_file, tenant="acme")
    other, _ = create_key(keys_file, tenant="acme")
    assert key.startswith("ip-") and len(key) >= 40 and key != other
    path = tmp_path / "keys.json"
    save_keys_file(path, keys_file)
    text = path.read_text()
    assert key not in text and other not in text
    assert entry.sha256 == hash_key(key) and entry.sha256 in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_cli_create_prints_the_key_once_and_list_never_does(tmp_path):
    path = tmp_path / "keys.json"
    created = runner.invoke(app, ["keys", "create", "--tenant", "acme", "--name", "ci",
                                  "--model", "m1", "--rpm", "60", "--tpm", "1000",
                                  "--budget", "12.50", "--expires", "30d", "--reasoning", "off",
                                  "--file", str(path)])
    assert created.exit_code == 0, created.output
    key = created.stdout.strip()
    assert key.startswith("ip-")
    entry = load_keys_file(path).keys[0]
    assert (entry.tenant, entry.name, entry.models, entry.rpm, entry.tpm) == \
        ("acme", "ci", ["m1"], 60, 1000)
    assert entry.monthly_budget == Decimal("12.50") and entry.reasoning_default is False
    assert entry.expires_at > datetime.now(timezone.utc) + timedelta(days=29)

    listed = runner.invoke(app, ["keys", "list", "--file", str(path)])
    assert listed.exit_code == 0 and entry.id in listed.stdout and "active" in listed.stdout
    assert key not in listed.stdout
    as_json = json.loads(runner.invoke(app, ["keys", "list", "-o", "json", "--file",
                                             str(path)]).stdout)
    assert as_json[0]["id"] == entry.id and "sha256" not in as_json[0]

    revoked = runner.invoke(app, ["keys", "revoke", entry.id, "--file", str(path)])
    assert revoked.exit_code == 0
    assert load_keys_file(path).keys[0].revoked
    assert "revoked" in runner.invoke(app, ["keys", "list", "--file", str(path)]).stdout


def test_cli_rejects_bad_values_naming_the_option(tmp_path):
    path = str(tmp_path / "keys.json")
    for args, option in ([["--budget", "lots"], "--budget"], [["--expires", "soon"], "--expires"],
                         [["--reasoning", "maybe"], "--reasoning"]):
        result = runner.invoke(app, ["keys", "create", "--tenant", "t", "--file", path, *args])
        assert result.exit_code == 2 and option in result.output
    assert runner.invoke(app, ["keys", "revoke", "key_nope", "--file", path]).exit_code == 2  # no file
    assert runner.invoke(app, ["keys", "create", "--tenant", "t", "--file", path]).exit_code == 0
    assert runner.invoke(app, ["keys", "revoke", "key_nope", "--file", path]).exit_code == 1


def test_cli_secret_is_the_manifest_kubectl_applies(tmp_path):
    path = tmp_path / "keys.json"
    runner.invoke(app, ["keys", "create", "--tenant", "acme", "--file", str(path)])
    result = runner.invoke(app, ["keys", "secret", "--file", str(path)])  # shipped example
    assert result.exit_code == 0, result.output
    secret = yaml.safe_load(result.stdout)
    assert secret["kind"] == "Secret" and secret["metadata"]["name"] == "nemotron-ultra-api-keys"
    assert secret["metadata"]["namespace"] == "inferplane"
    assert KeysFile.model_validate(json.loads(secret["stringData"]["keys.json"])).keys


def test_parse_expiry_forms():
    now = datetime(2026, 11, 28, 12, 0, tzinfo=timezone.utc)
    assert parse_expiry("2d", now) == now + timedelta(days=2)
    assert parse_expiry("2026-12-31", now) == datetime(2026, 12, 31, tzinfo=timezone.utc)
    with pytest.raises(ValueError, match="30d"):
        parse_expiry("tomorrow", now)


def make_store(tmp_path, **key_fields):
    keys_file = KeysFile()
    key, entry = create_key(keys_file, tenant="acme", **key_fields)
    path = tmp_path / "keys.json"
    save_keys_file(path, keys_file)
    store = KeyStore(path)
    store.reload_if_changed()
    return store, keys_file, key, entry


@pytest.mark.parametrize("header, reason", [
    (None, "missing"), (b"", "missing"), (b"Basic abc", "malformed"), (b"Bearer ", "malformed"),
    (b"Bearer ip-wrong", "unknown"), (b"Bearer \xff\xfe", "malformed"),
    (b"Bearer " + b"x" * 1000, "malformed"),
])
def test_authenticate_refuses_with_401(tmp_path, header, reason):
    store, *_ = make_store(tmp_path)
    with pytest.raises(GatewayError) as caught:
        authenticate(header, store, 0.0)
    assert (caught.value.status, caught.value.code, caught.value.reason) == \
        (401, "invalid_api_key", reason)


def test_authenticate_accepts_any_bearer_case_and_refuses_expired_and_revoked(tmp_path):
    expires = datetime(2030, 1, 1, tzinfo=timezone.utc)
    store, keys_file, key, entry = make_store(tmp_path, expires_at=expires)
    assert authenticate(b"bearer " + key.encode(), store, 0.0).key_id == entry.id
    with pytest.raises(GatewayError) as caught:
        authenticate(b"Bearer " + key.encode(), store, expires.timestamp())
    assert caught.value.reason == "expired"
    revoke_key(keys_file, entry.id)
    save_keys_file(store.path, keys_file)
    assert store.reload_if_changed()
    with pytest.raises(GatewayError) as caught:
        authenticate(b"Bearer " + key.encode(), store, 0.0)
    assert caught.value.reason == "revoked"


def test_store_keeps_the_last_good_keys_when_the_file_turns_invalid(tmp_path):
    store, _, key, entry = make_store(tmp_path)
    store.path.write_text('{"version": 1, "keys": [{"id": "oops"}]}')
    assert not store.reload_if_changed()
    assert store.reload_failures == 1
    assert store.lookup(key).key_id == entry.id


def test_store_follows_a_kubernetes_secret_symlink_swap(tmp_path):
    """kubelet writes a new timestamped dir, then atomically re-points `..data`."""
    def secret_version(name: str, keys_file: KeysFile) -> None:
        save_keys_file(tmp_path / name / "keys.json", keys_file)

    first, second = KeysFile(), KeysFile()
    key1, _ = create_key(first, tenant="a")
    key2, _ = create_key(second, tenant="b")
    secret_version("..2026_11_28_01", first)
    secret_version("..2026_11_28_02", second)
    os.symlink("..2026_11_28_01", tmp_path / "..data")
    os.symlink("..data/keys.json", tmp_path / "keys.json")
    store = KeyStore(tmp_path / "keys.json")
    assert store.reload_if_changed()
    assert store.lookup(key1) and not store.lookup(key2)
    os.symlink("..2026_11_28_02", tmp_path / "..data_tmp")
    os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
    assert store.reload_if_changed()
    assert store.lookup(key2) and not store.lookup(key1)
    assert not store.reload_if_changed()  # nothing changed since


def test_keys_file_version_and_unknown_fields_are_refused(tmp_path):
    path = Path(tmp_path / "keys.json")
    path.write_text(json.dumps({"version": 2, "keys": []}))
    with pytest.raises(ValueError, match="version 2"):
        load_keys_file(path)
    path.write_text(json.dumps({"version": 1, "keys": [], "extra": 1}))
    with pytest.raises(ValueError):
        load_keys_file(path)
