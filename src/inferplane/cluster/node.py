"""A real node for the local cluster: containerd + runc run the pods, kubelet and kube-proxy join.

kwok's nodes are fakes (the 8 x H100 GPU nodes the scheduler sees); this one runs CPU pods for
real, so the image, probes, Secret and ConfigMap mounts, the read-only root filesystem and the
non-root user are exercised. Networking is the project's own CNI bridge (Debian's bridge +
host-local + portmap plugins); the node's IP is the host side of that bridge, so the API server
reaches the kubelet (logs, exec, port-forward) and the host reaches pods and ClusterIPs.

It needs root (network namespaces, iptables, mounts): `cluster up` says so when it is missing.
Everything it creates outside the state directory is named here (the bridge, the containerd state
under /run/inferplane, kube-proxy's iptables chains) and removed by `stop`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import time
from pathlib import Path
from typing import Any, Callable

import yaml

from inferplane.cluster import tools

NODE_NAME = "inferplane-node-0"
REAL_NODE_LABEL = "inferplane.io/real-node"
BRIDGE = "inferplane0"
# Not kwok's 10.244.0.0/16, not podman's 10.88.0.0/16.
POD_CIDR = "10.245.0.0/24"
NODE_IP = "10.245.0.1"
CNI_NETWORK = "inferplane"
CNI_PLUGIN_DIRS = ("/usr/lib/cni", "/opt/cni/bin")
CNI_PLUGINS = ("bridge", "host-local", "portmap", "loopback")
PAUSE_IMAGE = f"localhost/inferplane/pause:{tools.versions.KUBERNETES_VERSION}"
KUBELET_PORT = 10250
COMPONENTS = ("containerd", "kubelet", "kube-proxy")
# The system packages the node uses that `go build` does not make.
SYSTEM_PACKAGES = {"iptables": "iptables", "ip": "iproute2"}


class NodeError(RuntimeError):
    """The real node cannot start here; the message says what is missing and how to get it."""


def cni_plugin_dir() -> Path:
    """The first directory holding every CNI plugin the node's network uses."""
    for directory in CNI_PLUGIN_DIRS:
        if all((Path(directory) / plugin).exists() for plugin in CNI_PLUGINS):
            return Path(directory)
    raise NodeError(f"CNI plugins {', '.join(CNI_PLUGINS)} not found in {', '.join(CNI_PLUGIN_DIRS)}: "
                    "run `apt-get install containernetworking-plugins` "
                    "(scripts/install-system-deps installs it)")


def check_prerequisites() -> None:
    """Root, the built node tools, the CNI plugins and iptables: fail with the fix, before starting."""
    if os.geteuid() != 0:
        raise NodeError("a real node needs root (network namespaces, iptables, mounts); run as root "
                        "or use `inferplane cluster up --no-real-node` (kwok nodes only)")
    missing = tools.missing(tools.NODE_TOOLS)
    if missing:
        names = ", ".join(f"{t.name} {t.version}" for t in missing)
        raise NodeError(f"not built yet: {names}; run `inferplane cluster tools --only node`")
    for command, package in SYSTEM_PACKAGES.items():
        if not shutil.which(command):
            raise NodeError(f"`{command}` is missing: run `apt-get install {package}`")
    cni_plugin_dir()


def pause_image_archive(pause_binary: Path, reference: str = PAUSE_IMAGE) -> bytes:
    """A docker-archive (what `ctr images import` reads) of one layer holding the static pause."""
    layer_buffer = io.BytesIO()
    with tarfile.open(fileobj=layer_buffer, mode="w") as layer:
        info = layer.gettarinfo(str(pause_binary), arcname="pause")
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = 0
        info.mode = 0o755
        with pause_binary.open("rb") as handle:
            layer.addfile(info, handle)
    layer_bytes = layer_buffer.getvalue()
    diff_id = "sha256:" + hashlib.sha256(layer_bytes).hexdigest()
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": ["/pause"], "User": "65535:65535"},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = json.dumps([{"Config": config_name, "RepoTags": [reference],
                            "Layers": ["layer/layer.tar"]}]).encode()
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        for name, data in ((config_name, config), ("layer/layer.tar", layer_bytes),
                           ("manifest.json", manifest)):
            entry = tarfile.TarInfo(name)
            entry.size = len(data)
            tar.addfile(entry, io.BytesIO(data))
    return archive.getvalue()


def containerd_config(root: Path, state: Path, socket: Path, cni_conf_dir: Path) -> str:
    """containerd 2.x (config version 3) with only what the CRI plugin needs here."""
    runc = tools.RUNC.path("runc")
    return f"""\
version = 3
root = "{root}"
state = "{state}"

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[metrics]
  address = ""

[plugins.'io.containerd.cri.v1.runtime']
  # A negative oom_score_adj needs CAP_SYS_RESOURCE, which VMs like this one withhold: without
  # this every sandbox fails with runc's "can't get final child's PID from pipe: EOF".
  restrict_oom_score_adj = true
  disable_apparmor = true

  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"

    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = "{runc}"
        SystemdCgroup = false

  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["{cni_plugin_dir()}"]
    conf_dir = "{cni_conf_dir}"

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"

  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "{PAUSE_IMAGE}"
"""


def cni_config(ipam_dir: Path) -> dict[str, Any]:
    """Our bridge network: pods get 10.245.0.x, the host side of the bridge is the node IP."""
    return {
        "cniVersion": "1.0.0",
        "name": CNI_NETWORK,
        "plugins": [
            {"type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": True,
             "hairpinMode": True,
             "ipam": {"type": "host-local", "dataDir": str(ipam_dir),
                      "ranges": [[{"subnet": POD_CIDR, "gateway": NODE_IP}]],
                      "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def kubelet_config(socket: Path, ca: Path, serving_cert: Path, serving_key: Path,
                   resolv_conf: str = "/etc/resolv.conf") -> dict[str, Any]:
    """A kubelet for a cgroup v1 VM with no systemd, serving on the node IP only."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": NODE_IP,
        "port": KUBELET_PORT,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": 0,
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                           "x509": {"clientCAFile": str(ca)}},
        "authorization": {"mode": "Webhook"},
        "tlsCertFile": str(serving_cert),
        "tlsPrivateKeyFile": str(serving_key),
        "containerRuntimeEndpoint": f"unix://{socket}",
        "cgroupDriver": "cgroupfs",
        # Kubernetes >= 1.35 refuses cgroup v1 unless told; per-QoS cgroups need more control
        # over the cgroup tree than this VM gives, and without them nothing is enforced per QoS.
        "failCgroupV1": False,
        "cgroupsPerQOS": False,
        "enforceNodeAllocatable": [],
        "failSwapOn": False,
        "podCIDR": POD_CIDR,
        "resolvConf": resolv_conf,
        "clusterDomain": "cluster.local",
        "serializeImagePulls": False,
        # Images come from `ctr images import`, never a registry: never collect them.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "2%",
                         "imagefs.available": "2%"},
        "rotateCertificates": False,
        "serverTLSBootstrap": False,
        "syncFrequency": "5s",
        "shutdownGracePeriod": "0s",
    }


def kube_proxy_config(kubeconfig: Path, healthz_port: int, metrics_port: int) -> dict[str, Any]:
    """iptables mode; conntrack sysctls left as the host has them."""
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "hostnameOverride": NODE_NAME,
        "mode": "iptables",
        "clusterCIDR": POD_CIDR,
        "healthzBindAddress": f"127.0.0.1:{healthz_port}",
        "metricsBindAddress": f"127.0.0.1:{metrics_port}",
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s",
                      "tcpCloseWaitTimeout": "0s"},
    }


def _sh(args: list[str], check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(args, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise NodeError(f"`{' '.join(args)}` exited {result.returncode}: "
                        f"{(result.stdout + result.stderr).strip()}")
    return result


def _write_sysctl(name: str, value: str) -> None:
    path = Path("/proc/sys") / name.replace(".", "/")
    try:
        if path.read_text().strip() != value:
            path.write_text(value)
    except OSError as error:
        raise NodeError(f"cannot set {name}={value} ({error}); pods need it for Services") from None


def setup_host_network() -> None:
    """The bridge with the node IP on it, IP forwarding, and bridged traffic through iptables."""
    if not Path("/proc/sys/net/bridge").exists():
        _sh(["modprobe", "br_netfilter"], check=False)
    if not Path("/proc/sys/net/bridge").exists():
        raise NodeError("the br_netfilter kernel module is not loaded (`modprobe br_netfilter`): "
                        "pods reach Services through it")
    _write_sysctl("net.ipv4.ip_forward", "1")
    _write_sysctl("net.bridge.bridge-nf-call-iptables", "1")
    if _sh(["ip", "link", "show", BRIDGE], check=False).returncode != 0:
        _sh(["ip", "link", "add", BRIDGE, "type", "bridge"])
    addresses = _sh(["ip", "-o", "-4", "addr", "show", "dev", BRIDGE]).stdout
    if f"{NODE_IP}/" not in addresses:
        _sh(["ip", "addr", "add", f"{NODE_IP}/{POD_CIDR.split('/')[1]}", "dev", BRIDGE])
    _sh(["ip", "link", "set", BRIDGE, "up"])


# Chains the kubelet itself adds (kube-proxy --cleanup removes kube-proxy's): its localnet firewall
# and the canaries it watches for iptables flushes.
KUBELET_CHAINS = (("filter", "KUBE-FIREWALL"), ("filter", "KUBE-KUBELET-CANARY"),
                  ("nat", "KUBE-KUBELET-CANARY"), ("mangle", "KUBE-KUBELET-CANARY"),
                  ("mangle", "KUBE-IPTABLES-HINT"))


def remove_kubelet_chains() -> None:
    for table, chain in KUBELET_CHAINS:
        for parent in ("INPUT", "OUTPUT"):
            while _sh(["iptables", "-t", table, "-D", parent, "-j", chain], check=False).returncode == 0:
                pass
        _sh(["iptables", "-t", table, "-F", chain], check=False)
        _sh(["iptables", "-t", table, "-X", chain], check=False)


def teardown_host_network() -> None:
    _sh(["ip", "link", "delete", BRIDGE], check=False)


def mounts_under(*roots: Path, mounts_file: Path = Path("/proc/self/mounts")) -> list[str]:
    """Mount points below any of `roots`, deepest first (kubelet's volumes, containerd's rootfs)."""
    found = []
    for line in mounts_file.read_text().splitlines():
        target = line.split()[1].replace("\\040", " ")
        if any(target == str(r) or target.startswith(f"{r}/") for r in roots):
            found.append(target)
    return sorted(set(found), key=lambda t: t.count("/"), reverse=True)


def unmount_under(*roots: Path) -> None:
    for target in mounts_under(*roots):
        _sh(["umount", "-l", target], check=False)


def processes_using(needle: str) -> list[int]:
    """Pids whose command line contains `needle` (our containerd socket path: its shims)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if needle in cmdline:
            pids.append(int(entry.name))
    return pids


def local_persistent_volume(name: str, path: Path, size_gib: int,
                            storage_class: str) -> dict[str, Any]:
    """A `local` PersistentVolume on the real node (the cluster runs no provisioner): a claim of
    `storage_class` binds to it statically; kubelet applies the pod's fsGroup to it."""
    return {
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": name, "labels": {REAL_NODE_LABEL: "true"}},
        "spec": {
            "capacity": {"storage": f"{size_gib}Gi"},
            "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": storage_class,
            "volumeMode": "Filesystem",
            "local": {"path": str(path)},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [{
                "key": "kubernetes.io/hostname", "operator": "In", "values": [NODE_NAME]}]}]}},
        },
    }


class RealNode:
    """The node's files and processes, under the cluster's state directory."""

    def __init__(self, state_dir: Path, echo: Callable[[str], None]):
        self.state_dir = state_dir
        self.dir = state_dir / "node"
        self.echo = echo
        # Unix socket paths are limited to 108 bytes, and shims put theirs under containerd's
        # state: keep that short, keyed by the state directory so two clusters never share it.
        key = hashlib.sha256(str(state_dir).encode()).hexdigest()[:10]
        self.run_dir = Path("/run/inferplane") / key

    @property
    def socket(self) -> Path:
        return self.run_dir / "containerd.sock"

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return _sh([str(tools.CONTAINERD.path("ctr")), "--address", str(self.socket),
                    "--namespace", "k8s.io", *args], check=check)

    def import_image(self, archive: Path | bytes) -> None:
        """Load a docker-archive into the node's containerd (the CRI namespace), unpacked."""
        if isinstance(archive, bytes):
            path = self.dir / "import.tar"
            path.write_bytes(archive)
        else:
            path = archive
        self.ctr("images", "import", "--no-unpack=false", "--snapshotter", "overlayfs", str(path))

    def persistent_volume(self, name: str, size_gib: int, storage_class: str) -> dict[str, Any]:
        """A directory under the node's state (removed with it) and its `local` PV manifest."""
        path = self.dir / "volumes" / name
        path.mkdir(parents=True, exist_ok=True)
        return local_persistent_volume(name, path, size_gib, storage_class)

    def prepare(self, pki: Any, server: str, ca_pem: bytes,
                kubeconfig_document: Callable[..., dict[str, Any]]) -> dict[str, list[str]]:
        """Write every config, set up the host network; return each component's command line."""
        check_prerequisites()
        for sub in ("containerd", "kubelet", "cni/net.d", "cni/ipam", "pki"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        setup_host_network()

        (self.dir / "containerd.toml").write_text(containerd_config(
            self.dir / "containerd", self.run_dir / "state", self.socket, self.dir / "cni/net.d"))
        (self.dir / "cni/net.d" / "10-inferplane.conflist").write_text(
            json.dumps(cni_config(self.dir / "cni/ipam"), indent=2))

        client = pki.issue("kubelet", f"system:node:{NODE_NAME}", "system:nodes", client=True)
        serving = pki.issue("kubelet-serving", NODE_NAME, server=True, ips=(NODE_IP,),
                            names=(NODE_NAME,))
        proxy = pki.issue("kube-proxy", "system:kube-proxy", client=True)

        def kubeconfig(name: str, cert: Any) -> Path:
            path = self.dir / f"{name}.kubeconfig"
            path.write_text(yaml.safe_dump(kubeconfig_document(
                server, ca_pem, cert.cert.read_bytes(), cert.key.read_bytes(), user=name)))
            path.chmod(0o600)
            return path

        (self.dir / "kubelet.yaml").write_text(yaml.safe_dump(kubelet_config(
            self.socket, pki.ca.cert, serving.cert, serving.key)))
        from inferplane.cluster.local import free_port

        (self.dir / "kube-proxy.yaml").write_text(yaml.safe_dump(kube_proxy_config(
            kubeconfig("kube-proxy", proxy), free_port(), free_port())))
        kubelet_kubeconfig = kubeconfig("kubelet", client)
        node_bin = tools.KUBERNETES_NODE
        labels = f"{REAL_NODE_LABEL}=true"
        return {
            "containerd": [str(tools.CONTAINERD.path("containerd")),
                           f"--config={self.dir / 'containerd.toml'}", "--log-level=warn"],
            "kubelet": [str(node_bin.path("kubelet")), f"--config={self.dir / 'kubelet.yaml'}",
                        f"--kubeconfig={kubelet_kubeconfig}", f"--hostname-override={NODE_NAME}",
                        f"--node-ip={NODE_IP}", f"--root-dir={self.dir / 'kubelet'}",
                        f"--cert-dir={self.dir / 'pki'}", f"--node-labels={labels}", "--v=1"],
            "kube-proxy": [str(node_bin.path("kube-proxy")),
                           f"--config={self.dir / 'kube-proxy.yaml'}", "--v=1"],
        }

    def environment(self) -> dict[str, str]:
        """containerd finds its shim on PATH."""
        return {**os.environ, "PATH": os.pathsep.join([str(tools.CONTAINERD.bin_dir),
                                                       os.environ.get("PATH", "")])}

    def wait_containerd(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if self.socket.exists() and self.ctr("version", check=False).returncode == 0:
                return
            time.sleep(0.25)
        raise NodeError(f"containerd did not answer on {self.socket}")

    def load_pause(self) -> None:
        self.import_image(pause_image_archive(tools.KUBERNETES_NODE.path("pause")))

    def kill_containers(self) -> None:
        """Stop what kubelet left running (called after kubelet is stopped, before containerd)."""
        if not self.socket.exists():
            return
        tasks = self.ctr("tasks", "ls", "-q", check=False).stdout.split()
        for task in tasks:
            self.ctr("tasks", "kill", "--all", "--signal", "SIGKILL", task, check=False)
        for task in tasks:
            for _ in range(20):
                if self.ctr("tasks", "rm", "--force", task, check=False).returncode == 0:
                    break
                time.sleep(0.1)
        containers = self.ctr("containers", "ls", "-q", check=False).stdout.split()
        if containers:
            self.ctr("containers", "rm", *containers, check=False)

    def cleanup(self) -> None:
        """After every process is stopped: shims, mounts, kube-proxy's rules, the bridge, netns."""
        for pid in processes_using(str(self.socket)):
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        proxy = tools.KUBERNETES_NODE.path("kube-proxy")
        if proxy.exists():
            _sh([str(proxy), "--cleanup"], check=False)
        remove_kubelet_chains()
        unmount_under(self.dir, self.run_dir)
        teardown_host_network()
        shutil.rmtree(self.run_dir, ignore_errors=True)
