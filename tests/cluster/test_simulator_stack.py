"""What `cluster up --backend kind` deploys, applied to the local cluster (no Docker needed): the
`local` stack on the simulator plus the keys Secret go in with server-side apply, and the
Deployment becomes Available on a fake GPU node without asking for a GPU."""

from __future__ import annotations

import base64
import json

import pytest
from kubernetes import client as k8s

from inferplane.cluster import simulator_stack
from inferplane.gateway.keys import KeysFile, create_key

from .conftest import REPO_ROOT

pytestmark = pytest.mark.cluster


def test_simulator_stack_applies_and_becomes_available(kube_client):
    from kubernetes.dynamic import DynamicClient

    config = simulator_stack.simulator_config("inferplane/inferplane:dev",
                                              REPO_ROOT / simulator_stack.LOCAL_STACK_FILE)
    keys_file = KeysFile()
    create_key(keys_file, tenant="smoke", name="cluster test")
    keys_json = keys_file.model_dump_json()
    objects = simulator_stack.manifests(config, keys_json)
    try:
        simulator_stack.apply(kube_client, objects)
        simulator_stack.apply(kube_client, objects)  # idempotent: a re-run of `cluster up`
        simulator_stack.wait_available(kube_client, config, timeout_seconds=120)
        core = k8s.CoreV1Api(kube_client)
        secret = core.read_namespaced_secret(config.keys_secret_name, config.namespace)
        assert json.loads(base64.b64decode(secret.data["keys.json"])) == json.loads(keys_json)
        pods = core.list_namespaced_pod(
            config.namespace, label_selector="app.kubernetes.io/component=inference").items
        assert pods and all(p.spec.node_name for p in pods)
        vllm = next(c for c in pods[0].spec.containers if c.name == "vllm")
        assert vllm.command == ["inferplane", "simulator"]
        assert "nvidia.com/gpu" not in (vllm.resources.limits or {})
    finally:
        dynamic = DynamicClient(kube_client)
        for manifest in reversed(objects):
            resource = dynamic.resources.get(api_version=manifest["apiVersion"], kind=manifest["kind"])
            try:
                resource.delete(name=manifest["metadata"]["name"],
                                namespace=manifest["metadata"].get("namespace"))
            except k8s.exceptions.ApiException as error:
                if error.status != 404:
                    raise
