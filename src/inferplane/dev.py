"""`inferplane dev`: the local data plane, the embedded default that needs no cluster and no GPU.

The vLLM simulator and the gateway run on loopback in this one process (one event loop); the
ledger is SQLite under `.inferplane/dev/`. With `--engine vllm-cpu` (or `model.engine: vllm-cpu`
in the config) real vLLM's CPU build takes the simulator's place: a tiny Nemotron-NAS checkpoint
with our reasoning and tool parsers, in a process of its own (installed and built once, cached). A demo key is created once and reused: it is the only
key whose plaintext inferplane ever keeps, in `.inferplane/dev/demo-key` (mode 0600, on this
machine only), so that `inferplane dev` can print it again on the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any, Optional

import typer

DEFAULT_STATE_DIR = Path(".inferplane") / "dev"
DEMO_KEY_FILE = "demo-key"
DEMO_TENANT = "demo"


def ensure_demo_key(state_dir: Path) -> tuple[str, str]:
    """(plaintext key, key id) of the dev demo key: reused when still valid, else created."""
    from inferplane.gateway.keys import create_key, hash_key, load_keys_file, save_keys_file

    keys_path = state_dir / "keys.json"
    key_path = state_dir / DEMO_KEY_FILE
    keys_file = load_keys_file(keys_path)
    if key_path.exists():
        key = key_path.read_text(encoding="utf-8").strip()
        digest = hash_key(key)
        for entry in keys_file.keys:
            if entry.sha256 == digest and not entry.revoked and entry.expires_at is None:
                return key, entry.id
    key, entry = create_key(keys_file, tenant=DEMO_TENANT, name="inferplane dev demo key")
    save_keys_file(keys_path, keys_file)
    state_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(key + "\n")
    os.chmod(key_path, 0o600)  # also when the file existed with wider permissions
    return key, entry.id


def ledger_url_for(state_dir: Path) -> str:
    from inferplane.ledger import DEFAULT_DEV_LEDGER_URL

    if state_dir == DEFAULT_STATE_DIR:
        return DEFAULT_DEV_LEDGER_URL  # where `inferplane usage` looks by default
    return f"sqlite:///{(state_dir.resolve() / 'ledger.db').as_posix()}"


ENGINE_TITLES = {"simulator": "the vLLM simulator (no GPU)",
                 "vllm-cpu": "real vLLM (CPU build, tiny Nemotron-NAS checkpoint)"}


def banner(base_url: str, key: str, model: str, ledger_url: str, state_dir: Path,
           engine: str = "simulator") -> str:
    """What the user copies: the URL, the key and two working examples."""
    root = base_url.removesuffix("/v1")
    return f"""
inferplane dev: {ENGINE_TITLES[engine]} behind the auth + metering gateway

  Base URL  {base_url}
  API key   {key}
            (the demo key; kept in clear only here, in {state_dir / DEMO_KEY_FILE})
  Model     {model}
  Ledger    {ledger_url}   ->  inferplane usage
  Metrics   {root}/metrics

curl:
  curl {base_url}/chat/completions \\
    -H "Authorization: Bearer {key}" -H "Content-Type: application/json" \\
    -d '{{"model": "{model}", "messages": [{{"role": "user", "content": "Hello!"}}], "reasoning": false}}'

Python (pip install openai):
  from openai import OpenAI
  client = OpenAI(base_url="{base_url}", api_key="{key}")
  reply = client.chat.completions.create(
      model="{model}",
      messages=[{{"role": "user", "content": "Hello!"}}],
      reasoning_effort="high",  # reasoning on; "low", or extra_body={{"reasoning": False}}: off
  )
  message = reply.choices[0].message
  print(message.reasoning)  # the think block, apart from the answer (vLLM's `reasoning` field)
  print(message.content, reply.usage)

Ctrl-C stops both servers.
"""


def _smoke_test(base_url: str, key: str, model: str) -> Any:
    """One real chat completion through the gateway with the openai client; returns the reply."""
    from openai import OpenAI

    client = OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=30.0)
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Say hello to inferplane."}],
        reasoning_effort="low", max_tokens=64)


class _External:
    """Stands in for the simulator's uvicorn server when the engine runs in its own process."""

    started = True
    should_exit = force_exit = False


async def _run(settings: Any, simulator_settings: Any, gateway_sock: Any, simulator_sock: Any,
               key: str, key_id: str, state_dir: Path, smoke_test: bool,
               engine: str = "simulator") -> int:
    from inferplane.gateway.app import GatewayApp
    from inferplane.gateway.server import gateway_server, socket_url
    from inferplane.simulator.server import uvicorn_server

    app = GatewayApp(settings)
    gateway = gateway_server(app, log_level="warning", graceful_shutdown_seconds=5)
    if simulator_settings is None:  # vllm-cpu: already running, in a process of its own
        simulator: Any = _External()
        simulator_task = asyncio.create_task(asyncio.Event().wait())
    else:
        simulator = uvicorn_server(simulator_settings, log_level="warning")
        simulator.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
        simulator_task = asyncio.create_task(simulator.serve(sockets=[simulator_sock]))
    # One handler for both servers (below): uvicorn's own would only stop one of them.
    gateway.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
    gateway_task = asyncio.create_task(gateway.serve(sockets=[gateway_sock]))

    def stop(*_: object) -> None:
        if gateway.should_exit:  # a second Ctrl-C: do not wait for in-flight requests
            gateway.force_exit = simulator.force_exit = True
        gateway.should_exit = True

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    status = 0
    try:
        while not (simulator.started and gateway.started):
            if gateway_task.done() or simulator_task.done():
                typer.echo("inferplane dev: a server failed to start (see above)", err=True)
                return 1
            await asyncio.sleep(0.01)
        base_url = socket_url(gateway_sock) + "/v1"
        model = settings.models[0].served_name
        typer.echo(banner(base_url, key, model, settings.ledger_url, state_dir, engine))
        if smoke_test:
            status = await _report_smoke_test(app, base_url, key, key_id, model)
            stop()
        await gateway_task
    finally:
        stop()
        with contextlib.suppress(Exception):
            await gateway_task
        simulator.should_exit = True
        if simulator_settings is None:
            simulator_task.cancel()
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await simulator_task
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return status


async def _report_smoke_test(app: Any, base_url: str, key: str, key_id: str, model: str) -> int:
    try:
        reply = await asyncio.to_thread(_smoke_test, base_url, key, model)
    except ImportError:
        typer.echo("smoke test needs the openai client: pip install openai", err=True)
        return 2
    except Exception as error:  # report any failure of the main job plainly
        typer.echo(f"smoke test FAILED: {type(error).__name__}: {error}", err=True)
        return 1
    content = (reply.choices[0].message.content or "").strip().replace("\n", " ")
    usage = reply.usage
    typer.echo(f"smoke test: {model} answered {content[:160]!r}")
    typer.echo(f"smoke test: usage prompt={usage.prompt_tokens} "
               f"completion={usage.completion_tokens} total={usage.total_tokens}")
    records = await asyncio.to_thread(app.ledger.records, None, None, key_id)
    if not records:
        typer.echo("smoke test FAILED: no usage record in the ledger", err=True)
        return 1
    record = records[-1]
    if (record.prompt_tokens, record.completion_tokens) != (usage.prompt_tokens,
                                                            usage.completion_tokens):
        typer.echo("smoke test FAILED: the ledger's token counts differ from the response's",
                   err=True)
        return 1
    typer.echo(f"smoke test: recorded {record.request_id}: cost {record.cost} {record.currency}"
               " -- ok")
    return 0


def dev_command(
    port: int = typer.Option(8080, help="Gateway port on loopback (0: a free one)."),
    host: str = typer.Option("127.0.0.1", help="Listen address (keep loopback unless you "
                             "mean it)."),
    simulator_port: int = typer.Option(0, help="Simulator port (0: a free one)."),
    file: Optional[Path] = typer.Option(
        None, "--file", "-f", help="Deployment config to imitate (default: the shipped "
        "Nemotron-Ultra example)."),
    state_dir: Path = typer.Option(DEFAULT_STATE_DIR, help="Where the keys, demo key and "
                                   "ledger live."),
    ttft_seconds: float = typer.Option(0.05, help="Simulated time to first token."),
    inter_token_seconds: float = typer.Option(0.01, help="Simulated time between tokens."),
    exit_after_smoke_test: bool = typer.Option(
        False, help="Send one request with the openai client, print it and its usage, exit."),
    engine: Optional[str] = typer.Option(
        None, "--engine", help="simulator (default), or vllm-cpu: real vLLM's CPU build serving "
        "a tiny Nemotron-NAS checkpoint (first run installs ~6 GB, cached). Default: the "
        "config's model.engine when that is vllm-cpu, else simulator."),
) -> None:
    """Run the local data plane: simulator + gateway on loopback, a SQLite ledger, a demo key.

    \b
    Example:  inferplane dev --port 0   (prints the base URL and a demo key)
              inferplane dev --engine vllm-cpu   (real vLLM on CPU)
    """
    from inferplane.config import load_config
    from inferplane.gateway.server import bind_socket, configure_logging, socket_url
    from inferplane.gateway.settings import GatewaySettings
    from inferplane.simulator.settings import SimulatorSettings

    config = load_config(file)
    engine = engine or ("vllm-cpu" if config.model.engine == "vllm-cpu" else "simulator")
    if engine not in ENGINE_TITLES:
        typer.echo(f"inferplane dev: --engine must be simulator or vllm-cpu, not {engine!r}",
                   err=True)
        raise typer.Exit(2)
    configure_logging("info")
    for noisy in ("uvicorn.error", "httpx", "httpx2"):  # startup chatter, the smoke test's client
        logging.getLogger(noisy).setLevel(logging.WARNING)
    state_dir.mkdir(parents=True, exist_ok=True)
    key, key_id = ensure_demo_key(state_dir)
    try:
        simulator_sock = bind_socket(host, simulator_port)
        gateway_sock = bind_socket(host, port)
    except OSError as error:
        typer.echo(f"inferplane dev: cannot listen on {host}:{port} or the simulator port "
                   f"({error.strerror}); another `inferplane dev`? Use --port 0 for a free port.",
                   err=True)
        raise typer.Exit(2) from None
    vllm = None
    if engine == "vllm-cpu":
        simulator_sock.close()  # vLLM binds its own port
        simulator_settings = None
        try:
            vllm = _start_vllm_cpu(config, host, state_dir)
        except Exception as error:  # install, build or start-up: say which and stop cleanly
            gateway_sock.close()
            typer.echo(f"inferplane dev: real vLLM did not start: {error}", err=True)
            raise typer.Exit(1) from None
        upstream_url = vllm.url
    else:
        simulator_settings = SimulatorSettings.from_deployment(
            config, ttft_seconds=ttft_seconds, inter_token_seconds=inter_token_seconds)
        upstream_url = socket_url(simulator_sock)
    settings = GatewaySettings.from_deployment(
        config, listen_host=host, listen_port=gateway_sock.getsockname()[1],
        upstream_url=upstream_url,
        keys_file=str(state_dir / "keys.json"), ledger_url=ledger_url_for(state_dir),
        auth_enabled=True)
    try:
        status = asyncio.run(_run(settings, simulator_settings, gateway_sock, simulator_sock,
                                  key, key_id, state_dir, exit_after_smoke_test, engine))
    finally:
        gateway_sock.close()
        simulator_sock.close()
        if vllm is not None:
            vllm.stop()
    sys.stdout.flush()
    raise typer.Exit(status)


def _start_vllm_cpu(config: Any, host: str, state_dir: Path) -> Any:
    """Real vLLM on CPU for `inferplane dev`: install (once), build the checkpoint (once), start;
    progress printed, since the first run takes many minutes and later ones about one."""
    from inferplane.engines import vllm_cpu
    from inferplane.engines.tiny_nemotron import trained_checkpoint

    def say(message: str) -> None:
        typer.echo(message, err=True)

    vllm_cpu.ensure_venv(log=say)
    say("vllm-cpu: the tiny Nemotron-NAS checkpoint (built and trained once, then cached) ...")
    checkpoint = trained_checkpoint()
    say("vllm-cpu: starting real vLLM (about a minute on an idle machine) ...")
    return vllm_cpu.start(checkpoint, extra_args=vllm_cpu.deployment_vllm_args(config), host=host,
                          served_model_name=config.served_model_name,
                          log_path=state_dir / "vllm-cpu.log", log=say)
