"""`inferplane simulator`: serve the vLLM stand-in from the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from pydantic import ValidationError

from inferplane.simulator.settings import SimulatorSettings


def simulator_command(
    file: Optional[Path] = typer.Option(
        None, "--file", "-f", help="Deployment config (YAML): answer like its vLLM would."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8000, help="Port to listen on (0: a free one; the URL is printed)."),
    served_model_name: Optional[list[str]] = typer.Option(
        None, "--served-model-name", help="Model name to serve (repeat for several)."),
    catalog_key: Optional[str] = typer.Option(
        None, help="Catalog model behind every served name (e.g. nemotron-ultra-253b)."),
    ttft_seconds: Optional[float] = typer.Option(None, help="Time to first token."),
    inter_token_seconds: Optional[float] = typer.Option(None, help="Time between tokens."),
    output_tokens: Optional[int] = typer.Option(
        None, help="Answer length when the request sets no max_tokens."),
    reasoning_tokens: Optional[int] = typer.Option(
        None, help="Words inside <think>...</think> when reasoning is on."),
    max_model_len: Optional[int] = typer.Option(None, help="Context length (prompt + output)."),
    max_num_seqs: Optional[int] = typer.Option(None, help="Concurrent sequences; more queue."),
    seed: Optional[int] = typer.Option(None, help="Seed of the generated text."),
    enable_prompt_tokens_details: bool = typer.Option(
        False, help="Report prefix-cache hits as usage.prompt_tokens_details.cached_tokens."),
    enable_auto_tool_choice: Optional[bool] = typer.Option(
        None, "--enable-auto-tool-choice/--no-enable-auto-tool-choice",
        help="Parse tool calls as vLLM with the model's tool parser does (default: on)."),
    settings_json: Optional[str] = typer.Option(
        None, help="All settings as JSON (SimulatorSettings); options above override it.",
        hidden=True),
) -> None:
    """Serve a vLLM-compatible OpenAI API that needs no GPU (for dev, tests and benchmarks).

    \b
    Example:  inferplane simulator --port 8000 --ttft-seconds 0.2 \\
                --inter-token-seconds 0.02
    """
    from inferplane.simulator.server import serve

    overrides: dict[str, Any] = {
        key: value for key, value in dict(
            ttft_seconds=ttft_seconds, inter_token_seconds=inter_token_seconds,
            output_tokens=output_tokens, reasoning_tokens=reasoning_tokens,
            max_model_len=max_model_len, max_num_seqs=max_num_seqs, seed=seed,
        ).items() if value is not None
    }
    if enable_prompt_tokens_details:
        overrides["enable_prompt_tokens_details"] = True
    if enable_auto_tool_choice is not None:
        overrides["enable_auto_tool_choice"] = enable_auto_tool_choice
    if served_model_name:
        overrides["served_model_names"] = served_model_name
        overrides["catalog_keys"] = {}
    if catalog_key:
        names = served_model_name or _base_values(file, settings_json).get("served_model_names")
        names = names or SimulatorSettings().served_model_names
        overrides["catalog_keys"] = dict.fromkeys(names, catalog_key)
    try:
        settings = _build(file, settings_json, overrides)
    except (ValidationError, ValueError) as error:
        typer.echo(f"inferplane simulator: {error}", err=True)
        raise typer.Exit(2) from None

    def announce(url: str) -> None:
        typer.echo(f"inferplane simulator listening on {url} "
                   f"(OpenAI base URL {url}/v1; models: {', '.join(settings.served_model_names)})")

    serve(settings, host, port, on_ready=announce)


def _base_values(file: Optional[Path], settings_json: Optional[str]) -> dict[str, Any]:
    if settings_json:
        return SimulatorSettings.model_validate_json(settings_json).model_dump()
    if file:
        from inferplane.config import load

        return SimulatorSettings.from_deployment(load(file)).model_dump()
    return {}


def _build(file: Optional[Path], settings_json: Optional[str],
           overrides: dict[str, Any]) -> SimulatorSettings:
    from inferplane.config import ConfigError

    try:
        values = _base_values(file, settings_json)
    except ConfigError as error:
        raise ValueError(str(error)) from None
    return SimulatorSettings(**{**values, **overrides})
