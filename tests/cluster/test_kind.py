"""The kind backend, as a user runs it: `inferplane cluster up --backend kind`.

Here (no Docker engine) kind runs on its podman provider with the node image that
cluster/kind_node.py builds from the pinned binaries, and the gateway image from cluster/images.py:
create the cluster, make its node a fake 8-GPU node, load the image, deploy the `local` stack with
the simulator in vLLM's place, and send a chat completion through the gateway with a real key.
Where a Docker engine answers, the same tests run kind's own node image instead. Under .ci/run a
machine that can run neither fails here (tests/cluster/conftest.py `require`).
"""

from __future__ import annotations

import pytest

from inferplane.cluster import kind, versions
from inferplane.testing.strict_skips import NOT_RUN

from .conftest import REPO_ROOT, require

pytestmark = pytest.mark.kind


@pytest.fixture(scope="module")
def kind_cluster(tmp_path_factory):
    """`inferplane cluster up --backend kind --no-deploy`; deleted after the module."""
    reason = kind.unavailable_reason()
    require(reason is None, f"kind cannot run here: {reason}")
    cluster = kind.up(kubeconfig=tmp_path_factory.mktemp("kind") / "kubeconfig", repo=REPO_ROOT,
                      deploy=False, echo=lambda message: None)
    try:
        yield cluster
    finally:
        kind.down()


def _core(cluster):
    from kubernetes import client as k8s
    from kubernetes import config as kube_config

    return k8s.CoreV1Api(kube_config.new_client_from_config(config_file=str(cluster.kubeconfig)))


def test_kind_node_is_a_fake_eight_gpu_node(kind_cluster):
    node = _core(kind_cluster).read_node(f"{kind.CLUSTER_NAME}-control-plane")
    assert node.status.allocatable["nvidia.com/gpu"] == "8"
    assert node.metadata.labels["inferplane.io/accelerator"] == "H100-80G"
    assert any(t.key == "nvidia.com/gpu" and t.effect == "NoSchedule" for t in node.spec.taints)


def test_the_podman_node_runs_the_pinned_kubelet_and_containerd(kind_cluster):
    if kind_cluster.provider != "podman":
        pytest.skip(f"{NOT_RUN} kind's own node image (docker provider) pins its own versions")
    info = _core(kind_cluster).read_node(f"{kind.CLUSTER_NAME}-control-plane").status.node_info
    assert info.kubelet_version == versions.KUBERNETES_VERSION
    containerd = versions.CONTAINERD_VERSION.lstrip("v")
    assert info.container_runtime_version == f"containerd://{containerd}"


def test_simulator_stack_answers_a_chat_completion_through_the_gateway(kind_cluster):
    text = kind.deploy_simulator_stack(kind_cluster, REPO_ROOT, echo=lambda message: None)
    assert text
    pods = _core(kind_cluster).list_namespaced_pod(
        "inferplane", label_selector="app.kubernetes.io/component=inference").items
    assert pods and all(p.status.phase == "Running" for p in pods)
    vllm = next(c for c in pods[0].spec.containers if c.name == "vllm")
    assert vllm.command == ["inferplane", "simulator"]
    gateway = next(c for c in pods[0].spec.containers if c.name == "gateway")
    assert gateway.image == kind_cluster.image
    # A wrong key is refused: the smoke test passed because of the real key.
    from inferplane.cluster import simulator_stack

    config = simulator_stack.simulator_config(kind_cluster.image,
                                              REPO_ROOT / simulator_stack.LOCAL_STACK_FILE)
    with simulator_stack.port_forward(kind_cluster.kubeconfig, config,
                                      kubectl=kind.kubectl()) as base_url:
        with pytest.raises(simulator_stack.SmokeTestError):
            simulator_stack.smoke_test(base_url, "sk-wrong", config.served_model_name)
