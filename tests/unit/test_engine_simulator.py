"""`model.engine: simulator`: the vLLM container runs our image's simulator, with no GPU; the
kind backend's deploy objects and its smoke test, run here against real loopback servers."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest

from inferplane.cluster import simulator_stack
from inferplane.config import ConfigError
from inferplane.crds import CRD_SOURCES, GKE_KINDS, validate_custom_resource
from inferplane.gateway.keys import KeysFile, create_key, save_keys_file
from inferplane.gateway.settings import GatewaySettings
from inferplane.gateway.testing import running_gateway
from inferplane.render import GPU_RESOURCE, VLLM_PORT, render

from ..conftest import KUBERNETES_SCHEMA_VERSION, REPO
from .test_policy import (
    check, container, gpu_limit_equals_parallel_size, probes_present,
)
from .test_policy import rendered as rendered_for_policy

SIMULATOR = {"model": {"name": "nemotron-ultra-253b", "engine": "simulator"}}


def _deployment(manifests):
    return next(m for m in manifests if m["kind"] == "Deployment")


def _containers(manifests):
    spec = _deployment(manifests)["spec"]["template"]["spec"]
    return {c["name"]: c for c in spec["containers"]}, spec


def test_engine_defaults_to_vllm_and_rejects_unknown_engines(make_config):
    assert make_config().model.engine == "vllm"
    with pytest.raises(ConfigError, match="engine"):
        make_config(model={"engine": "tgi"})


@pytest.mark.parametrize("cache", ["pvc", "empty_dir", "host_path"])
def test_simulator_manifests_validate_strictly(make_config, cache):
    model_cache = {"kind": cache, **({"host_path": "/mnt/models"} if cache == "host_path" else {})}
    for manifest in render(make_config(**SIMULATOR, model_cache=model_cache)):
        if (manifest["apiVersion"], manifest["kind"]) in CRD_SOURCES:
            validate_custom_resource(manifest)
        elif (manifest["apiVersion"], manifest["kind"]) not in GKE_KINDS:
            kubernetes_validate.validate(manifest, KUBERNETES_SCHEMA_VERSION, strict=True)


def test_simulator_runs_our_image_with_the_served_name_and_no_vllm_flags(make_config):
    config = make_config(model={"name": "nemotron-ultra-253b", "engine": "simulator",
                                             "max_num_seqs": 32, "extra_args": ["--trust-remote-code"]})
    containers, _ = _containers(render(config))
    vllm = containers["vllm"]
    assert vllm["image"] == config.image.gateway
    assert vllm["command"] == ["inferplane", "simulator"]
    assert vllm["args"] == ["--host", "127.0.0.1", "--port", str(VLLM_PORT),
                            "--served-model-name", config.served_model_name,
                            "--catalog-key", "nemotron-ultra-253b",
                            "--max-model-len", str(config.max_model_len), "--max-num-seqs", "32"]
    assert not any(a.startswith(("--trust-remote-code", "--tensor-parallel-size")) for a in vllm["args"])


def test_simulator_asks_for_no_gpu_and_no_gpu_node(make_config):
    containers, spec = _containers(render(make_config(**SIMULATOR)))
    for name, c in containers.items():
        for kind in ("requests", "limits"):
            assert GPU_RESOURCE not in c["resources"].get(kind, {}), (name, kind)
    assert containers["vllm"]["resources"]["requests"] == {"cpu": "100m", "memory": "256Mi"}
    assert "nodeSelector" not in spec
    # The GPU toleration only permits: it lets the pod onto a tainted fake GPU node too.
    assert {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]


def test_vllm_engine_keeps_the_gpu_contract(make_config):
    containers, spec = _containers(render(make_config()))
    resources = containers["vllm"]["resources"]
    assert resources["limits"][GPU_RESOURCE] == resources["requests"][GPU_RESOURCE] == "8"
    assert spec["nodeSelector"] == {"inferplane.io/accelerator": "H100-80G"}
    assert containers["vllm"]["command"] == ["vllm", "serve"]


def test_simulator_keeps_the_probes_with_a_short_startup_budget(make_config):
    vllm_containers, _ = _containers(render(make_config()))
    sim_containers, _ = _containers(render(make_config(**SIMULATOR)))
    vllm, sim = vllm_containers["vllm"], sim_containers["vllm"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert sim[probe]["exec"] == vllm[probe]["exec"]
        assert f"127.0.0.1:{VLLM_PORT}/health" in sim[probe]["exec"]["command"][-1]
    startup = sim["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] <= 300
    assert vllm["startupProbe"]["failureThreshold"] > startup["failureThreshold"]


def test_simulator_fetches_no_weights(make_config):
    manifests = render(make_config(**SIMULATOR, model_cache={"kind": "pvc"}))
    kinds = {m["kind"] for m in manifests}
    assert "Job" not in kinds and "PersistentVolumeClaim" not in kinds
    _, spec = _containers(manifests)
    assert "initContainers" not in spec
    cache = next(v for v in spec["volumes"] if v["name"] == "model-cache")
    assert cache == {"name": "model-cache", "emptyDir": {"sizeLimit": "1Gi"}}


# -- the policy pack --

def test_policy_skips_the_gpu_rule_for_the_simulator_only():
    resources = rendered_for_policy(**SIMULATOR)
    deployment = next((t, p) for t, p in resources if t.endswith(":Deployment"))
    assert check(gpu_limit_equals_parallel_size, *deployment) == []
    assert check(probes_present, *deployment) == []
    # The same GPU-less container, running vLLM instead, is caught.
    vllm = container(resources, "vllm")
    vllm["command"], vllm["args"] = ["vllm", "serve"], ["m", "--tensor-parallel-size", "8"]
    assert any("no nvidia.com/gpu limit" in m for m in check(gpu_limit_equals_parallel_size, *deployment))


def test_policy_recognises_the_simulator_as_a_module_too():
    resources = rendered_for_policy(**SIMULATOR)
    deployment = next((t, p) for t, p in resources if t.endswith(":Deployment"))
    vllm = container(resources, "vllm")
    vllm["command"] = ["python3", "-m", "inferplane.simulator"]
    assert check(gpu_limit_equals_parallel_size, *deployment) == []


# -- what `cluster up --backend kind` deploys --

def render_simulator_stack():
    config = simulator_stack.simulator_config("inferplane/inferplane:dev",
                                              REPO / simulator_stack.LOCAL_STACK_FILE)
    return config, simulator_stack.manifests(config, '{"keys": []}')


def test_kind_deploys_the_local_stack_on_the_simulator_from_the_loaded_image():
    config, objects = render_simulator_stack()
    assert (config.name, config.namespace, config.cloud) == ("nemotron-ultra", "inferplane", "local")
    assert config.model.engine == "simulator"
    containers, _ = _containers(objects)
    for c in containers.values():
        assert c["image"] == "inferplane/inferplane:dev" and c["imagePullPolicy"] == "Never"
    for manifest in objects:
        kubernetes_validate.validate(manifest, KUBERNETES_SCHEMA_VERSION, strict=True)


def test_keys_secret_is_where_the_gateway_reads_it():
    config, objects = render_simulator_stack()
    kinds = [m["kind"] for m in objects]
    assert kinds.index("Namespace") < kinds.index("Secret") < kinds.index("Deployment")
    secret = next(m for m in objects if m["kind"] == "Secret")
    _, spec = _containers(objects)
    volume = next(v for v in spec["volumes"] if v["name"] == "api-keys")
    assert volume["secret"]["secretName"] == secret["metadata"]["name"] == config.keys_secret_name
    assert secret["metadata"]["namespace"] == config.namespace
    assert json.loads(base64.b64decode(secret["data"]["keys.json"])) == {"keys": []}


# -- the rendered simulator container, run for real, behind a real gateway --

@pytest.fixture
def served(tmp_path):
    """The vLLM container's rendered command on loopback (a free port), the rendered probe
    against it, and the gateway in front with one real key. Yields (base URL, key, config)."""
    config, objects = render_simulator_stack()
    vllm = _containers(objects)[0]["vllm"]
    args = list(vllm["args"])
    args[args.index("--port") + 1] = "0"
    program = Path(sys.executable).with_name(vllm["command"][0])
    process = subprocess.Popen([str(program), *vllm["command"][1:], *args],
                               stdout=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        found = re.search(r"listening on (http://127\.0\.0\.1:(\d+))", line)
        assert found, f"the rendered simulator command did not start: {line!r}"
        upstream, port = found.group(1), found.group(2)
        probe = [c.replace(f":{VLLM_PORT}/", f":{port}/") for c in vllm["readinessProbe"]["exec"]["command"]]
        assert subprocess.run([sys.executable, *probe[1:]], timeout=30).returncode == 0
        keys_file = KeysFile()
        key, _ = create_key(keys_file, tenant="smoke", name="kind smoke test")
        save_keys_file(tmp_path / "keys.json", keys_file)
        settings = GatewaySettings.from_deployment(
            config, keys_file=str(tmp_path / "keys.json"),
            ledger_url=f"sqlite:///{tmp_path / 'ledger.db'}", upstream_url=upstream)
        with running_gateway(settings) as (root, _app):
            yield f"{root}/v1", key, config
    finally:
        process.terminate()
        process.wait(10)
        process.stdout.close()


def test_smoke_test_passes_through_the_gateway_with_a_real_key(served):
    base_url, key, config = served
    reply = simulator_stack.smoke_test(base_url, key, config.served_model_name)
    assert reply.model == config.served_model_name and reply.usage.completion_tokens >= 1


def test_smoke_test_fails_clearly_with_a_wrong_key_or_model(served):
    base_url, key, config = served
    with pytest.raises(simulator_stack.SmokeTestError, match="401|[Ii]nvalid|key"):
        simulator_stack.smoke_test(base_url, "sk-not-a-key", config.served_model_name)
    with pytest.raises(simulator_stack.SmokeTestError, match="failed"):
        simulator_stack.smoke_test(base_url, key, "no-such-model")
