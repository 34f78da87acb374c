"""`inferplane gateway` (run the sidecar) and `inferplane keys create|list|revoke|secret`."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Optional

import typer
import yaml

from inferplane.reports.cells import safe_cell
from inferplane.gateway.keys import (
    KeyEntry,
    KeysFile,
    create_key,
    load_keys_file,
    parse_expiry,
    revoke_key,
    save_keys_file,
)

KEYS_FILE_ENV = "INFERPLANE_KEYS_FILE"

DEV_KEYS_FILE = Path(".inferplane") / "dev" / "keys.json"  # what `inferplane dev` serves

KeysFileOption = typer.Option(
    None, "--file", "-k", envvar=KEYS_FILE_ENV, show_default=False,
    help="The keys file (JSON, hashes only) that the gateway's Secret holds. Default: the keys of "
         "`inferplane dev` in this directory when present, else ./keys.json.")


def keys_file_path(file: Optional[Path]) -> Path:
    """The same default rule as `usage` and `invoice`: the dev state when present."""
    if file is not None:
        return file
    return DEV_KEYS_FILE if DEV_KEYS_FILE.exists() else Path("keys.json")


def gateway_command(
    config: Path = typer.Option(..., "--config", "-c", help="The gateway settings file (YAML)."),
    host: Optional[str] = typer.Option(None, help="Listen address (default: from the settings)."),
    port: Optional[int] = typer.Option(None, help="Listen port (0: a free one; default: "
                                       "settings)."),
    log_level: str = typer.Option("info", help="debug, info, warning or error."),
) -> None:
    """Run the auth + metering gateway in front of vLLM (the pod's sidecar).

    \b
    Example:  inferplane gateway --config /etc/inferplane/config/gateway.yaml
    """
    from pydantic import ValidationError

    from inferplane.gateway.server import serve
    from inferplane.gateway.settings import GatewaySettings

    try:
        settings = GatewaySettings.load(config)
    except (OSError, ValueError, ValidationError) as error:
        typer.echo(f"inferplane gateway: cannot use {config}: {error}", err=True)
        raise typer.Exit(2) from None

    def announce(url: str) -> None:
        typer.echo(f"inferplane gateway listening on {url} (upstream {settings.upstream_url})")

    serve(settings, host=host, port=port, log_level=log_level, on_ready=announce)


keys_app = typer.Typer(
    rich_markup_mode=None,
    help="Manage API keys: the keys file holds only SHA-256 hashes; a key is shown once.\n\n"
    "\b\nExample:  inferplane keys create --tenant acme --rpm 60 --budget 100",
    no_args_is_help=True,
)


def _load(path: Path, *, missing_ok: bool = False) -> KeysFile:
    """The keys file, or exit 2 saying why; only `create` may start from no file."""
    if not missing_ok and not path.exists():
        typer.echo(f"error: keys file {path} does not exist; create a key first with "
                   f"`inferplane keys create --file {path}`, or pass --file", err=True)
        raise typer.Exit(2)
    try:
        return load_keys_file(path)
    except (OSError, ValueError) as error:
        typer.echo(f"cannot read keys file {path}: {str(error).splitlines()[0]}", err=True)
        raise typer.Exit(2) from None


def _status(entry: KeyEntry, now: datetime) -> str:
    if entry.revoked:
        return "revoked"
    if entry.expires_at is not None and entry.expires_at <= now:
        return "expired"
    return "active"


@keys_app.command("create")
def create_command(
    tenant: str = typer.Option(..., help="Who the key belongs to (shown in usage reports)."),
    name: str = typer.Option("", help="A label for the key, e.g. 'ci' or 'notebook'."),
    models: Optional[list[str]] = typer.Option(
        None, "--model", "-m", help="A served model name the key may use (repeat; default: all)."),
    rpm: Optional[int] = typer.Option(None, min=1, help="Requests per minute."),
    tpm: Optional[int] = typer.Option(None, min=1, help="Tokens (prompt + completion) per minute."),
    budget: Optional[str] = typer.Option(
        None, help="Monthly budget in the gateway's currency, e.g. 100 or 12.50."),
    expires: Optional[str] = typer.Option(
        None, help="Expiry: 30d, 12h, 2026-12-31 or an ISO datetime (default: never)."),
    reasoning: Optional[str] = typer.Option(
        None, help="This key's reasoning default when a request does not choose: on or off."),
    file: Optional[Path] = KeysFileOption,
    output: str = typer.Option("text", "--output", "-o", help="text (the key alone) or json"),
) -> None:
    """Create a key and print it once (stdout); only its hash is written to the keys file.

    \b
    Example:  KEY=$(inferplane keys create --tenant acme --tpm 100000)
    """
    monthly_budget = None
    if budget is not None:
        try:
            monthly_budget = Decimal(budget)
        except InvalidOperation:
            typer.echo(f"--budget {budget!r}: use a number such as 100 or 12.50", err=True)
            raise typer.Exit(2) from None
        if not monthly_budget.is_finite() or monthly_budget < 0:
            typer.echo(f"--budget {budget!r}: must be a number >= 0", err=True)
            raise typer.Exit(2)
    expires_at = None
    if expires is not None:
        try:
            expires_at = parse_expiry(expires)
        except ValueError as error:
            typer.echo(str(error), err=True)
            raise typer.Exit(2) from None
    if reasoning not in (None, "on", "off"):
        typer.echo(f"--reasoning {reasoning!r}: use on or off", err=True)
        raise typer.Exit(2)
    file = keys_file_path(file)
    keys_file = _load(file, missing_ok=True)
    try:
        key, entry = create_key(keys_file, tenant=tenant, name=name, models=models, rpm=rpm,
                                tpm=tpm, budget=monthly_budget, expires_at=expires_at,
                                reasoning_default=None if reasoning is None else reasoning == "on")
    except ValueError as error:
        typer.echo(f"invalid key settings: {error}", err=True)
        raise typer.Exit(2) from None
    save_keys_file(file, keys_file)
    if output == "json":
        typer.echo(json.dumps({"id": entry.id, "key": key, "tenant": entry.tenant}))
    else:
        typer.echo(key)
    typer.echo(f"created {entry.id} for tenant {tenant!r} in {file}. The key above is shown "
               "only now: store it safely. Apply the keys file to the cluster with "
               f"`inferplane keys secret --file {file} -c <config> | kubectl apply -f -`.",
               err=True)


@keys_app.command("list")
def list_command(
    file: Optional[Path] = KeysFileOption,
    output: str = typer.Option("table", "--output", "-o", help="table or json"),
) -> None:
    """List keys: ids, tenants, limits, status (never the keys: only their hashes are stored).

    \b
    Example:  inferplane keys list --file keys.json -o json
    """
    keys_file = _load(file := keys_file_path(file))
    now = datetime.now(timezone.utc)
    if output == "json":
        rows = []
        for entry in keys_file.keys:
            data = entry.model_dump(mode="json", exclude={"sha256"})
            data["status"] = _status(entry, now)
            rows.append(data)
        typer.echo(json.dumps(rows, indent=2))
        return
    header = ("ID", "TENANT", "NAME", "STATUS", "CREATED", "EXPIRES", "MODELS", "RPM", "TPM",
              "BUDGET")
    rows = [header] + [(
        entry.id, safe_cell(entry.tenant), safe_cell(entry.name) if entry.name else "-",
        _status(entry, now),
        entry.created_at.strftime("%Y-%m-%d"),
        entry.expires_at.strftime("%Y-%m-%d %H:%M") if entry.expires_at else "never",
        safe_cell(",".join(entry.models)) or "all", str(entry.rpm or "-"), str(entry.tpm or "-"),
        str(entry.monthly_budget) if entry.monthly_budget is not None else "-",
    ) for entry in keys_file.keys]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        typer.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


@keys_app.command("revoke")
def revoke_command(key_id: str = typer.Argument(..., help="The key's id (see `keys list`)."),
                   file: Optional[Path] = KeysFileOption) -> None:
    """Revoke a key: the gateway refuses it (401) within a second of the file's update.

    \b
    Example:  inferplane keys revoke key_3f9a2c --file keys.json
    """
    keys_file = _load(file := keys_file_path(file))
    try:
        revoke_key(keys_file, key_id)
    except KeyError as error:
        typer.echo(str(error.args[0]), err=True)
        raise typer.Exit(1) from None
    save_keys_file(file, keys_file)
    typer.echo(f"revoked {key_id} in {file}", err=True)


@keys_app.command("secret")
def secret_command(
    file: Optional[Path] = KeysFileOption,
    config: Optional[Path] = typer.Option(
        None, "--config", "-c", help="Deployment config: takes the Secret's name and namespace."),
    name: Optional[str] = typer.Option(None, help="Secret name (default: <config name>-api-keys)."),
    namespace: Optional[str] = typer.Option(None, help="Namespace (default: the config's)."),
) -> None:
    """Print the Kubernetes Secret that mounts the keys file into the gateway (hashes only).

    \b
    Example:  inferplane keys secret -c deploy.yaml | kubectl apply -f -
    """
    from inferplane.config import load_config

    file = keys_file_path(file)
    _load(file)  # refuse to publish a file the gateway would not accept
    deployment = load_config(config) if config is not None or not (name and namespace) else None
    secret_name = name or deployment.keys_secret_name
    secret_namespace = namespace or deployment.namespace
    manifest = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": secret_name, "namespace": secret_namespace,
                     "labels": {"app.kubernetes.io/part-of": "inferplane",
                                "app.kubernetes.io/component": "gateway",
                                "app.kubernetes.io/managed-by": "inferplane"}},
        "type": "Opaque",
        "stringData": {"keys.json": file.read_text(encoding="utf-8")},
    }
    typer.echo(yaml.safe_dump(manifest, sort_keys=False, width=float("inf")).rstrip())
