"""The kind cluster config and podman settings for our node image (cluster/kind.py, kind_node.py).

The cluster itself runs in tests/cluster/test_kind.py; these pin the parts a wrong edit would
break quietly: kubeadm must find etcd under the tag the node image preloads, the pod subnet must
hold the node's CNI range, and podman must run kind's node with runc.
"""

from __future__ import annotations

import ipaddress
import json
import tomllib

import yaml

from inferplane.cluster import kind, kind_node, tools, versions


def _patch(config: dict, kind_name: str) -> dict:
    patches = [yaml.safe_load(text) for text in config["kubeadmConfigPatches"]]
    matching = [patch for patch in patches if patch["kind"] == kind_name]
    assert len(matching) == 1, kind_name
    return matching[0]


def test_kubeadm_runs_the_etcd_the_node_image_preloads():
    config = kind.kind_config("localhost/inferplane-kind-node:test")
    tag = _patch(config, "ClusterConfiguration")["etcd"]["local"]["imageTag"]
    assert tag == kind_node.etcd_image_tag() == f"{versions.ETCD_VERSION.lstrip('v')}-0"


def test_the_node_image_has_no_coredns_or_kindnet_so_neither_is_installed():
    config = kind.kind_config("localhost/inferplane-kind-node:test")
    assert config["nodes"] == [{"role": "control-plane",
                                "image": "localhost/inferplane-kind-node:test"}]
    assert config["networking"]["disableDefaultCNI"] is True
    skipped = _patch(config, "InitConfiguration")["skipPhases"]
    assert "addon/coredns" in skipped and "preflight" in skipped


def test_kubelet_runs_on_cgroup_v1():
    config = kind.kind_config("localhost/inferplane-kind-node:test")
    assert _patch(config, "KubeletConfiguration")["failCgroupV1"] is False


def test_the_pod_subnet_holds_the_node_cni_range():
    config = kind.kind_config("localhost/inferplane-kind-node:test")
    conflist = json.loads((kind_node.RECIPE_DIR / "10-inferplane-bridge.conflist").read_text())
    bridge = next(plugin for plugin in conflist["plugins"] if plugin["type"] == "bridge")
    ranges = [entry["subnet"] for group in bridge["ipam"]["ranges"] for entry in group]
    pod_subnet = ipaddress.ip_network(config["networking"]["podSubnet"])
    assert ranges and all(ipaddress.ip_network(r).subnet_of(pod_subnet) for r in ranges)
    assert set(kind_node.CNI_PLUGINS) >= {plugin["type"] for plugin in conflist["plugins"]}


def test_podman_runs_kind_nodes_with_our_runc(tmp_path, monkeypatch):
    monkeypatch.setenv("INFERPLANE_CACHE", str(tmp_path))
    env = kind_node.podman_environment()
    assert env["KIND_EXPERIMENTAL_PROVIDER"] == "podman"
    settings = tomllib.loads((tmp_path / "images" / "containers-kind.conf").read_text())
    assert settings["engine"]["runtime"] == "runc"
    assert settings["engine"]["runtimes"]["runc"] == [str(tools.RUNC.path())]
    assert settings["containers"]["default_ulimits"] == []  # no rlimits above the hard limits


def test_the_node_key_changes_with_a_pinned_binary(monkeypatch):
    before = kind_node.node_key()
    monkeypatch.setattr(kind_node, "TOOLS", (*kind_node.TOOLS[:-1],
                                             tools.Tool("kubernetes-kind", "v0.0.0", ("kubeadm",),
                                                        lambda *a: None)))
    assert kind_node.node_key() != before
