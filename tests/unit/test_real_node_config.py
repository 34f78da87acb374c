"""The real node's generated configs (containerd, CNI, kubelet, kube-proxy) and pause image.

Each asserts a setting the node cannot start without on a cgroup v1 VM without CAP_SYS_RESOURCE;
tests/cluster/test_real_node.py starts the node itself.
"""

from __future__ import annotations

import hashlib
import io
import ipaddress
import json
import tarfile
import tomllib
from pathlib import Path

import pytest

from inferplane.cluster import node


@pytest.fixture
def cni_dir(tmp_path, monkeypatch):
    plugins = tmp_path / "cni"
    plugins.mkdir()
    for plugin in node.CNI_PLUGINS:
        (plugins / plugin).touch()
    monkeypatch.setattr(node, "CNI_PLUGIN_DIRS", (str(tmp_path / "absent"), str(plugins)))
    return plugins


def test_containerd_config_restricts_oom_score_adj_and_pins_our_runc_and_pause(tmp_path, cni_dir):
    text = node.containerd_config(tmp_path / "root", tmp_path / "state", tmp_path / "c.sock",
                                  tmp_path / "net.d")
    config = tomllib.loads(text)
    runtime = config["plugins"]["io.containerd.cri.v1.runtime"]
    assert runtime["restrict_oom_score_adj"] is True
    runc = runtime["containerd"]["runtimes"]["runc"]
    assert runc["options"]["BinaryName"].endswith("/runc-v1.3.7/bin/runc")
    assert runc["options"]["SystemdCgroup"] is False
    assert runtime["cni"]["bin_dirs"] == [str(cni_dir)]
    images = config["plugins"]["io.containerd.cri.v1.images"]
    assert images["pinned_images"]["sandbox"] == node.PAUSE_IMAGE
    assert config["grpc"]["address"] == str(tmp_path / "c.sock")


def test_missing_cni_plugins_name_the_debian_package(tmp_path, monkeypatch):
    monkeypatch.setattr(node, "CNI_PLUGIN_DIRS", (str(tmp_path),))
    with pytest.raises(node.NodeError, match="containernetworking-plugins"):
        node.cni_plugin_dir()


def test_cni_network_gateway_is_the_node_ip_inside_the_pod_cidr(tmp_path):
    config = node.cni_config(tmp_path / "ipam")
    bridge = config["plugins"][0]
    assert bridge["type"] == "bridge" and bridge["bridge"] == node.BRIDGE and bridge["isGateway"]
    (subnet,) = bridge["ipam"]["ranges"][0]
    assert subnet["gateway"] == node.NODE_IP
    assert ipaddress.ip_address(node.NODE_IP) in ipaddress.ip_network(subnet["subnet"])
    assert not ipaddress.ip_address(node.NODE_IP).is_loopback
    assert bridge["ipam"]["dataDir"] == str(tmp_path / "ipam")


def test_kubelet_config_for_cgroup_v1_without_systemd(tmp_path):
    config = node.kubelet_config(tmp_path / "c.sock", tmp_path / "ca.crt", tmp_path / "k.crt",
                                 tmp_path / "k.key")
    assert config["failCgroupV1"] is False
    assert config["cgroupsPerQOS"] is False and config["enforceNodeAllocatable"] == []
    assert config["cgroupDriver"] == "cgroupfs"
    assert config["address"] == node.NODE_IP
    assert config["containerRuntimeEndpoint"] == f"unix://{tmp_path / 'c.sock'}"
    assert config["authentication"]["anonymous"]["enabled"] is False
    assert config["authorization"]["mode"] == "Webhook"
    assert config["readOnlyPort"] == 0


def test_pause_image_is_a_docker_archive_of_the_binary(tmp_path):
    binary = tmp_path / "pause-binary"
    binary.write_bytes(b"\x7fELF not really")
    archive = tarfile.open(fileobj=io.BytesIO(node.pause_image_archive(binary, "localhost/p:1")))
    (manifest,) = json.loads(archive.extractfile("manifest.json").read())
    assert manifest["RepoTags"] == ["localhost/p:1"]
    config = json.loads(archive.extractfile(manifest["Config"]).read())
    layer_bytes = archive.extractfile(manifest["Layers"][0]).read()
    assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(layer_bytes).hexdigest()]
    assert config["config"]["Entrypoint"] == ["/pause"]
    layer = tarfile.open(fileobj=io.BytesIO(layer_bytes))
    member = layer.getmember("pause")
    assert member.mode == 0o755 and layer.extractfile(member).read() == binary.read_bytes()


def test_mounts_under_lists_only_paths_below_the_roots_deepest_first(tmp_path):
    mounts = tmp_path / "mounts"
    mounts.write_text("tmpfs /a/b/c tmpfs rw 0 0\ntmpfs /a/b tmpfs rw 0 0\n"
                      "tmpfs /ab tmpfs rw 0 0\noverlay /x/y overlay rw 0 0\n")
    found = node.mounts_under(Path("/a"), Path("/x"), mounts_file=mounts)
    assert sorted(found) == ["/a/b", "/a/b/c", "/x/y"]
    assert found.index("/a/b/c") < found.index("/a/b")  # a parent is unmounted after its children


def test_local_persistent_volume_binds_by_class_on_the_real_node_only(tmp_path):
    """The cluster runs no provisioner: a claim of the class binds to this PV statically, and
    only a pod on the real node can use it (a `local` volume needs its node)."""
    pv = node.local_persistent_volume("ledger", tmp_path / "ledger", 10, "inferplane-local")
    spec = pv["spec"]
    assert spec["storageClassName"] == "inferplane-local"
    assert spec["capacity"] == {"storage": "10Gi"} and spec["accessModes"] == ["ReadWriteOnce"]
    assert spec["local"] == {"path": str(tmp_path / "ledger")}
    # Retain: a deleted claim never wipes the ledger's data directory.
    assert spec["persistentVolumeReclaimPolicy"] == "Retain"
    (term,) = spec["nodeAffinity"]["required"]["nodeSelectorTerms"]
    assert term["matchExpressions"] == [{"key": "kubernetes.io/hostname", "operator": "In",
                                         "values": [node.NODE_NAME]}]
    real = node.RealNode(tmp_path / "state", echo=lambda m: None)
    made = real.persistent_volume("cache", 5, "inferplane-local")
    assert Path(made["spec"]["local"]["path"]).is_dir()
    assert Path(made["spec"]["local"]["path"]).is_relative_to(tmp_path / "state")
