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
import time

import pytest
from kubernetes import client as k8s

from inferplane.cluster import node as real_node
from inferplane.cluster import simulator_stack
from inferplane.gateway.keys import KeysFile, create_key
from inferplane.cluster import tools

from .conftest import REPO_ROOT, require_tools
from .kube_helpers import (assert_ledger_holds_one_reply, kubectl, service_base_url,
                           wait_gone)
from .pulumi_cli import PulumiCli, project_copy

pytestmark = pytest.mark.cluster


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


class GitOpsDeploy:
    """The GitOps path (`inferplane render` output + the keys Secret, server-side apply), with the
    two calls of PulumiCli the tests use."""

    def __init__(self, api_client, config):
        self.api_client, self.config, self.keys_json = api_client, config, ""

    def set(self, key: str, value: str, secret: bool = False) -> None:
        assert key == "apiKeysJson"
        self.keys_json = value

    def up(self) -> subprocess.CompletedProcess:
        simulator_stack.apply(self.api_client, simulator_stack.manifests(self.config, self.keys_json))
        return subprocess.CompletedProcess([], 0, "keys Secret updated", "")

    def destroy(self) -> None:
        # The pods' grace period (the preStop drain) is for real traffic, not for a test teardown.
        core = k8s.CoreV1Api(self.api_client)
        core.delete_collection_namespaced_pod(self.config.namespace, grace_period_seconds=0)
        core.delete_namespace(self.config.namespace)


@pytest.fixture(scope="module", params=["pulumi", "gitops"])
def simulator_deployment(request, real_node_cluster, node_gateway_image, kube_client_real,
                         tmp_path_factory):
    """The `local` stack with the simulator engine and our image, Available on the real node:
    `pulumi up` from Pulumi.yaml with the CLI as a user runs it (Pulumi awaits the Deployment), or
    the GitOps path (server-side apply of the rendered objects and the keys Secret)."""
    config = simulator_stack.simulator_config(node_gateway_image,
                                              REPO_ROOT / simulator_stack.LOCAL_STACK_FILE)
    keys_file = KeysFile()
    plaintext, entry = create_key(keys_file, tenant="acme", name="real node test")
    if request.param == "pulumi":
        require_tools(tools.PULUMI_TOOLS, "pulumi up on the real node")
        base = tmp_path_factory.mktemp("pulumi-real")
        deploy = PulumiCli(project_copy(base / "project"), base / "engine",
                           real_node_cluster.kubeconfig)
        deploy.init()
    else:
        deploy = GitOpsDeploy(kube_client_real, config)
    try:
        if request.param == "pulumi":
            deploy.set("model.engine", "simulator")
            deploy.set("image.gateway", node_gateway_image)
            deploy.set("image.pull_policy", "Never")
            deploy.set("waitForReady", True)
        deploy.set("apiKeysJson", keys_file.model_dump_json(), secret=True)
        deploy.up()
        simulator_stack.wait_available(kube_client_real, config, timeout_seconds=300)
        yield {"cli": deploy, "config": config, "key": plaintext, "entry": entry}
    finally:
        deploy.destroy()
        wait_gone(kube_client_real, config.namespace)


def test_pods_run_on_the_real_node_as_rendered(simulator_deployment, kube_client_real,
                                               real_node_cluster):
    config = simulator_deployment["config"]
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

    config, key, entry = (simulator_deployment[k] for k in ("config", "key", "entry"))
    base_url = service_base_url(kube_client_real, config)
    reply = simulator_stack.smoke_test(base_url, key, config.served_model_name)
    refused = openai.OpenAI(base_url=base_url, api_key="sk-not-a-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        refused.models.list()

    assert_ledger_holds_one_reply(real_node_cluster, kube_client_real, config, entry.id, reply)


def inference_pods(api_client, config) -> dict[str, tuple[str, int]]:
    """Running inference pods: name -> (uid, total container restarts)."""
    pods = k8s.CoreV1Api(api_client).list_namespaced_pod(
        config.namespace, label_selector="app.kubernetes.io/component=inference").items
    return {p.metadata.name: (p.metadata.uid, sum(s.restart_count for s in p.status.container_statuses))
            for p in pods if not p.metadata.deletion_timestamp}


def test_key_rotation_reaches_the_running_gateway_without_restart(simulator_deployment,
                                                                     kube_client_real):
    """A new key set (`pulumi config set --secret` + `pulumi up`, or a re-apply): kubelet updates
    the mounted Secret, the gateway accepts the new key and refuses the revoked one, no restart."""
    import openai

    cli, config, old_key = (simulator_deployment[k] for k in ("cli", "config", "key"))
    base_url = service_base_url(kube_client_real, config)
    before = inference_pods(kube_client_real, config)
    keys_file = KeysFile()
    new_key, new_entry = create_key(keys_file, tenant="acme", name="rotated")
    cli.set("apiKeysJson", keys_file.model_dump_json(), secret=True)
    up = cli.up()
    # The keys Secret changes: in place (GitOps re-apply), or replaced by pulumi-kubernetes, which
    # treats a Secret's data as immutable unless the provider sets enableSecretMutable.
    assert "updated" in up.stdout or "replaced" in up.stdout, up.stdout

    def accepted(key: str) -> bool:
        try:
            openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=10).models.list()
            return True
        except openai.AuthenticationError:
            return False

    # kubelet refreshes Secret volumes on its sync (seconds here); the gateway polls the file.
    deadline = time.monotonic() + 150
    while not (accepted(new_key) and not accepted(old_key)):
        assert time.monotonic() < deadline, "the rotated key set never reached the gateway"
        time.sleep(2)
    simulator_stack.smoke_test(base_url, new_key, config.served_model_name)
    assert inference_pods(kube_client_real, config) == before, "the rotation restarted a pod"
    simulator_deployment["key"], simulator_deployment["entry"] = new_key, new_entry
