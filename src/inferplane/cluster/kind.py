"""`inferplane cluster up --backend kind`: a kind cluster (needs Docker) with the same fake GPU nodes.

kind runs a real kubelet in a container, so the node advertises `nvidia.com/gpu` the documented way
for extended resources (a node status patch) and carries the same taint and labels as the kwok
nodes. The repo's image (gateway + simulator) is built and loaded, so the `local` stack can run with
the simulator in place of vLLM.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from inferplane.cluster.local import DEFAULT_STATE_DIR, fake_gpu_node

CLUSTER_NAME = "inferplane"
DEV_IMAGE = "inferplane/inferplane:dev"


class KindError(RuntimeError):
    """kind cannot run here, or a step failed: the message says which and what to do."""


def unavailable_reason() -> str | None:
    """Why kind cannot run on this machine, or None when it can."""
    for command in ("docker", "kind", "kubectl"):
        if not shutil.which(command):
            return (f"`{command}` is not on PATH: the kind backend needs Docker, kind "
                    "(https://kind.sigs.k8s.io) and kubectl; use --backend local otherwise")
    result = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"],
                            capture_output=True, text=True)
    if result.returncode != 0:
        return f"no Docker engine answers (`docker info`: {result.stderr.strip()[:200]})"
    return None


def _run(args: list[str], cwd: Path | None = None) -> str:
    result = subprocess.run(args, capture_output=True, text=True, cwd=cwd)
    if result.returncode != 0:
        raise KindError(f"`{' '.join(args)}` failed ({result.returncode}): "
                        f"{(result.stderr or result.stdout).strip()[-2000:]}")
    return result.stdout


def up(kubeconfig: Path | None = None, repo: Path | None = None, deploy: bool = True) -> Path:
    """Create the kind cluster, make its node a fake 8-GPU node, build and load the repo's image,
    then (with `deploy`) run the `local` stack on the simulator and smoke-test it."""
    reason = unavailable_reason()
    if reason:
        raise KindError(reason)
    kubeconfig = (kubeconfig or DEFAULT_STATE_DIR / "kind.kubeconfig").resolve()
    kubeconfig.parent.mkdir(parents=True, exist_ok=True)
    clusters = _run(["kind", "get", "clusters"]).split()
    if CLUSTER_NAME not in clusters:
        _run(["kind", "create", "cluster", "--name", CLUSTER_NAME, "--kubeconfig", str(kubeconfig),
              "--wait", "180s"])
    else:
        kubeconfig.write_text(_run(["kind", "get", "kubeconfig", "--name", CLUSTER_NAME]))
    kubectl = ["kubectl", "--kubeconfig", str(kubeconfig)]
    node_name = f"{CLUSTER_NAME}-control-plane"
    fake = fake_gpu_node(node_name)
    labels = {k: v for k, v in fake["metadata"]["labels"].items()
              if not k.startswith("kubernetes.io/") and k != "inferplane.io/fake-node"}
    _run([*kubectl, "label", "node", node_name, "--overwrite",
          *[f"{k}={v}" for k, v in labels.items()]])
    taint = fake["spec"]["taints"][0]
    _run([*kubectl, "taint", "node", node_name, "--overwrite",
          f"{taint['key']}={taint['value']}:{taint['effect']}"])
    gpus = {key: value for key, value in fake["status"]["capacity"].items() if "/" in key}
    _run([*kubectl, "patch", "node", node_name, "--subresource=status", "--type=merge", "-p",
          json.dumps({"status": {"capacity": gpus}})])
    repo = repo or Path.cwd()
    if not (repo / "Dockerfile").exists():
        raise KindError(f"no Dockerfile in {repo}: run from the repository root")
    _run(["docker", "build", "-t", DEV_IMAGE, str(repo)])
    _run(["kind", "load", "docker-image", DEV_IMAGE, "--name", CLUSTER_NAME])
    print(f"kind cluster {CLUSTER_NAME} up; image {DEV_IMAGE} loaded\nexport KUBECONFIG={kubeconfig}")
    if deploy:
        deploy_simulator_stack(kubeconfig, repo)
    return kubeconfig


def deploy_simulator_stack(kubeconfig: Path, repo: Path) -> str:
    """Apply the `local` stack with the simulator, wait for it, and send one chat completion
    through the gateway with a real key. Returns the reply's text."""
    from kubernetes import config as kube_config

    from inferplane.cluster import simulator_stack
    from inferplane.dev import ensure_demo_key

    config = simulator_stack.simulator_config(DEV_IMAGE, repo / simulator_stack.LOCAL_STACK_FILE)
    keys_dir = kubeconfig.parent / "kind-keys"
    key, _ = ensure_demo_key(keys_dir)  # plaintext only in a 0600 file; the Secret holds hashes
    objects = simulator_stack.manifests(config, (keys_dir / "keys.json").read_text())
    api = kube_config.new_client_from_config(config_file=str(kubeconfig))
    try:
        simulator_stack.apply(api, objects)
        simulator_stack.wait_available(api, config)
    except simulator_stack.SmokeTestError as error:
        raise KindError(str(error)) from None
    finally:
        api.close()
    try:
        with simulator_stack.port_forward(kubeconfig, config) as base_url:
            reply = simulator_stack.smoke_test(base_url, key, config.served_model_name)
    except simulator_stack.SmokeTestError as error:
        raise KindError(str(error)) from None
    print(f"smoke test passed: {config.served_model_name} answered through the gateway "
          f"({reply.usage.completion_tokens} tokens); API key in {keys_dir / 'demo-key'}")
    return reply.choices[0].message.content


def down() -> None:
    """Delete the kind cluster (its containers and volumes)."""
    reason = unavailable_reason()
    if reason:
        raise KindError(reason)
    _run(["kind", "delete", "cluster", "--name", CLUSTER_NAME])
