"""vLLM's own `serve` argument parser, run against the arguments we render.

A wrong flag in the rendered Deployment otherwise shows only after node provisioning and weight
loading (an hour for a 500 GB model). The parser needs no GPU, so it runs here: in a cached
virtual environment holding the `vllm` package at the version of the pinned image. That venv
is ~9.4 GB (vllm brings a CUDA build of torch), which is why vllm is not a dependency of ours.

This file is also the script that runs inside that venv (`python -I vllm_check.py`), so its
top level imports only the standard library; inferplane is imported inside functions.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import re
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

# vllm/vllm-openai:v0.33.0 -> 0.33.0 (release candidates and post releases too).
_IMAGE_TAG_VERSION = re.compile(r":v?(?P<version>\d+\.\d+\.\d+(?:rc\d+|\.post\d+)?)$")
_READY_MARKER = ".inferplane-ready"
# Parsing must never load a model or reach the network, and vLLM must not look for a GPU.
_PARSE_ENV = {
    "VLLM_TARGET_DEVICE": "cpu",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "VLLM_LOGGING_LEVEL": "ERROR",
}


def vllm_version_of_image(image: str) -> str:
    """The vllm package version an image tag stands for: vllm/vllm-openai:v0.33.0 -> 0.33.0."""
    match = _IMAGE_TAG_VERSION.search(image)
    if not match:
        raise ValueError(
            f"cannot tell the vLLM version of image {image!r}; pin it by a version tag "
            "(e.g. vllm/vllm-openai:v0.33.0) or pass the version explicitly (--vllm-version)"
        )
    return match.group("version")


def default_vllm_version() -> str:
    """The version of the default pinned image (config.ImageConfig.vllm): the one source."""
    from inferplane.config import ImageConfig

    return vllm_version_of_image(ImageConfig.model_fields["vllm"].default)


def cache_root() -> Path:
    """Machine-wide, so CI in a fresh clone reuses what a session installed."""
    explicit = os.environ.get("INFERPLANE_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "inferplane"


def venv_dir(version: str) -> Path:
    """Where the venv for one vllm version lives."""
    return cache_root() / f"vllm-{version}"


def venv_python(version: str) -> Path:
    return venv_dir(version) / "bin" / "python"


def is_prepared(version: str) -> bool:
    """True when the venv finished installing (the marker is written last)."""
    marker = venv_dir(version) / _READY_MARKER
    return marker.is_file() and marker.read_text().strip() == version


def prepare(version: str | None = None, log: Callable[[str], None] | None = None) -> Path:
    """Create the venv with vllm==version, or reuse it; returns its python. Safe to run twice,
    and concurrently: a lock file serialises installers, and a half-done venv is completed."""
    version = version or default_vllm_version()
    log = log or _log_to_stderr
    target = venv_dir(version)
    if is_prepared(version):
        log(f"vllm {version}: reusing {target}")
        return venv_python(version)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f"vllm-{version}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_prepared(version):  # another process finished while we waited
            log(f"vllm {version}: reusing {target}")
            return venv_python(version)
        started = time.monotonic()
        if not venv_python(version).exists():
            log(f"vllm {version}: creating virtual environment {target}")
            _run([_base_python(), "-m", "venv", str(target)])
        log(f"vllm {version}: pip install vllm=={version} (~9.4 GB, ~5 minutes) ...")
        _run(["nice", "-n", "10", str(venv_python(version)), "-m", "pip", "install",
              "--disable-pip-version-check", "--progress-bar", "off", f"vllm=={version}"])
        installed = subprocess.run(
            [str(venv_python(version)), "-I", "-c",
             "import importlib.metadata as m; print(m.version('vllm'))"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        if installed != version:
            raise RuntimeError(f"{target} holds vllm {installed}, expected {version}")
        (target / _READY_MARKER).write_text(version + "\n")
        log(f"vllm {version}: ready in {time.monotonic() - started:.0f} s "
            f"({_size_gib(target):.1f} GiB at {target})")
    return venv_python(version)


def _log_to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _base_python() -> str:
    # The interpreter behind our own venv, so the vllm venv does not depend on ours.
    return getattr(sys, "_base_executable", None) or sys.executable


def _run(command: list[str]) -> None:
    # pip's own output is the progress the user sees: straight to file descriptor 2, which
    # exists even where sys.stderr is replaced by an object without one (test runners).
    completed = subprocess.run(command, stdout=2, stderr=2)
    if completed.returncode:
        raise RuntimeError(f"{' '.join(command)} failed with exit status {completed.returncode}")


def _size_gib(path: Path) -> float:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total / 1024**3


# -- checking, on our side: one subprocess in the vllm venv for any number of argument lists --


@dataclass(frozen=True)
class ArgsVerdict:
    """What vLLM made of one argument list: accepted or not, in vLLM's own words."""

    ok: bool
    message: str  # the parser's usage + error, or the check that failed; empty when accepted
    warnings: tuple[str, ...] = ()  # e.g. deprecated flags: accepted today, gone in a release


def check_vllm_arg_lists(
    arg_lists: Mapping[str, list[str]], version: str | None = None, timeout_seconds: float = 600,
) -> dict[str, ArgsVerdict]:
    """Run vLLM's `serve` parser on each argument list (as given to `vllm serve`, model first).

    All lists share one subprocess, since importing vLLM costs more than all the parsing.
    Raises RuntimeError when the check itself cannot run (not when vLLM rejects arguments).
    """
    version = version or default_vllm_version()
    python = venv_python(version) if is_prepared(version) else prepare(version)
    env = {key: value for key, value in os.environ.items() if not key.startswith("VLLM_")}
    env.update(_PARSE_ENV)
    completed = subprocess.run(
        [str(python), "-I", str(Path(__file__).resolve())],
        input=json.dumps({name: list(args) for name, args in arg_lists.items()}),
        capture_output=True, text=True, env=env, timeout=timeout_seconds,
    )
    try:
        report = json.loads(completed.stdout)
    except json.JSONDecodeError:
        tail = "\n".join(completed.stderr.strip().splitlines()[-20:])
        raise RuntimeError(
            f"vLLM {version}'s parser did not run (exit status {completed.returncode}):\n{tail}"
        ) from None
    if report["vllm_version"] != version:
        raise RuntimeError(f"{venv_dir(version)} runs vllm {report['vllm_version']}, not {version}")
    return {
        name: ArgsVerdict(item["ok"], item["message"], tuple(item["warnings"]))
        for name, item in report["verdicts"].items()
    }


def check_vllm_args(args: list[str], version: str | None = None) -> tuple[bool, str]:
    """(accepted, vLLM's message) for one `vllm serve` argument list."""
    verdict = check_vllm_arg_lists({"args": args}, version)["args"]
    return verdict.ok, verdict.message


def with_local_files(config: Any, args: list[str]) -> tuple[list[str], list[str]]:
    """`args` with each path into the vLLM container's files mount replaced by the package
    file render mounts there, so the check imports our plugins and reads our template;
    and the problems: a path no ConfigMap entry backs (vLLM would fail after weight load)."""
    from inferplane.render import NEMOTRON_FILES_DIR, VLLM_FILES_DIR, vllm_file_names

    mounted = set(vllm_file_names(config))
    local, problems = [], []
    for arg in args:
        if arg.startswith(VLLM_FILES_DIR + "/"):
            name = arg[len(VLLM_FILES_DIR) + 1:]
            if name not in mounted:
                problems.append(f"{arg}: not in the rendered {config.name}-vllm-files ConfigMap "
                                f"(it holds: {', '.join(sorted(mounted)) or 'nothing'})")
            arg = str(NEMOTRON_FILES_DIR / name)
        local.append(arg)
    return local, problems


def check_vllm_args_command() -> Callable[..., None]:
    """The `inferplane check-vllm-args` command. Built by a function because this file must
    import without typer when it runs as the parsing script inside the vllm venv."""
    import typer

    def check_vllm_args_cli(
        file: Optional[Path] = typer.Option(
            None, "--file", "-f", help="Deployment config (YAML). Default: the shipped example."),
        prepare_only: bool = typer.Option(
            False, "--prepare", help="Only create (or reuse) the cached vLLM environment."),
        vllm_version: Optional[str] = typer.Option(
            None, help="vllm package version; default: the tag of the config's image.vllm."),
    ) -> None:
        """Check the rendered `vllm serve` arguments with vLLM's own parser (no GPU, no download).

        The first run installs vllm (the version of the config's vLLM image, ~9 GB) into a cache.
        It lives in ~/.cache/inferplane; INFERPLANE_CACHE moves it.

        \b
        Example:  inferplane check-vllm-args -f examples/nemotron-ultra.yaml
        """
        from inferplane.config import load_config
        from inferplane.render import vllm_args

        config = None if prepare_only and file is None else load_config(file)
        version = vllm_version
        if version is None:
            try:
                version = (vllm_version_of_image(config.image.vllm) if config
                           else default_vllm_version())
            except ValueError as error:
                typer.echo(f"image.vllm: {error}", err=True)
                raise typer.Exit(2) from None
        try:
            prepare(version, log=lambda message: typer.echo(message, err=True))
            if prepare_only:
                return
            args = vllm_args(config)
            local_args, unmounted = with_local_files(config, args)
            if unmounted:
                typer.echo("\n".join(unmounted), err=True)
                raise typer.Exit(1)
            verdict = check_vllm_arg_lists({config.name: local_args}, version)[config.name]
        except (RuntimeError, OSError, subprocess.SubprocessError) as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(3) from None
        for warning in verdict.warnings:
            typer.echo(f"warning: {warning}", err=True)
        if not verdict.ok:
            typer.echo(f"vLLM {version} rejects the arguments rendered for {config.name}:\n"
                       f"  vllm serve {' '.join(args)}\n{verdict.message}", err=True)
            raise typer.Exit(1)
        typer.echo(f"ok: vLLM {version}'s serve parser accepts the {len(args)} arguments "
                   f"rendered for {config.name} ({config.model_spec.hf_repo})")

    return check_vllm_args_cli


# -- checking, inside the vllm venv: this part runs under `python -I vllm_check.py` --


def _serve_parser() -> tuple[Any, Any, Any]:
    """The parser `vllm serve` itself builds: vLLM's CLI parser with its `serve` subcommand
    (FlexibleArgumentParser treats `serve <model>` specially, so the subcommand matters)."""
    from vllm.entrypoints.cli.serve import ServeSubcommand
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(prog="vllm")
    subcommand = ServeSubcommand()
    subparsers = parser.add_subparsers(required=False, dest="subparser")
    serve_parser = subcommand.subparser_init(subparsers)
    return parser, subcommand, serve_parser


def _registry_problems(namespace: Any) -> list[str]:
    """Names vLLM looks up only at engine start-up; an unknown one would fail after weight load."""
    from typing import get_args

    from vllm.config.cache import CacheDType
    from vllm.reasoning import ReasoningParserManager
    from vllm.tool_parsers import ToolParserManager

    problems = []
    importers = {"tool": ToolParserManager.import_tool_parser,
                 "reasoning": ReasoningParserManager.import_reasoning_parser}
    for flag, kind, manager in (("tool_call_parser", "tool", ToolParserManager),
                                ("reasoning_parser", "reasoning", ReasoningParserManager)):
        name = getattr(namespace, flag, None)
        plugin = getattr(namespace, f"{kind}_parser_plugin", None)
        if plugin:
            # Our plugins are here to import (the caller maps the container's path to the
            # package file): import it as vLLM does at start-up, then look the name up.
            if not Path(plugin).is_file():
                problems.append(f"--{kind}-parser-plugin {plugin!r}: no such file")
                continue
            stderr = io.StringIO()
            with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stderr):
                importers[kind](plugin)  # vLLM logs (and swallows) an import error
            try:
                manager.get_tool_parser(name) if kind == "tool" else \
                    manager.get_reasoning_parser(name)
            except Exception as error:  # KeyError for an unknown name, ImportError, TypeError
                tail = "\n".join(stderr.getvalue().strip().splitlines()[-5:])
                problems.append(f"--{flag.replace('_', '-')} {name!r}: not registered by the "
                                f"plugin {Path(plugin).name} ({type(error).__name__}: {error})"
                                + (f"\n{tail}" if tail else ""))
            continue
        if name:
            known = manager.list_registered()
            if name not in known:
                problems.append(f"--{flag.replace('_', '-')} {name!r} is not a {kind} parser of "
                                f"this vLLM; registered: {', '.join(known)}")
    chat_template = getattr(namespace, "chat_template", None)
    if chat_template:
        problems += _chat_template_problems(chat_template)
    kv_cache_dtype = getattr(namespace, "kv_cache_dtype", "auto")
    if kv_cache_dtype not in get_args(CacheDType):
        problems.append(f"--kv-cache-dtype {kv_cache_dtype!r} is not one of "
                        f"{', '.join(get_args(CacheDType))}")
    return problems


def _chat_template_problems(path: str) -> list[str]:
    """A --chat-template file must exist and compile in the sandbox transformers renders it in."""
    if not Path(path).is_file():
        return [f"--chat-template {path!r}: no such file"]
    from jinja2 import TemplateSyntaxError
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    try:
        environment = ImmutableSandboxedEnvironment(extensions=[loopcontrols])
        environment.parse(Path(path).read_text())
    except TemplateSyntaxError as error:
        return [f"--chat-template {Path(path).name}: line {error.lineno}: {error.message}"]
    return []


def _deprecated_flags(serve_parser: Any, namespace: Any) -> list[str]:
    """Flags we set whose help says they are deprecated: accepted now, gone in a coming release.
    vLLM announces most deprecations in the help text and warns only at engine start."""
    notes = []
    for action in serve_parser._actions:
        text = " ".join((action.help or "").split())
        if (action.option_strings and "deprecated" in text.lower()
                and getattr(namespace, action.dest, action.default) != action.default):
            named = any(option in text for option in action.option_strings)
            notes.append(text if named else f"{'/'.join(action.option_strings)}: {text}")
    return notes


def _verdict(parsers: tuple[Any, Any, Any], args: list[str]) -> dict[str, Any]:
    """Parse as `vllm serve <args>` does, then run the checks it runs before loading a model."""
    parser, subcommand, serve_parser = parsers
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), warnings.catch_warnings(record=True) as warned:
            warnings.simplefilter("always")
            namespace = parser.parse_args(["serve", *args])
    except SystemExit as exit_:  # argparse: usage and error on stderr, exit status 2
        message = stderr.getvalue().strip() or f"the parser exited with status {exit_.code}"
        return {"ok": False, "message": message, "warnings": []}
    except Exception as error:  # FlexibleArgumentParser raises for some misuse
        return {"ok": False, "message": f"{type(error).__name__}: {error}", "warnings": []}
    problems = []
    if namespace.model_tag is None:
        problems.append("no model: the first argument must be the model (vllm serve <model> ...); "
                        "without it vLLM serves its default model")
    try:
        subcommand.validate(namespace)
    except Exception as error:  # vLLM raises TypeError/ValueError with its own message
        problems.append(f"{type(error).__name__}: {error}")
    problems += _registry_problems(namespace)
    notes = [str(warning.message) for warning in warned]
    notes += [note for note in _deprecated_flags(serve_parser, namespace) if note not in notes]
    return {"ok": not problems, "message": "\n".join(problems), "warnings": notes}


def _main_in_vllm_venv() -> None:
    """Read {name: args} as JSON on stdin; write {vllm_version, verdicts} as JSON on stdout."""
    import importlib.metadata

    results = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # vLLM logs to stdout: keep that channel for the verdicts only
    arg_lists = json.load(sys.stdin)
    parsers = _serve_parser()
    verdicts = {name: _verdict(parsers, args) for name, args in arg_lists.items()}
    json.dump({"vllm_version": importlib.metadata.version("vllm"), "verdicts": verdicts}, results)
    results.close()


if __name__ == "__main__":
    _main_in_vllm_venv()
