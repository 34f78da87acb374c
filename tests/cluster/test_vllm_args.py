"""vLLM's own `serve` parser accepts what we render, for every catalog model, and rejects mistakes.

vLLM is installed (the version of the pinned image) into a cached venv on first use; every
argument list goes through ONE subprocess, since importing vLLM costs more than the parsing.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from inferplane import vllm_check
from inferplane.catalog import ACCELERATORS, MODELS, smallest_tensor_parallel_size
from inferplane.cli import app
from inferplane.config import DeploymentConfig, ImageConfig, from_mapping, load
from inferplane.render import vllm_args
from inferplane.vllm_check import (
    cache_root,
    check_vllm_arg_lists,
    default_vllm_version,
    is_prepared,
    prepare,
    venv_dir,
    vllm_version_of_image,
    with_local_files,
)

from ..conftest import REPO


def fitting_accelerator(model_key: str) -> str:
    """The first catalog accelerator on which the model fits at its full context."""
    model = MODELS[model_key]
    for key, accelerator in ACCELERATORS.items():
        if smallest_tensor_parallel_size(model, accelerator, model.max_context):
            return key
    raise AssertionError(f"{model_key} fits on no catalog accelerator")


def catalog_config(model_key: str, **model_fields) -> DeploymentConfig:
    return from_mapping({"name": "check", "model": {"name": model_key, **model_fields},
                         "accelerator": {"type": fitting_accelerator(model_key)}})


def with_extra(*extra_args: str) -> list[str]:
    return vllm_args(catalog_config("llama-3.3-70b-instruct", extra_args=list(extra_args)))


def replaced(args: list[str], flag: str, value: str) -> list[str]:
    args = list(args)
    args[args.index(flag) + 1] = value
    return args


LLAMA_ARGS = vllm_args(catalog_config("llama-3.3-70b-instruct"))

def checked_args(config: DeploymentConfig) -> list[str]:
    """The rendered args, with the container's paths to our mounted files made local (as
    `inferplane check-vllm-args` does), so vLLM imports our plugins and reads our template."""
    local, unmounted = with_local_files(config, vllm_args(config))
    assert not unmounted
    return local


NEMOTRON_ARGS = checked_args(catalog_config("nemotron-ultra-253b"))
ACCEPTED = {f"catalog:{key}": checked_args(catalog_config(key)) for key in MODELS}
ACCEPTED |= {f"example:{path.name}": checked_args(load(path))
             for path in sorted((REPO / "examples").glob("*.yaml"))}
# Every optional branch of render.vllm_args at once.
ACCEPTED["every-option"] = checked_args(catalog_config(
    "nemotron-ultra-253b-fp8", kv_cache_dtype="fp8", max_num_seqs=64, revision="main",
    served_name="nemotron", extra_args=["--enable-prefix-caching"]))
ACCEPTED["no-tool-calling"] = checked_args(catalog_config("gpt-oss-120b", tool_calling=False))
ACCEPTED["nemotron-no-tool-calling"] = checked_args(
    catalog_config("nemotron-ultra-253b", tool_calling=False))
BROKEN_TEMPLATE = Path(__file__).parent / "broken_chat_template.jinja"

# name -> (args, a piece of the message that says why)
REJECTED = {
    "misspelt-flag": (with_extra("--max-num-seqz", "8"), "unrecognized arguments: --max-num-seqz"),
    "bad-int": (with_extra("--max-num-seqs", "many"), "--max-num-seqs: invalid int value: 'many'"),
    "bad-choice": (with_extra("--dtype", "bfloat17"), "--dtype: invalid choice: 'bfloat17'"),
    # Names the parser takes as free text but the engine looks up only after loading weights:
    "unknown-tool-parser": (replaced(LLAMA_ARGS, "--tool-call-parser", "llama3_jsn"),
                            "--tool-call-parser 'llama3_jsn' is not a tool parser"),
    "unknown-kv-cache-dtype": (with_extra("--kv-cache-dtype", "fp9"),
                               "--kv-cache-dtype 'fp9' is not one of"),
    # vLLM's own pre-load validation (validate_parsed_serve_args) runs too:
    "auto-tool-choice-without-parser": (
        [a for a in LLAMA_ARGS if a not in ("--tool-call-parser", "llama3_json")],
        "--enable-auto-tool-choice requires --tool-call-parser"),
    "unknown-reasoning-parser": (with_extra("--reasoning-parser", "nemotron_v9"),
                                 "--reasoning-parser 'nemotron_v9' is not a reasoning parser"),
    # Without the model first, vLLM refuses, or (without --served-model-name) serves its default.
    "no-model-positional": (LLAMA_ARGS[1:], "`model` should be provided as the first positional"),
    "no-model-at-all": (LLAMA_ARGS[1:3], "vLLM serves its default model"),
    # Our plugin is imported as vLLM imports it: a name it does not register is caught.
    "plugin-without-that-parser": (
        replaced(NEMOTRON_ARGS, "--tool-call-parser", "inferplane_nemotron_jsn"),
        "--tool-call-parser 'inferplane_nemotron_jsn': not registered by the plugin tool_parser.py"),
    "missing-plugin-file": (
        replaced(NEMOTRON_ARGS, "--tool-parser-plugin", "/nonexistent/tool_parser.py"),
        "--tool-parser-plugin '/nonexistent/tool_parser.py': no such file"),
    "chat-template-syntax-error": (
        replaced(NEMOTRON_ARGS, "--chat-template", str(BROKEN_TEMPLATE)),
        "--chat-template broken_chat_template.jinja: line 2"),
}


@pytest.fixture(scope="module")
def verdicts():
    """Every case above through vLLM's parser in one subprocess."""
    cases = dict(ACCEPTED) | {name: args for name, (args, _) in REJECTED.items()}
    return check_vllm_arg_lists(cases)


@pytest.mark.vllm
@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_vllm_accepts_rendered_args(verdicts, name):
    verdict = verdicts[name]
    assert verdict.ok, f"vllm serve {' '.join(ACCEPTED[name])}\n{verdict.message}"
    assert verdict.warnings == (), "deprecated flags go away in a coming vLLM release"


@pytest.mark.vllm
@pytest.mark.parametrize("name", sorted(REJECTED))
def test_vllm_rejects_wrong_args(verdicts, name):
    verdict = verdicts[name]
    _, why = REJECTED[name]
    assert not verdict.ok
    assert why in verdict.message


def test_every_catalog_model_is_covered():
    assert {f"catalog:{key}" for key in MODELS} <= set(ACCEPTED)
    # The tool-parser check only means something if catalog models name parsers.
    assert any("--tool-call-parser" in args for args in ACCEPTED.values())


@pytest.mark.vllm
def test_cli_accepts_the_example_and_rejects_a_misspelt_flag(tmp_path):
    runner = CliRunner()
    example = REPO / "examples" / "nemotron-ultra.yaml"
    ok = runner.invoke(app, ["check-vllm-args", "-f", str(example)])
    assert ok.exit_code == 0, ok.output
    assert f"ok: vLLM {default_vllm_version()}'s serve parser accepts" in ok.stdout

    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  name: gpt-oss-120b\n  extra_args: ['--max-num-seqz', '8']\n")
    rejected = runner.invoke(app, ["check-vllm-args", "-f", str(bad)])
    assert rejected.exit_code == 1
    assert "unrecognized arguments: --max-num-seqz" in rejected.stderr
    assert "vllm serve openai/gpt-oss-120b " in rejected.stderr


@pytest.mark.vllm
def test_prepare_reuses_the_cached_venv():
    version = default_vllm_version()
    prepare(version)
    marker = venv_dir(version) / ".inferplane-ready"
    before = marker.stat().st_mtime_ns
    messages = []
    prepare(version, log=messages.append)
    assert is_prepared(version)
    assert marker.stat().st_mtime_ns == before
    assert messages == [f"vllm {version}: reusing {venv_dir(version)}"]


# -- no vLLM needed --


def test_vllm_version_comes_from_the_pinned_image_tag():
    image = ImageConfig.model_fields["vllm"].default
    assert default_vllm_version() == vllm_version_of_image(image)
    assert image.endswith(":v" + default_vllm_version())
    assert vllm_version_of_image("vllm/vllm-openai:v0.34.1") == "0.34.1"
    assert vllm_version_of_image("registry.example.eu/vllm-openai:0.35.0rc1") == "0.35.0rc1"


@pytest.mark.parametrize("image", ["vllm/vllm-openai@sha256:" + "0" * 64,
                                   "vllm/vllm-openai:nightly"])
def test_an_image_without_a_version_tag_is_refused_with_the_fix(image):
    with pytest.raises(ValueError, match="--vllm-version"):
        vllm_version_of_image(image)


def test_cache_is_machine_wide_and_movable(monkeypatch, tmp_path):
    monkeypatch.delenv("INFERPLANE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "inferplane"
    monkeypatch.setenv("INFERPLANE_CACHE", str(tmp_path / "explicit"))
    assert venv_dir("0.33.0") == tmp_path / "explicit" / "vllm-0.33.0"
    assert not is_prepared("0.33.0")


def test_the_parsing_script_imports_nothing_but_the_standard_library():
    # It runs inside the vllm venv, where inferplane and its dependencies are not installed.
    source = Path(vllm_check.__file__).read_text()
    top_level = [node for node in ast.parse(source).body
                 if isinstance(node, (ast.Import, ast.ImportFrom))]
    modules = {alias.name.split(".")[0] for node in top_level for alias in node.names
               if isinstance(node, ast.Import)}
    modules |= {node.module.split(".")[0] for node in top_level
                if isinstance(node, ast.ImportFrom) and node.module}
    assert modules - {"__future__"} <= set(sys.stdlib_module_names)


def test_a_flag_pointing_into_the_files_mount_must_be_backed_by_the_configmap():
    config = catalog_config("nemotron-ultra-253b")
    args = vllm_args(config) + ["--tool-parser-plugin", "/etc/inferplane/vllm/other.py"]
    local, unmounted = with_local_files(config, args)
    assert unmounted == ["/etc/inferplane/vllm/other.py: not in the rendered check-vllm-files "
                         "ConfigMap (it holds: chat_template.jinja, reasoning_parser.py, "
                         "tool_parser.py)"]
    assert not any(arg.startswith("/etc/inferplane/vllm/") for arg in local)
