"""The `inferplane` command: render manifests, plan capacity, and run the local data plane."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from inferplane import config as config_module
from inferplane.config import ConfigError, DeploymentConfig

app = typer.Typer(
    help="Private, EU-resident, OpenAI-compatible inference for very large open models.\n\n"
    "Example:  inferplane render -f examples/nemotron-ultra.yaml -o deploy/",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ConfigOption = typer.Option(
    None, "--file", "-f", help="Deployment config (YAML). Default: the shipped Nemotron-Ultra example."
)


def examples_dir() -> Path:
    """examples/ in a source checkout, or the copy packaged into the wheel."""
    packaged = Path(__file__).parent / "_examples"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / "examples"


def load_config(path: Optional[Path]) -> DeploymentConfig:
    """Load and validate, or exit 2 with every problem listed (field and fix)."""
    try:
        return config_module.load(path or examples_dir() / "nemotron-ultra.yaml")
    except ConfigError as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(2) from None


@app.command()
def render(
    file: Optional[Path] = ConfigOption,
    output: str = typer.Option("-", "--output", "-o", help="Directory to write, or - for stdout."),
) -> None:
    """Render the Kubernetes manifests of a config (deterministic; ready for Argo CD or Flux).

    Example:  inferplane render -f examples/nemotron-ultra.yaml -o deploy/nemotron-ultra
    """
    from inferplane.render import render as render_manifests
    from inferplane.render import to_multi_document, write_directory

    config = load_config(file)
    manifests = render_manifests(config)
    if output == "-":
        sys.stdout.write(to_multi_document(manifests))
        return
    written = write_directory(manifests, output)
    typer.echo(f"wrote {len(written)} files to {output} "
               f"({config.model_spec.key}, TP={config.tensor_parallel_size}, "
               f"{config.tensor_parallel_size} x {config.accelerator.type} per replica)", err=True)


@app.command()
def check(file: Optional[Path] = ConfigOption) -> None:
    """Validate a config: residency, sizing, images, names. Exit 2 on any problem."""
    config = load_config(file)
    typer.echo(f"ok: {config.name} ({config.model_spec.key} on {config.tensor_parallel_size} x "
               f"{config.accelerator.type} in {config.cloud}/{config.region})")


@app.command()
def plan(
    file: Optional[Path] = ConfigOption,
    output: str = typer.Option("table", "--output", "-o", help="table or json"),
) -> None:
    """Print sizing and cost: weights, KV budget, full-context sequences, GPUs, nodes, break-even.

    Example:  inferplane plan -f examples/nemotron-ultra.yaml -o json
    """
    from inferplane.planning import plan_document, plan_rows, plan_table

    config = load_config(file)
    report = config.sizing()
    if output == "json":
        typer.echo(json.dumps(plan_document(config, report), indent=2))
    elif output == "table":
        typer.echo(plan_table(plan_rows(config, report)))
    else:
        typer.echo(f"--output must be table or json, not {output!r}", err=True)
        raise typer.Exit(2)


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
