"""The kind backend (needs Docker, kind and kubectl): skipped here with the reason, run where a
Docker engine exists with `.venv/bin/pytest -m kind tests/cluster/test_kind.py`.

The end-to-end test is the user's command: create the cluster, build and load the image, deploy the
`local` stack with the simulator in vLLM's place, and send a chat completion through the gateway
with a real key. The parts that need no Docker are tested in tests/unit/test_engine_simulator.py
and tests/cluster/test_simulator_stack.py.
"""

from __future__ import annotations

import pytest

from inferplane.cluster import kind

from .conftest import REPO_ROOT

_REASON = kind.unavailable_reason()

pytestmark = [
    pytest.mark.kind,
    pytest.mark.skipif(_REASON is not None, reason=f"NOT RUN HERE: kind needs a Docker engine: {_REASON}"),
]


@pytest.fixture(scope="module")
def kind_cluster(tmp_path_factory):
    """`inferplane cluster up --backend kind` without the deploy step; deleted after the module."""
    kubeconfig = kind.up(kubeconfig=tmp_path_factory.mktemp("kind") / "kubeconfig", repo=REPO_ROOT,
                         deploy=False)
    try:
        yield kubeconfig
    finally:
        kind.down()


def test_kind_node_is_a_fake_eight_gpu_node(kind_cluster):
    from kubernetes import client as k8s
    from kubernetes import config as kube_config

    api = kube_config.new_client_from_config(config_file=str(kind_cluster))
    node = k8s.CoreV1Api(api).read_node(f"{kind.CLUSTER_NAME}-control-plane")
    assert node.status.allocatable["nvidia.com/gpu"] == "8"
    assert node.metadata.labels["inferplane.io/accelerator"] == "H100-80G"
    assert any(t.key == "nvidia.com/gpu" and t.effect == "NoSchedule" for t in node.spec.taints)


def test_simulator_stack_answers_a_chat_completion_through_the_gateway(kind_cluster):
    from kubernetes import client as k8s
    from kubernetes import config as kube_config

    text = kind.deploy_simulator_stack(kind_cluster, REPO_ROOT)
    assert text
    api = kube_config.new_client_from_config(config_file=str(kind_cluster))
    pods = k8s.CoreV1Api(api).list_namespaced_pod(
        "inferplane", label_selector="app.kubernetes.io/component=inference").items
    assert pods and all(p.status.phase == "Running" for p in pods)
    vllm = next(c for c in pods[0].spec.containers if c.name == "vllm")
    assert vllm.command == ["inferplane", "simulator"]
    # A wrong key is refused: the smoke test passed because of the real key.
    from inferplane.cluster import simulator_stack

    config = simulator_stack.simulator_config(kind.DEV_IMAGE, REPO_ROOT / simulator_stack.LOCAL_STACK_FILE)
    with simulator_stack.port_forward(kind_cluster, config) as base_url:
        with pytest.raises(simulator_stack.SmokeTestError):
            simulator_stack.smoke_test(base_url, "sk-wrong", config.served_model_name)
