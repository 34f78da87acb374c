"""The local cluster itself: real control plane, fake GPU nodes that schedule and run GPU pods."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from kubernetes import client as k8s

from inferplane.cluster import tools
from inferplane.cluster.local import FAKE_NODE_LABEL, LocalCluster, _process_alive
from inferplane.render import ACCELERATOR_LABEL, GPU_RESOURCE

from .conftest import require_tools

pytestmark = pytest.mark.cluster


def _wait_for(condition, timeout_seconds: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_seconds:.0f} s waiting for {what}")


def test_fake_nodes_look_like_eight_gpu_eu_nodes(kube_client):
    nodes = k8s.CoreV1Api(kube_client).list_node(label_selector=f"{FAKE_NODE_LABEL}=true").items
    assert len(nodes) == 2
    for node in nodes:
        assert node.status.allocatable[GPU_RESOURCE] == "8"
        assert node.status.capacity[GPU_RESOURCE] == "8"
        labels = node.metadata.labels
        assert labels[ACCELERATOR_LABEL] == "H100-80G"
        assert labels["topology.kubernetes.io/region"] == "europe-west4"
        assert labels["topology.kubernetes.io/zone"].startswith("europe-west4-")
        assert labels["nvidia.com/gpu.present"] == "true"
        taints = [(t.key, t.value, t.effect) for t in node.spec.taints]
        assert (GPU_RESOURCE, "present", "NoSchedule") in taints
        ready = [c for c in node.status.conditions if c.type == "Ready"]
        assert ready and ready[0].status == "True"


def test_real_api_server_reports_the_pinned_version(kube_client):
    from inferplane.cluster.versions import KUBERNETES_VERSION

    version = k8s.VersionApi(kube_client).get_code()
    assert version.git_version == KUBERNETES_VERSION


def _gpu_pod(name: str, gpus: int, tolerate: bool = True) -> dict:
    spec: dict = {
        "containers": [{"name": "main", "image": "registry.invalid/none:1",
                        "resources": {"limits": {GPU_RESOURCE: str(gpus)}}}],
        "nodeSelector": {ACCELERATOR_LABEL: "H100-80G"},
    }
    if tolerate:
        spec["tolerations"] = [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def test_gpu_pod_is_scheduled_onto_a_gpu_node_and_runs(kube_client):
    core = k8s.CoreV1Api(kube_client)
    core.create_namespaced_pod("default", _gpu_pod("eight-gpus", 8))
    try:
        pod = _wait_for(lambda: (p := core.read_namespaced_pod("eight-gpus", "default")).status.phase
                        == "Running" and p, what="the 8-GPU pod to run")
        assert pod.spec.node_name.startswith("gpu-h100-80g-")
        assert pod.status.pod_ip
    finally:
        core.delete_namespaced_pod("eight-gpus", "default", grace_period_seconds=0)


@pytest.mark.parametrize("gpus, tolerate, reason", [
    (9, True, "Insufficient nvidia.com/gpu"),
    (1, False, "untolerated taint"),
])
def test_scheduler_refuses_what_no_node_offers(kube_client, gpus, tolerate, reason):
    core = k8s.CoreV1Api(kube_client)
    name = f"unschedulable-{gpus}-{int(tolerate)}"
    core.create_namespaced_pod("default", _gpu_pod(name, gpus, tolerate))
    try:
        def unschedulable_message():
            conditions = core.read_namespaced_pod(name, "default").status.conditions or []
            return next((c.message for c in conditions
                         if c.type == "PodScheduled" and c.reason == "Unschedulable"), None)
        message = _wait_for(unschedulable_message, what="the scheduler's verdict")
        assert reason in message
    finally:
        core.delete_namespaced_pod(name, "default", grace_period_seconds=0)


def test_status_reports_every_process(local_cluster):
    report = LocalCluster(local_cluster.state_dir, echo=lambda m: None).status()
    assert report["running"] is True
    assert report["api"] == "ready"
    assert set(report["processes"]) == {"etcd", "kube-apiserver", "kube-controller-manager",
                                        "kube-scheduler", "kwok"}
    assert all(p["alive"] for p in report["processes"].values())


def test_down_stops_every_process_it_started_and_removes_state(tmp_path: Path):
    require_tools(tools.CLUSTER_TOOLS, "the local cluster")
    cluster = LocalCluster(tmp_path / "second", echo=lambda m: None)
    kubeconfig = tmp_path / "elsewhere" / "kubeconfig"
    info = cluster.up(nodes=1, kubeconfig=kubeconfig)
    assert kubeconfig.exists()
    processes = dict(info.processes)
    assert all(_process_alive(p["pid"], p["binary"]) for p in processes.values())

    stopped = cluster.down(quiet=True)

    assert sorted(stopped) == sorted(processes)
    assert not any(_process_alive(p["pid"], p["binary"]) for p in processes.values())
    assert not cluster.state_dir.exists()
    assert not kubeconfig.exists()
    assert cluster.status()["running"] is False
