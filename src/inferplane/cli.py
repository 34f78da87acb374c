"""The `inferplane` command: render manifests, plan capacity, and run the local data plane."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from inferplane.config import load_config

app = typer.Typer(
    rich_markup_mode=None,  # plain help: readable at 80 columns (rich boxes cut option names)
    help="Private, EU-resident, OpenAI-compatible inference for very large open models.\n\n"
    "\b\nExample:  inferplane render -f examples/nemotron-ultra.yaml -o deploy/",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ConfigOption = typer.Option(
    None, "--file", "-f", help="Deployment config (YAML). Default: the shipped Nemotron-Ultra example."
)


@app.command()
def render(
    file: Optional[Path] = ConfigOption,
    output: str = typer.Option("-", "--output", "-o", help="Directory to write, or - for stdout."),
) -> None:
    """Render the Kubernetes manifests of a config (deterministic; ready for Argo CD or Flux).

    \b
    Example:  inferplane render -f examples/nemotron-ultra.yaml -o deploy/nemotron
    """
    from inferplane.render import render as render_manifests
    from inferplane.render import to_multi_document, write_directory

    from inferplane.config import ConfigError

    config = load_config(file)
    try:
        manifests = render_manifests(config)
    except ConfigError as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(2) from None
    if output == "-":
        sys.stdout.write(to_multi_document(manifests))
        return
    written = write_directory(manifests, output)
    typer.echo(f"wrote {len(written)} files to {output} "
               f"({config.model_spec.key}, TP={config.tensor_parallel_size}, "
               f"{config.tensor_parallel_size} x {config.accelerator.type} per replica)", err=True)


@app.command()
def check(file: Optional[Path] = ConfigOption) -> None:
    """Validate a config: residency, sizing, images, names. Exit 2 on any problem.

    \b
    Example:  inferplane check -f examples/nemotron-ultra.yaml
    """
    config = load_config(file)
    typer.echo(f"ok: {config.name} ({config.model_spec.key} on {config.tensor_parallel_size} x "
               f"{config.accelerator.type} in {config.cloud}/{config.region})")


@app.command()
def plan(
    file: Optional[Path] = ConfigOption,
    output: str = typer.Option("table", "--output", "-o", help="table or json"),
) -> None:
    """Print sizing and cost: weights, KV budget, full-context sequences, GPUs, nodes, break-even.

    \b
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


@app.command()
def dashboard(
    file: Optional[Path] = ConfigOption,
    output: str = typer.Option("-", "--output", "-o", help="File to write, or - for stdout."),
) -> None:
    """Write the Grafana dashboard (JSON) of a deployment, ready to import.

    \b
    Example:  inferplane dashboard -f examples/nemotron-ultra.yaml -o dash.json
    """
    from inferplane.observability import dashboard_json

    text = dashboard_json(load_config(file))
    if output == "-":
        sys.stdout.write(text)
    else:
        Path(output).write_text(text)
        typer.echo(f"wrote {output}; import it in Grafana (Dashboards > New > Import)", err=True)


weights_app = typer.Typer(rich_markup_mode=None, help="The model-weight cache: pre-fetch into a Hugging Face cache, verify, wait.",
                          no_args_is_help=True)
app.add_typer(weights_app, name="weights")


@weights_app.command("fetch")
def weights_fetch(
    repo: str = typer.Option(..., help="Hugging Face repo, e.g. nvidia/Llama-3_1-Nemotron-Ultra-253B-v1"),
    cache_dir: Path = typer.Option(..., help="HF cache directory (HF_HUB_CACHE), e.g. /models/hf/hub"),
    revision: str = typer.Option("main", help="branch, tag or commit"),
    max_workers: int = typer.Option(8, help="parallel file downloads"),
) -> None:
    """Download, verify every file's checksum, and mark the cache complete (resumable).

    \b
    Example:  HF_TOKEN=... inferplane weights fetch --cache-dir /models/hf/hub \\
                --repo nvidia/Llama-3_1-Nemotron-Ultra-253B-v1
    """
    import os

    from inferplane.weights import WeightsError, fetch

    try:
        result = fetch(repo, cache_dir, revision, token=os.environ.get("HF_TOKEN") or None,
                       max_workers=max_workers)
    except WeightsError as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{result.repo}@{result.revision}: {result.files} files, {result.bytes / 1e9:.1f} GB "
               f"verified in {result.seconds:.0f} s")


@weights_app.command("wait")
def weights_wait(
    repo: str = typer.Option(...),
    cache_dir: Path = typer.Option(...),
    timeout_seconds: float = typer.Option(6 * 3600, help="give up after this long"),
) -> None:
    """Block until the pre-fetch Job has marked the cache complete (the vLLM pod's init container).

    \b
    Example:  inferplane weights wait --cache-dir /models/hf/hub \\
                --repo nvidia/Llama-3_1-Nemotron-Ultra-253B-v1
    """
    from inferplane.weights import WeightsError, wait

    try:
        result = wait(repo, cache_dir, timeout_seconds)
    except WeightsError as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{result.repo}@{result.revision} is in the cache ({result.files} files)")


# Commands whose code lives with its role (each module keeps its heavy imports inside the command).
from inferplane.cluster.cli import cluster_app  # noqa: E402
from inferplane.dev import dev_command  # noqa: E402
from inferplane.engines.cli import engines_app  # noqa: E402
from inferplane.gateway.cli import gateway_command, keys_app  # noqa: E402
from inferplane.reports.invoice import invoice_command  # noqa: E402
from inferplane.simulator.cli import simulator_command  # noqa: E402
from inferplane.reports.usage import usage_command  # noqa: E402
from inferplane.vllm_check import check_vllm_args_command  # noqa: E402

app.command("dev")(dev_command)
app.command("gateway")(gateway_command)
app.add_typer(keys_app, name="keys")
app.command("simulator")(simulator_command)
app.command("usage")(usage_command)
app.command("invoice")(invoice_command)
app.command("check-vllm-args")(check_vllm_args_command())
app.add_typer(cluster_app, name="cluster")
app.add_typer(engines_app, name="engines")


def _first_sentence(text: str | None) -> str | None:
    if not text:
        return None
    paragraph = " ".join(text.strip().split("\n\n")[0].split())
    end = paragraph.find(". ")
    return paragraph if end < 0 else paragraph[:end + 1]


def _whole_summaries(typer_app: typer.Typer) -> None:
    """List each command with its whole first sentence, wrapped, instead of click's cut at ~45
    characters ("Render the Kubernetes manifests of a config...")."""
    for command in typer_app.registered_commands:
        command.short_help = command.short_help or _first_sentence(
            command.help or (command.callback.__doc__ if command.callback else None))
    for group in typer_app.registered_groups:
        group.short_help = group.short_help or _first_sentence(
            group.help if isinstance(group.help, str) else group.typer_instance.info.help)
        _whole_summaries(group.typer_instance)


_whole_summaries(app)


# The optional modules and the extra that brings each: a command that needs one says so.
EXTRA_OF_MODULE = {
    "pulumi": "pulumi", "pulumi_kubernetes": "pulumi", "pulumi_gcp": "gcp", "pulumi_aws": "aws",
    "pulumiverse_scaleway": "scaleway", "pulumi_policy": "policy", "psycopg": "postgres",
    "cryptography": "cluster", "kubernetes": "cluster",
}


def main() -> None:
    """The console entry: the app, with a missing optional dependency told as the extra to add."""
    try:
        app()
    except ModuleNotFoundError as error:
        extra = EXTRA_OF_MODULE.get((error.name or "").split(".")[0])
        if extra is None:
            raise
        print(f"inferplane: this command needs the '{extra}' extra ({error.name} is not installed): "
              f"pip install -e '.[{extra}]' in a checkout, or pip install 'inferplane[{extra}]'",
              file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":  # pragma: no cover
    main()
