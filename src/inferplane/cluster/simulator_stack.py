"""The `local` stack with the simulator in place of vLLM: config, apply, wait, and a smoke test.

Used by `inferplane cluster up --backend kind` after the image is loaded. Everything here but the
port-forward runs without Docker, so it is tested against the local (kwok) cluster and a loopback
gateway as well. The objects go in with server-side apply, the GitOps path (`inferplane render`).
"""

from __future__ import annotations

import base64
import contextlib
import re
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import yaml

from inferplane.config import DeploymentConfig, from_mapping
from inferplane.render import render

FIELD_MANAGER = "inferplane-kind"
LOCAL_STACK_FILE = Path("stacks") / "Pulumi.local.yaml"
_FORWARDING = re.compile(r"Forwarding from 127\.0\.0\.1:(\d+)")


class SmokeTestError(RuntimeError):
    """The deployed service did not answer a chat completion as it should; the message says how."""


def local_stack_config(image: str, stack_file: Path = LOCAL_STACK_FILE,
                       **sections: Any) -> DeploymentConfig:
    """The `local` stack's deployment config with our `image` (loaded into the node, never
    pulled) and the given sections merged over the stack's (e.g. model={"engine": ...})."""
    stack = yaml.safe_load(stack_file.read_text())["config"]
    data: dict[str, Any] = {}
    for key, value in stack.items():
        field = key.removeprefix("inferplane:")
        if field in DeploymentConfig.model_fields:
            data[field] = value
    sections["image"] = {**sections.get("image", {}), "gateway": image, "pull_policy": "Never"}
    for field, value in sections.items():
        data[field] = {**data.get(field, {}), **value} if isinstance(value, dict) else value
    engine = data.get("model", {}).get("engine", "vllm")
    return from_mapping(data, f"{stack_file} (engine: {engine})")


def simulator_config(image: str, stack_file: Path = LOCAL_STACK_FILE) -> DeploymentConfig:
    """The `local` stack's deployment config, with the simulator (from `image`) in vLLM's place."""
    return local_stack_config(image, stack_file, model={"engine": "simulator"})


def keys_secret(config: DeploymentConfig, keys_json: str) -> dict[str, Any]:
    """The Secret the gateway reads its hashed keys from (`inferplane keys create` writes keys.json)."""
    return {
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": config.keys_secret_name, "namespace": config.namespace},
        "data": {"keys.json": base64.b64encode(keys_json.encode()).decode()},
    }


def manifests(config: DeploymentConfig, keys_json: str) -> list[dict[str, Any]]:
    """Rendered objects plus the keys Secret, in apply order (the Secret right after the Namespace)."""
    rendered = render(config)
    return [rendered[0], keys_secret(config, keys_json), *rendered[1:]]


def apply(api_client: Any, objects: list[dict[str, Any]]) -> None:
    """Server-side apply each object (creates or updates; our field manager owns what we set)."""
    from kubernetes.dynamic import DynamicClient

    dynamic = DynamicClient(api_client)
    for manifest in objects:
        resource = dynamic.resources.get(api_version=manifest["apiVersion"], kind=manifest["kind"])
        resource.server_side_apply(body=manifest, field_manager=FIELD_MANAGER, force_conflicts=True,
                                   namespace=manifest["metadata"].get("namespace"))


def wait_available(api_client: Any, config: DeploymentConfig, timeout_seconds: float = 300) -> None:
    """Wait until the Deployment reports Available with every replica ready; raise with its state."""
    from kubernetes import client as k8s

    apps = k8s.AppsV1Api(api_client)
    deadline = time.monotonic() + timeout_seconds
    state = "not found"
    while time.monotonic() < deadline:
        deployment = apps.read_namespaced_deployment(config.name, config.namespace)
        conditions = {c.type: c for c in deployment.status.conditions or []}
        available = conditions.get("Available")
        ready = deployment.status.ready_replicas or 0
        if available is not None and available.status == "True" and ready >= config.replicas:
            return
        state = (f"{ready}/{config.replicas} ready; " + "; ".join(
            f"{c.type}={c.status} ({c.message})" for c in conditions.values()))
        time.sleep(2)
    raise SmokeTestError(f"Deployment {config.namespace}/{config.name} not Available after "
                         f"{timeout_seconds:.0f} s: {state}")


@contextlib.contextmanager
def port_forward(kubeconfig: Path, config: DeploymentConfig, timeout_seconds: float = 30,
                 kubectl: str = "kubectl") -> Iterator[str]:
    """`kubectl port-forward` to the gateway port of the Deployment; yields the OpenAI base URL."""
    process = subprocess.Popen(
        [kubectl, "--kubeconfig", str(kubeconfig), "-n", config.namespace, "port-forward",
         "--address", "127.0.0.1", f"deployment/{config.name}", f":{config.gateway.port}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + timeout_seconds
        assert process.stdout is not None
        for line in process.stdout:
            found = _FORWARDING.search(line)
            if found:
                yield f"http://127.0.0.1:{found.group(1)}/v1"
                return
            if time.monotonic() > deadline:
                break
        raise SmokeTestError(f"kubectl port-forward did not start (exit {process.poll()})")
    finally:
        process.terminate()
        process.wait(10)


def smoke_test(base_url: str, api_key: str, model: str) -> Any:
    """One chat completion through the gateway with the openai client; raise unless it is a real one."""
    import openai

    client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=30.0)
    try:
        reply = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Say hello to inferplane."}],
            max_tokens=32)
    except openai.APIError as error:
        raise SmokeTestError(f"chat completion through {base_url} failed: {error}") from None
    content = reply.choices[0].message.content if reply.choices else None
    if not content or reply.model != model:
        raise SmokeTestError(f"chat completion through {base_url} came back empty or from another "
                             f"model ({reply.model!r}, content {content!r})")
    if reply.usage is None or reply.usage.completion_tokens < 1:
        raise SmokeTestError(f"chat completion through {base_url} reports no usage: {reply.usage}")
    return reply
