"""The weight pre-fetch on the real node: the production manifests with `model_cache.kind: pvc`
(the PVC, the pre-fetch Job, the inference pod's `wait-for-weights` init container) against a
Hugging Face Hub stand-in on the node's bridge address (the real Hub is out of reach).

What this node cannot provide is changed, and only that: the vLLM container becomes the
simulator's (no GPU, no vLLM image), the GPU node selectors go, the Job's CPU request (2 CPUs, for
hashing 500 GB) shrinks to fit a 2-core machine, and the Job gets HF_ENDPOINT (the stand-in's
address). The claim binds to a static `local` PersistentVolume (no provisioner here).
"""

from __future__ import annotations

import copy
import time

import pytest
import uvicorn
from kubernetes import client as k8s

from inferplane.cluster import simulator_stack
from inferplane.cluster.node import NODE_IP, RealNode
from inferplane.config import from_mapping
from inferplane.gateway.keys import KeysFile, create_key
from inferplane.render import render
from inferplane.testing.asgi import serving_in_thread

from ..integration.fake_hub import FakeRepo, create_app
from .conftest import REPO_ROOT

pytestmark = pytest.mark.cluster
NAMESPACE = "inferplane-weights"
STORAGE_CLASS = "inferplane-local-cache"
CACHE_VOLUME = "inferplane-model-cache"
SHARD = "model-00002-of-00002.safetensors"


def weights_config(image: str):
    """The `local` stack's config with the production engine and a pre-fetched PVC cache."""
    import yaml

    from inferplane.config import DeploymentConfig

    stack = yaml.safe_load((REPO_ROOT / simulator_stack.LOCAL_STACK_FILE).read_text())["config"]
    data = {k.removeprefix("inferplane:"): v for k, v in stack.items()
            if k.removeprefix("inferplane:") in DeploymentConfig.model_fields}
    data["namespace"] = NAMESPACE
    data["image"] = {"gateway": image, "pull_policy": "Never"}
    data["model_cache"] = {"kind": "pvc", "storage_class": STORAGE_CLASS}
    data["probes"] = {"termination_grace_seconds": 30}
    return from_mapping(data, "weights test")


def node_manifests(config, hub_url: str, keys_json: str) -> list[dict]:
    """The production objects, with only what this node lacks swapped (see the module doc)."""
    simulated = config.model_copy(update={"model": config.model.model_copy(
        update={"engine": "simulator"})})
    simulator_pod = next(m for m in render(simulated) if m["kind"] == "Deployment")[
        "spec"]["template"]["spec"]
    simulator = next(c for c in simulator_pod["containers"] if c["name"] == "vllm")
    objects = []
    for manifest in simulator_stack.manifests(config, keys_json):
        manifest = copy.deepcopy(manifest)
        if manifest["kind"] == "Deployment":
            pod = manifest["spec"]["template"]["spec"]
            assert [c["name"] for c in pod["initContainers"]] == ["wait-for-weights"]
            vllm = next(c for c in pod["containers"] if c["name"] == "vllm")
            mounts = vllm["volumeMounts"]
            vllm.clear()
            vllm.update(copy.deepcopy(simulator), volumeMounts=mounts)  # the PVC, read-only
            pod.pop("nodeSelector", None)
        if manifest["kind"] == "Job":
            pod = manifest["spec"]["template"]["spec"]
            pod.pop("nodeSelector", None)
            (fetch,) = pod["containers"]
            fetch["resources"] = {"requests": {"cpu": "100m", "memory": "256Mi"},
                                  "limits": {"cpu": "1", "memory": "1Gi"}}
            fetch["env"].append({"name": "HF_ENDPOINT", "value": hub_url})
        objects.append(manifest)
    assert {"Job", "PersistentVolumeClaim"} <= {m["kind"] for m in objects}
    return objects


def tiny_repo(repo_id: str) -> FakeRepo:
    shard = bytes(range(256)) * 1024
    return FakeRepo(
        repo=repo_id,
        files={"config.json": b'{"architectures": ["DeciLMForCausalLM"]}',
               "tokenizer.json": b'{"version": "1.0"}',
               "model-00001-of-00002.safetensors": shard,
               SHARD: shard[::-1],
               "original/consolidated.00.pth": b"x" * 1000},
        lfs={"model-00001-of-00002.safetensors", SHARD, "original/consolidated.00.pth"},
        unavailable={SHARD})  # until the test lets the Job have it


def wait_for(what: str, condition, timeout_seconds: float, poll_seconds: float = 2.0):
    deadline = time.monotonic() + timeout_seconds
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not within {timeout_seconds:.0f} s"
        time.sleep(poll_seconds)


def test_prefetch_job_fills_the_cache_and_the_init_container_waits_for_it(
        real_node_cluster, node_gateway_image, kube_client_real):
    config = weights_config(node_gateway_image)
    core, batch = k8s.CoreV1Api(kube_client_real), k8s.BatchV1Api(kube_client_real)
    job_name = f"{config.name}-fetch-weights"
    volume = RealNode(real_node_cluster.state_dir, echo=lambda m: None).persistent_volume(
        CACHE_VOLUME, config.cache_size_gib, STORAGE_CLASS)
    core.create_persistent_volume(volume)
    repo = tiny_repo(config.model_spec.hf_repo)
    keys_file = KeysFile()
    key, _ = create_key(keys_file, tenant="acme", name="weights test")
    hub = uvicorn.Server(uvicorn.Config(create_app(repo), lifespan="off", log_level="warning"))
    try:
        # The stand-in listens on the node IP (the host side of the pods' bridge).
        with serving_in_thread(hub, host=NODE_IP, name="hub stand-in") as hub_url:
            simulator_stack.apply(kube_client_real,
                                  node_manifests(config, hub_url, keys_file.model_dump_json()))

            def job_pods():
                return core.list_namespaced_pod(NAMESPACE,
                                                label_selector=f"job-name={job_name}").items

            def inference_pod():
                pods = [p for p in core.list_namespaced_pod(NAMESPACE).items
                        if (p.metadata.owner_references or [{}])[0].kind == "ReplicaSet"]
                return pods[0] if pods else None

            # While a shard is missing from the Hub the Job fails (and is retried), and the
            # inference pod holds in its init container: vLLM never starts on a partial cache.
            def failed_once():
                return any(s.restart_count >= 1 or s.state.terminated
                           for p in job_pods() for s in p.status.container_statuses or [])
            wait_for("the pre-fetch Job's first attempt failing", failed_once, 240)
            pod = inference_pod()
            assert pod is not None and pod.spec.node_name == job_pods()[0].spec.node_name
            (waiting,) = pod.status.init_container_statuses
            assert waiting.name == "wait-for-weights" and waiting.state.terminated is None
            assert not any(s.ready for s in pod.status.container_statuses or [])

            repo.unavailable.clear()
            wait_for("the pre-fetch Job completing",
                     lambda: batch.read_namespaced_job(job_name, NAMESPACE).status.succeeded, 300)
            simulator_stack.wait_available(kube_client_real, config, timeout_seconds=300)
        pod = inference_pod()
        (done,) = pod.status.init_container_statuses
        assert done.state.terminated is not None and done.state.terminated.exit_code == 0
        # What vLLM reads was fetched; the duplicate checkpoint was not.
        assert repo.downloads[SHARD] >= 1 and repo.downloads["config.json"] >= 1
        assert repo.downloads["original/consolidated.00.pth"] == 0
        service = core.read_namespaced_service(config.name, NAMESPACE)
        simulator_stack.smoke_test(
            f"http://{service.spec.cluster_ip}:{service.spec.ports[0].port}/v1", key,
            config.served_model_name)
    finally:
        try:
            core.delete_collection_namespaced_pod(NAMESPACE, grace_period_seconds=0)
            core.delete_namespace(NAMESPACE)
        except k8s.exceptions.ApiException:
            pass
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                core.read_namespace(NAMESPACE)
            except k8s.exceptions.ApiException:
                break
            time.sleep(1)
        try:
            core.delete_persistent_volume(CACHE_VOLUME)
        except k8s.exceptions.ApiException:
            pass
