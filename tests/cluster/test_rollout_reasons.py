"""inferplane.rollout against a real API server: what a stuck rollout's error hook prints."""

from __future__ import annotations

import datetime
import uuid

import pytest
from kubernetes import client as k8s

from inferplane.rollout import api_client, pod_reasons

pytestmark = pytest.mark.cluster

# Unique per run: a deleted namespace lingers while it terminates.
NAMESPACE = f"rollout-reasons-{uuid.uuid4().hex[:6]}"
SELECTOR = {"app.kubernetes.io/name": "crashing"}


# A Node without kwok's label: no kubelet and no kwok write its pods' status, and the pod garbage
# collector keeps them (it removes pods bound to a Node that does not exist).
NODE = f"{NAMESPACE}-node"


@pytest.fixture
def namespace(kube_client):
    core = k8s.CoreV1Api(kube_client)
    core.create_node({"metadata": {"name": NODE}})
    core.create_namespace({"metadata": {"name": NAMESPACE}})
    try:
        yield core
    finally:
        core.delete_namespace(NAMESPACE)
        core.delete_node(NODE)


def test_a_crashing_container_is_explained_by_its_state_exit_and_events(local_cluster, namespace):
    core = namespace
    # Nothing but this test writes its status: the state a real kubelet reports for a container
    # that keeps crashing.
    core.create_namespaced_pod(NAMESPACE, {
        "metadata": {"name": "crashing-0", "labels": SELECTOR},
        "spec": {"nodeName": NODE, "containers": [{"name": "vllm", "image": "vllm:0.33.0"}]},
    })
    now = datetime.datetime.now(datetime.timezone.utc)
    core.patch_namespaced_pod_status("crashing-0", NAMESPACE, {"status": {
        "phase": "Running",
        "conditions": [{"type": "PodScheduled", "status": "True"},
                       {"type": "Ready", "status": "False", "reason": "ContainersNotReady"}],
        "containerStatuses": [{
            "name": "vllm", "image": "vllm:0.33.0", "imageID": "", "ready": False, "restartCount": 4,
            "state": {"waiting": {"reason": "CrashLoopBackOff",
                                  "message": "back-off 1m20s restarting failed container=vllm"}},
            "lastState": {"terminated": {"exitCode": 1, "reason": "Error",
                                         "startedAt": now.isoformat(), "finishedAt": now.isoformat()}},
        }],
    }})
    for index, (kind, reason, message) in enumerate([
            ("Normal", "Pulled", "Container image already present on machine"),
            ("Warning", "BackOff", "Back-off restarting failed container vllm")]):
        core.create_namespaced_event(NAMESPACE, {
            "metadata": {"name": f"crashing-0.{index}"},
            "involvedObject": {"kind": "Pod", "name": "crashing-0", "namespace": NAMESPACE},
            "type": kind, "reason": reason, "message": message, "count": 5,
            "firstTimestamp": now.isoformat(), "lastTimestamp": now.isoformat(),
        })
    # A ready pod of the same app says nothing; another app's pod is not read.
    for name, labels in (("ready-0", SELECTOR), ("other-0", {"app.kubernetes.io/name": "other"})):
        core.create_namespaced_pod(NAMESPACE, {
            "metadata": {"name": name, "labels": labels},
            "spec": {"nodeName": NODE, "containers": [{"name": "c", "image": "c:1"}]},
        })
    core.patch_namespaced_pod_status("ready-0", NAMESPACE, {"status": {
        "phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}})

    # The kubeconfig as a path (what `inferplane:kubeconfig` or KUBECONFIG give) ...
    client = api_client(str(local_cluster.kubeconfig))
    try:
        reasons = pod_reasons(client, NAMESPACE, SELECTOR)
    finally:
        client.close()
    assert reasons == [
        "pod crashing-0: container vllm: CrashLoopBackOff: back-off 1m20s restarting failed "
        "container=vllm",
        "pod crashing-0: container vllm last exited 1 (Error)",
        "pod crashing-0: event BackOff (x5): Back-off restarting failed container vllm",
    ]
    # ... and as its contents (what a cloud node pool's output gives).
    client = api_client(local_cluster.kubeconfig.read_text())
    try:
        assert pod_reasons(client, NAMESPACE, SELECTOR) == reasons
    finally:
        client.close()
