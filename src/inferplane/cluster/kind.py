"""`inferplane cluster up --backend kind`: a kind cluster with the same fake GPU node.

kind runs a real kubelet in a container, so the node advertises `nvidia.com/gpu` the documented way
for extended resources (a node status patch) and carries the same taint and labels as the kwok
nodes. The repo's image (gateway + simulator) is built and loaded, so the `local` stack can run with
the simulator in place of vLLM.

Two providers:
- docker, where a Docker engine answers: kind's own node image (kindest/node) and `docker build`;
- podman otherwise (kind's podman provider): the node image made by cluster/kind_node.py and the
  gateway image made by cluster/images.py, with the pinned kind, kubeadm and kubectl, so no
  registry is needed. This is the one CI runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

from inferplane.cluster import images, kind_node, tools
from inferplane.cluster.local import DEFAULT_STATE_DIR, fake_gpu_node

CLUSTER_NAME = "inferplane"
DEV_IMAGE = "inferplane/inferplane:dev"  # the docker provider's `docker build` tag
# kind's podman provider bind-mounts the host's kernel modules into the node.
MODULES_DIR = Path("/lib/modules")


class KindError(RuntimeError):
    """kind cannot run here, or a step failed: the message says which and what to do."""


@dataclass(frozen=True)
class KindCluster:
    kubeconfig: Path
    image: str  # the gateway image loaded into the node (never pulled)
    provider: str


def _docker_problem() -> str | None:
    """Why no Docker engine can be used, or None when one answers."""
    if not shutil.which("docker"):
        return "`docker` is not on PATH"
    result = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"],
                            capture_output=True, text=True)
    if result.returncode != 0:
        return f"no Docker engine answers (`docker info`: {result.stderr.strip()[:200]})"
    return None


def _podman_problem() -> str | None:
    """Why kind's podman provider cannot run here, or None when it can."""
    if not shutil.which("podman"):
        return "`podman` is not on PATH (apt-get install podman)"
    missing = tools.missing((*tools.KIND_TOOLS, *kind_node.TOOLS))
    if missing:
        return (f"the podman provider needs {', '.join(t.name for t in missing)}: run "
                "`inferplane cluster tools`")
    if not MODULES_DIR.is_dir():
        return (f"kind's podman provider bind-mounts {MODULES_DIR}, which this machine lacks: "
                f"mkdir -p {MODULES_DIR} (scripts/install-system-deps does it)")
    return None


def provider() -> str:
    """docker where a Docker engine answers, else podman; KindError when neither can run."""
    docker = _docker_problem()
    if docker is None:
        return "docker"
    podman = _podman_problem()
    if podman is None:
        return "podman"
    raise KindError(f"kind needs a Docker engine or podman: {docker}; {podman}")


def unavailable_reason() -> str | None:
    """Why kind cannot run on this machine, or None when it can."""
    try:
        provider()
    except KindError as error:
        return str(error)
    return None


def _binary(tool: tools.Tool, name: str) -> str:
    """Our pinned build when there is one, else the one on PATH (the docker provider's users)."""
    if tool.is_built():
        return str(tool.path(name))
    found = shutil.which(name)
    if not found:
        raise KindError(f"`{name}` is not built or on PATH: run `inferplane cluster tools --only "
                        "kind`, or install it (https://kind.sigs.k8s.io)")
    return found


def kubectl() -> str:
    """The kubectl to drive the kind cluster with: ours (the pinned version) when built."""
    return _binary(tools.KUBERNETES_KIND, "kubectl")


def _environment(kind_provider: str) -> dict[str, str]:
    if kind_provider == "podman":
        return kind_node.podman_environment()
    return dict(os.environ)


def _run(args: list[str], env: dict[str, str], cwd: Path | None = None) -> str:
    result = subprocess.run(args, capture_output=True, text=True, cwd=cwd, env=env)
    if result.returncode != 0:
        raise KindError(f"`{' '.join(args)}` failed ({result.returncode}): "
                        f"{(result.stderr or result.stdout).strip()[-2000:]}")
    return result.stdout


def kind_config(node_image: str) -> dict:
    """The cluster config for our node image (cluster/kind_node.py says why each patch)."""
    patches = [
        {"kind": "ClusterConfiguration",
         "etcd": {"local": {"imageTag": kind_node.etcd_image_tag()}}},
        # preflight: as kind itself skips it; addon/coredns: no CoreDNS image here.
        {"kind": "InitConfiguration", "skipPhases": ["preflight", "addon/coredns"]},
        # Kubernetes >= 1.35's kubelet refuses cgroup v1 unless told not to.
        {"kind": "KubeletConfiguration", "failCgroupV1": False},
    ]
    return {
        "kind": "Cluster", "apiVersion": "kind.x-k8s.io/v1alpha4",
        "networking": {"disableDefaultCNI": True, "podSubnet": kind_node.POD_SUBNET},
        "nodes": [{"role": "control-plane", "image": node_image}],
        "kubeadmConfigPatches": [yaml.safe_dump(patch) for patch in patches],
    }


def up(kubeconfig: Path | None = None, repo: Path | None = None, deploy: bool = True,
       echo: Callable[[str], None] = print) -> KindCluster:
    """Create the kind cluster, make its node a fake 8-GPU node, build and load the repo's image,
    then (with `deploy`) run the `local` stack on the simulator and smoke-test it."""
    kind_provider = provider()
    env = _environment(kind_provider)
    kind = _binary(tools.KIND, "kind")
    kubeconfig = (kubeconfig or DEFAULT_STATE_DIR / "kind.kubeconfig").resolve()
    kubeconfig.parent.mkdir(parents=True, exist_ok=True)
    repo = repo or Path.cwd()
    if not (repo / "Dockerfile").exists():
        raise KindError(f"no Dockerfile in {repo}: run from the repository root")
    clusters = _run([kind, "get", "clusters"], env).split()
    if CLUSTER_NAME not in clusters:
        create = [kind, "create", "cluster", "--name", CLUSTER_NAME,
                  "--kubeconfig", str(kubeconfig), "--wait", "180s"]
        if kind_provider == "podman":
            config = kubeconfig.parent / "kind-config.yaml"
            config.write_text(yaml.safe_dump(kind_config(_node_image(echo))))
            create += ["--config", str(config)]
        _run(create, env)
    else:
        kubeconfig.write_text(_run([kind, "get", "kubeconfig", "--name", CLUSTER_NAME], env))
    kubectl_args = [kubectl(), "--kubeconfig", str(kubeconfig)]
    node_name = f"{CLUSTER_NAME}-control-plane"
    fake = fake_gpu_node(node_name)
    labels = {k: v for k, v in fake["metadata"]["labels"].items()
              if not k.startswith("kubernetes.io/") and k != "inferplane.io/fake-node"}
    _run([*kubectl_args, "label", "node", node_name, "--overwrite",
          *[f"{k}={v}" for k, v in labels.items()]], env)
    taint = fake["spec"]["taints"][0]
    _run([*kubectl_args, "taint", "node", node_name, "--overwrite",
          f"{taint['key']}={taint['value']}:{taint['effect']}"], env)
    gpus = {key: value for key, value in fake["status"]["capacity"].items() if "/" in key}
    _run([*kubectl_args, "patch", "node", node_name, "--subresource=status", "--type=merge", "-p",
          json.dumps({"status": {"capacity": gpus}})], env)
    if kind_provider == "podman":
        try:
            built = images.gateway_image(echo=echo, root=repo)
        except images.ImageBuildError as error:
            raise KindError(str(error)) from None
        image = built.reference
        _run([kind, "load", "image-archive", str(built.archive), "--name", CLUSTER_NAME], env)
    else:
        image = DEV_IMAGE
        _run(["docker", "build", "-t", image, str(repo)], env)
        _run([kind, "load", "docker-image", image, "--name", CLUSTER_NAME], env)
    echo(f"kind cluster {CLUSTER_NAME} up ({kind_provider}); image {image} loaded\n"
         f"export KUBECONFIG={kubeconfig}")
    cluster = KindCluster(kubeconfig, image, kind_provider)
    if deploy:
        deploy_simulator_stack(cluster, repo, echo)
    return cluster


def _node_image(echo: Callable[[str], None]) -> str:
    try:
        return kind_node.node_image(echo)
    except images.ImageBuildError as error:  # KindNodeError among them
        raise KindError(str(error)) from None


def deploy_simulator_stack(cluster: KindCluster, repo: Path,
                           echo: Callable[[str], None] = print) -> str:
    """Apply the `local` stack with the simulator, wait for it, and send one chat completion
    through the gateway with a real key. Returns the reply's text."""
    from kubernetes import config as kube_config

    from inferplane.cluster import simulator_stack
    from inferplane.dev import ensure_demo_key

    config = simulator_stack.simulator_config(cluster.image,
                                              repo / simulator_stack.LOCAL_STACK_FILE)
    keys_dir = cluster.kubeconfig.parent / "kind-keys"
    key, _ = ensure_demo_key(keys_dir)  # plaintext only in a 0600 file; the Secret holds hashes
    objects = simulator_stack.manifests(config, (keys_dir / "keys.json").read_text())
    api = kube_config.new_client_from_config(config_file=str(cluster.kubeconfig))
    try:
        simulator_stack.apply(api, objects)
        simulator_stack.wait_available(api, config)
    except simulator_stack.SmokeTestError as error:
        raise KindError(str(error)) from None
    finally:
        api.close()
    try:
        with simulator_stack.port_forward(cluster.kubeconfig, config,
                                          kubectl=kubectl()) as base_url:
            reply = simulator_stack.smoke_test(base_url, key, config.served_model_name)
    except simulator_stack.SmokeTestError as error:
        raise KindError(str(error)) from None
    echo(f"smoke test passed: {config.served_model_name} answered through the gateway "
         f"({reply.usage.completion_tokens} tokens); API key in {keys_dir / 'demo-key'}")
    return reply.choices[0].message.content


def down() -> None:
    """Delete the kind cluster (its containers and volumes)."""
    kind_provider = provider()
    _run([_binary(tools.KIND, "kind"), "delete", "cluster", "--name", CLUSTER_NAME],
         _environment(kind_provider))
