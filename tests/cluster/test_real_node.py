"""The rendered workload on a real node: the gateway image built from the Dockerfile (on a Debian
base made by mmdebstrap), run by containerd + runc under a real kubelet, reached through its
Service's ClusterIP (kube-proxy's rules) with the official openai client.

The engine is the simulator (no GPU); every other object is what production renders. Needs root,
podman, mmdebstrap and the node tools: without them these tests skip with the reason, and under CI
(INFERPLANE_REQUIRE_CLUSTER_TOOLS=1) they fail.
"""

from __future__ import annotations

import json
import subprocess

import pytest
from kubernetes import client as k8s

from inferplane.cluster import node as real_node
from inferplane.cluster import simulator_stack
from inferplane.gateway.keys import KeysFile, create_key

from .conftest import REPO_ROOT

pytestmark = pytest.mark.cluster


def kubectl(cluster, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["kubectl", "--kubeconfig", str(cluster.kubeconfig), *args],
                          capture_output=True, text=True, timeout=120, check=check)


def test_real_node_is_ready_and_reported_as_real(real_node_cluster):
    from inferplane.cluster.local import LocalCluster

    report = LocalCluster(real_node_cluster.state_dir).status()
    assert report["running"]
    assert report["node_kinds"] == {real_node.NODE_NAME: "real"}
    assert {"containerd", "kubelet", "kube-proxy"} <= set(report["processes"])
    node = json.loads(kubectl(real_node_cluster, "get", "node", real_node.NODE_NAME,
                              "-o", "json").stdout)
    assert node["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://2.")
    assert node["status"]["nodeInfo"]["kubeletVersion"] == "v1.37.2"
    addresses = {a["type"]: a["address"] for a in node["status"]["addresses"]}
    assert addresses["InternalIP"] == real_node.NODE_IP
    ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
    assert ready and ready[0]["status"] == "True"


@pytest.fixture(scope="module")
def simulator_deployment(real_node_cluster, node_gateway_image, kube_client_real):
    """The `local` stack on the simulator, from our image, applied and Available on the real node."""
    config = simulator_stack.simulator_config(node_gateway_image,
                                              REPO_ROOT / simulator_stack.LOCAL_STACK_FILE)
    keys_file = KeysFile()
    plaintext, entry = create_key(keys_file, tenant="acme", name="real node test")
    objects = simulator_stack.manifests(config, keys_file.model_dump_json())
    simulator_stack.apply(kube_client_real, objects)
    simulator_stack.wait_available(kube_client_real, config, timeout_seconds=300)
    yield config, plaintext, entry


def test_pods_run_on_the_real_node_as_rendered(simulator_deployment, kube_client_real,
                                               real_node_cluster):
    config, _key, _entry = simulator_deployment
    core = k8s.CoreV1Api(kube_client_real)
    pods = core.list_namespaced_pod(
        config.namespace, label_selector="app.kubernetes.io/component=inference").items
    assert pods
    for pod in pods:
        assert pod.spec.node_name == real_node.NODE_NAME
        assert pod.status.pod_ip.startswith("10.245.0.")
        statuses = {s.name: s for s in pod.status.container_statuses}
        assert statuses["gateway"].ready and statuses["vllm"].ready
        assert statuses["gateway"].started and statuses["vllm"].started
    pod = pods[0].metadata.name
    # The container really runs as the pod's non-root user on a read-only root filesystem.
    who = kubectl(real_node_cluster, "-n", config.namespace, "exec", pod, "-c", "gateway", "--",
                  "python3", "-c", "import os; print(os.getuid())")
    assert who.stdout.strip() == "1000"
    write = kubectl(real_node_cluster, "-n", config.namespace, "exec", pod, "-c", "gateway", "--",
                    "python3", "-c", "open('/opt/probe', 'w')", check=False)
    assert write.returncode != 0 and "Read-only file system" in write.stderr


def test_openai_client_through_the_cluster_ip_and_usage_in_the_ledger(
        simulator_deployment, kube_client_real, real_node_cluster):
    import openai

    config, key, entry = simulator_deployment
    service = k8s.CoreV1Api(kube_client_real).read_namespaced_service(config.name, config.namespace)
    base_url = f"http://{service.spec.cluster_ip}:{service.spec.ports[0].port}/v1"
    reply = simulator_stack.smoke_test(base_url, key, config.model.name)
    refused = openai.OpenAI(base_url=base_url, api_key="sk-not-a-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        refused.models.list()

    core = k8s.CoreV1Api(kube_client_real)
    pods = core.list_namespaced_pod(
        config.namespace, label_selector="app.kubernetes.io/component=inference").items
    totals = {"requests": 0, "completion_tokens": 0}
    for pod in pods:
        usage = kubectl(real_node_cluster, "-n", config.namespace, "exec", pod.metadata.name,
                        "-c", "gateway", "--", "inferplane", "usage", "--ledger",
                        "sqlite:////var/lib/inferplane/ledger.db", "--by", "key", "-o", "json")
        for row in json.loads(usage.stdout).get("rows", json.loads(usage.stdout)):
            if row.get("key") in (entry.id, entry.name, getattr(entry, "key_id", None)):
                totals["requests"] += row["requests"]
                totals["completion_tokens"] += row["completion_tokens"]
    assert totals == {"requests": 1, "completion_tokens": reply.usage.completion_tokens}
