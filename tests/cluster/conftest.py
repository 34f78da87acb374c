"""Fixtures for the cluster tests: one real local control plane per test session.

The binaries come from `inferplane cluster tools` (machine-wide cache). Without them the tests skip
with that instruction, unless INFERPLANE_REQUIRE_CLUSTER_TOOLS=1 (set by CI), where a missing tool is
a failure: a green run must not hide a cluster suite that never ran.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from inferplane.cluster import tools

REPO_ROOT = Path(__file__).resolve().parents[2]


def require_tools(selected: tuple[tools.Tool, ...], what: str) -> None:
    """Skip (or fail under CI) when the pinned tools are not built."""
    missing = tools.missing(selected)
    if not missing:
        return
    names = ", ".join(f"{t.name} {t.version}" for t in missing)
    message = f"{what} needs {names}: run `inferplane cluster tools` first"
    if os.environ.get("INFERPLANE_REQUIRE_CLUSTER_TOOLS") == "1":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def local_cluster(tmp_path_factory: pytest.TempPathFactory):
    """A running local cluster with two fake 8 x H100 nodes; stopped after the session."""
    require_tools(tools.CLUSTER_TOOLS, "the local cluster")
    from inferplane.cluster.local import LocalCluster

    cluster = LocalCluster(tmp_path_factory.mktemp("cluster") / "state", echo=lambda m: None)
    info = cluster.up(nodes=2)
    try:
        yield info
    finally:
        cluster.down(quiet=True)


@pytest.fixture(scope="session")
def kube_client(local_cluster):
    """The official Kubernetes Python client, logged in as the cluster admin."""
    from kubernetes import config as kube_config

    client = kube_config.new_client_from_config(config_file=str(local_cluster.kubeconfig))
    yield client
    client.close()


def require(condition: bool, message: str) -> None:
    """Skip with `message` unless it holds; under CI a missing prerequisite fails instead."""
    if condition:
        return
    if os.environ.get("INFERPLANE_REQUIRE_CLUSTER_TOOLS") == "1":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def real_node_cluster(tmp_path_factory: pytest.TempPathFactory):
    """A control plane plus one real node (containerd, runc, kubelet, kube-proxy), no kwok nodes,
    so every pod runs for real; stopped (pods, mounts, bridge, iptables) after the session."""
    # No fake nodes, so no kwok: the control plane and the node tools.
    require_tools((tools.ETCD, tools.KUBERNETES, *tools.NODE_TOOLS), "the real node")
    from inferplane.cluster.node import NodeError, check_prerequisites

    try:
        check_prerequisites()
        problem = ""
    except NodeError as error:
        problem = str(error)
    require(not problem, problem)
    from inferplane.cluster.local import LocalCluster

    cluster = LocalCluster(tmp_path_factory.mktemp("node") / "state", echo=lambda m: None)
    info = cluster.up(nodes=0, real_node=True, timeout_seconds=240)
    try:
        yield info
    finally:
        cluster.down(quiet=True)


@pytest.fixture(scope="session")
def gateway_image():
    """The gateway image, built from the Dockerfile on the Debian base (cached by a key)."""
    import shutil

    from inferplane.cluster import images

    for command in ("podman", "mmdebstrap"):
        require(shutil.which(command) is not None,
                f"building the image needs `{command}`: run scripts/install-system-deps")
    return images.gateway_image(echo=lambda m: None)


@pytest.fixture(scope="session")
def node_gateway_image(real_node_cluster, gateway_image):
    """The gateway image's reference, imported into the real node's containerd."""
    from inferplane.cluster.node import RealNode

    RealNode(real_node_cluster.state_dir, echo=lambda m: None).import_image(gateway_image.archive)
    return gateway_image.reference


@pytest.fixture(scope="session")
def kube_client_real(real_node_cluster):
    """The Kubernetes client, as admin, of the real-node cluster."""
    from kubernetes import config as kube_config

    client = kube_config.new_client_from_config(config_file=str(real_node_cluster.kubeconfig))
    yield client
    client.close()


@pytest.fixture(scope="session")
def node_postgres_image(real_node_cluster):
    """The central ledger's PostgreSQL image (Debian's postgresql-17, built here: no registry),
    imported into the real node's containerd; its reference."""
    import shutil

    from inferplane.cluster import images
    from inferplane.cluster.node import RealNode

    for command in ("podman", "mmdebstrap"):
        require(shutil.which(command) is not None,
                f"building the PostgreSQL image needs `{command}`: run scripts/install-system-deps")
    built = images.postgres_image(echo=lambda m: None)
    RealNode(real_node_cluster.state_dir, echo=lambda m: None).import_image(built.archive)
    return built.reference
