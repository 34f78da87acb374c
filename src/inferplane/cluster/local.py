"""A real Kubernetes control plane on loopback, from upstream binaries, with fake 8-GPU nodes
and, with `real_node=True`, one real node that runs CPU pods (node.py).

etcd, kube-apiserver, kube-controller-manager and kube-scheduler are the real thing (built by
`tools.py`); kwok stands in for the GPU nodes' kubelets, so those nodes stay Ready and pods
scheduled there become Running without containers. The real node (containerd, runc, kubelet,
kube-proxy) runs everything else for real. Everything listens on 127.0.0.1 on free ports; every process is started in its
own session with its pid recorded in the state directory, so `down` stops exactly those processes.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import httpx
import yaml

from inferplane.catalog.accelerators import ACCELERATORS
from inferplane.catalog.regions import is_eu_region
from inferplane.cluster import tools
from inferplane.render import ACCELERATOR_LABEL, GPU_RESOURCE

DEFAULT_STATE_DIR = Path(".inferplane") / "cluster"
STATE_FILE = "cluster.json"
# kwok manages only nodes with this label, so it never touches a node someone else made.
FAKE_NODE_LABEL = "inferplane.io/fake-node"
GPU_TAINT = {"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"}
DEFAULT_REGION = "europe-west4"
DEFAULT_ZONE = "europe-west4-a"
DEFAULT_ACCELERATOR = "H100-80G"
# An 8 x H100 node as GKE sells it (a3-highgpu-8g): 208 vCPU, 1872 GiB; what the scheduler sees.
FAKE_NODE_CPU = "208"
FAKE_NODE_MEMORY = "1872Gi"
FAKE_NODE_EPHEMERAL_STORAGE = "6Ti"
FAKE_NODE_MAX_PODS = "110"
SERVICE_CLUSTER_IP_RANGE = "10.96.0.0/16"
POD_CIDR = "10.244.0.0/16"
START_TIMEOUT_SECONDS = 120.0
STOP_TIMEOUT_SECONDS = 15.0
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
NODE_COMPONENTS = ("containerd", "kubelet", "kube-proxy")
# How long `down` lets the real node's kubelet tear pods down (sandboxes, CNI) before killing.
NODE_DRAIN_SECONDS = 30.0


class ClusterError(RuntimeError):
    """The local cluster could not be brought up or inspected; the message says what to do."""


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fake_gpu_node(name: str, accelerator: str = DEFAULT_ACCELERATOR, region: str = DEFAULT_REGION,
                  zone: str = DEFAULT_ZONE) -> dict[str, Any]:
    """A Node as a GPU cloud registers it: GPU capacity, GPU taint, accelerator and topology labels."""
    spec = ACCELERATORS[accelerator]
    machine = spec.machine_types.get("gke")
    gpus = str(spec.gpus_per_node)
    resources = {"cpu": FAKE_NODE_CPU, "memory": FAKE_NODE_MEMORY, GPU_RESOURCE: gpus,
                 "ephemeral-storage": FAKE_NODE_EPHEMERAL_STORAGE, "pods": FAKE_NODE_MAX_PODS}
    labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "topology.kubernetes.io/region": region,
        "topology.kubernetes.io/zone": zone,
        ACCELERATOR_LABEL: accelerator,
        "nvidia.com/gpu.present": "true",
        "nvidia.com/gpu.product": spec.product_label,
        "nvidia.com/gpu.count": gpus,
        FAKE_NODE_LABEL: "true",
    }
    if machine:
        labels["node.kubernetes.io/instance-type"] = machine.name
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels,
                     "annotations": {"kwok.x-k8s.io/node": "fake"}},
        "spec": {"taints": [dict(GPU_TAINT)]},
        "status": {"capacity": dict(resources), "allocatable": dict(resources)},
    }


def kubeconfig_document(server: str, ca_pem: bytes, cert_pem: bytes, key_pem: bytes,
                        name: str = "inferplane-local", user: str = "admin") -> dict[str, Any]:
    """A kubeconfig with everything embedded, so it works from any directory."""
    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": {"server": server,
                                                "certificate-authority-data": b64(ca_pem)}}],
        "users": [{"name": user, "user": {"client-certificate-data": b64(cert_pem),
                                          "client-key-data": b64(key_pem)}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": user}}],
        "current-context": name,
    }


@dataclass
class ClusterInfo:
    """What `up` started: the API server URL, the kubeconfig, the nodes, and each process."""

    state_dir: Path
    server: str
    kubeconfig: Path
    nodes: list[str]
    processes: dict[str, dict[str, Any]] = field(default_factory=dict)
    started_seconds: float = 0.0
    # Nodes that run containers (containerd + kubelet); the others in `nodes` are kwok fakes.
    real_nodes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"state_dir": str(self.state_dir), "server": self.server,
                "kubeconfig": str(self.kubeconfig), "nodes": self.nodes,
                "real_nodes": self.real_nodes,
                "processes": self.processes, "started_seconds": self.started_seconds}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ClusterInfo":
        return cls(Path(data["state_dir"]), data["server"], Path(data["kubeconfig"]), data["nodes"],
                   data.get("processes", {}), data.get("started_seconds", 0.0),
                   data.get("real_nodes", []))


# How long an empty command line is taken as "still in exec" rather than "not ours".
EXEC_SETTLE_SECONDS = 1.0


def _process_alive(pid: int, binary: str) -> bool:
    """True while `pid` runs `binary` (guards against a recycled pid after a reboot or crash).

    Popen returns as soon as the child's exec closes its close-on-exec pipe, a moment before the
    kernel sets up the new program's argv: until then /proc/<pid>/cmdline reads empty (measured
    here: 1 in 10 `sleep` and 1 in 40 kube-proxy spawns). So an empty command line is read again
    rather than taken for a dead process; kernel threads, whose command line stays empty, are
    not ours either way."""
    deadline = time.monotonic() + EXEC_SETTLE_SECONDS
    while True:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
        except OSError:
            return False
        state = stat.rsplit(")", 1)[1].split()[0]
        if state in ("Z", "X"):
            _reap(pid)
            return False
        if cmdline or time.monotonic() > deadline:
            return cmdline == binary
        time.sleep(0.005)


def _reap(pid: int) -> None:
    """Collect our own exited children, so they do not linger as zombies in a long test session."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


class LocalCluster:
    """One local cluster, identified by its state directory."""

    def __init__(self, state_dir: str | Path = DEFAULT_STATE_DIR,
                 echo: Callable[[str], None] | None = None):
        self.state_dir = Path(state_dir).resolve()
        self.echo = echo or (lambda message: print(message, flush=True))

    # -- paths --
    @property
    def state_file(self) -> Path:
        return self.state_dir / STATE_FILE

    def _log(self, name: str) -> Path:
        return self.state_dir / "logs" / f"{name}.log"

    def _pid_file(self, name: str) -> Path:
        return self.state_dir / "pids" / f"{name}.pid"

    def info(self) -> ClusterInfo | None:
        """The recorded cluster, or None when nothing was started here."""
        try:
            return ClusterInfo.from_json(json.loads(self.state_file.read_text()))
        except (OSError, ValueError, KeyError):
            return None

    # -- up --
    def up(self, nodes: int = 2, kubeconfig: str | Path | None = None,
           region: str = DEFAULT_REGION, zone: str = DEFAULT_ZONE,
           accelerator: str = DEFAULT_ACCELERATOR,
           timeout_seconds: float = START_TIMEOUT_SECONDS, real_node: bool = False) -> ClusterInfo:
        """Start the control plane and kwok, create `nodes` fake GPU nodes, write the kubeconfig;
        with `real_node`, also start a node that runs CPU pods (needs root and the node tools)."""
        if not is_eu_region("existing", region):
            raise ClusterError(f"--region {region!r} is not an EU/EEA region we know; use e.g. "
                               f"{DEFAULT_REGION}")
        if not zone.startswith(region):
            raise ClusterError(f"--zone {zone!r} is not in region {region!r}; use e.g. {region}-a")
        if accelerator not in ACCELERATORS:
            raise ClusterError(f"unknown accelerator {accelerator!r}; use one of "
                               f"{', '.join(sorted(ACCELERATORS))}")
        if nodes < (0 if real_node else 1):
            raise ClusterError("--nodes must be at least 1 (0 only with a real node)")
        existing = self.info()
        if existing and self.running(existing):
            self.echo(f"already running: {existing.server} (kubeconfig {existing.kubeconfig})")
            return existing
        if existing or self.state_dir.exists():
            self.down(quiet=True)
        if real_node:
            from inferplane.cluster.node import NodeError, check_prerequisites

            try:
                check_prerequisites()
            except NodeError as error:
                raise ClusterError(str(error)) from None
        needed = [t for t in tools.CLUSTER_TOOLS if nodes > 0 or t is not tools.KWOK]
        missing = tools.missing(needed)
        if missing:
            names = ", ".join(f"{t.name} {t.version}" for t in missing)
            raise ClusterError(f"not built yet: {names}; run `inferplane cluster tools` first "
                               "(cold build: tens of minutes on 2 cores; cached after that)")
        started = time.monotonic()
        for sub in ("pki", "logs", "pids", "etcd"):
            (self.state_dir / sub).mkdir(parents=True, exist_ok=True)
        self.state_dir.chmod(0o700)
        kubeconfig_path = Path(kubeconfig).resolve() if kubeconfig else self.state_dir / "kubeconfig"
        try:
            info = self._start(nodes, kubeconfig_path, region, zone, accelerator,
                               started + timeout_seconds, real_node)
        except BaseException:
            self.down(quiet=True, keep_logs=True)
            raise
        info.started_seconds = round(time.monotonic() - started, 1)
        self.state_file.write_text(json.dumps(info.to_json(), indent=2))
        return info

    def _start(self, nodes: int, kubeconfig_path: Path, region: str, zone: str, accelerator: str,
               deadline: float, real_node: bool = False) -> ClusterInfo:
        from inferplane.cluster.pki import ClusterPki

        pki = ClusterPki(self.state_dir / "pki")
        serving = pki.issue("serving", "inferplane-local-control-plane", server=True)
        admin = pki.issue("admin", "inferplane-admin", "system:masters", client=True)
        controller_manager = pki.issue("kube-controller-manager", "system:kube-controller-manager",
                                       client=True)
        scheduler = pki.issue("kube-scheduler", "system:kube-scheduler", client=True)
        kwok_cert = pki.issue("kwok", "kwok-controller", "system:masters", client=True)
        # The API server's identity towards kubelets (logs, exec, port-forward).
        kubelet_client = pki.issue("apiserver-kubelet-client", "kube-apiserver-kubelet-client",
                                   "system:masters", client=True)
        service_account = pki.service_account_keys()

        ports = {name: free_port() for name in
                 ("etcd", "etcd-peer", "kube-apiserver", "kube-controller-manager",
                  "kube-scheduler", "kwok")}
        server = f"https://127.0.0.1:{ports['kube-apiserver']}"
        ca_pem = pki.ca.cert.read_bytes()

        def component_kubeconfig(name: str, cert: "Any") -> Path:
            path = self.state_dir / f"{name}.kubeconfig"
            doc = kubeconfig_document(server, ca_pem, cert.cert.read_bytes(), cert.key.read_bytes(),
                                      user=name)
            path.write_text(yaml.safe_dump(doc, sort_keys=False))
            path.chmod(0o600)
            return path

        info = ClusterInfo(self.state_dir, server, kubeconfig_path, [])
        binaries = {name: str(tool.path(name)) for tool in tools.CLUSTER_TOOLS
                    for name in tool.binaries}
        fake_nodes = nodes > 0  # kwok runs only for fake GPU nodes

        etcd_url = f"http://127.0.0.1:{ports['etcd']}"
        peer_url = f"http://127.0.0.1:{ports['etcd-peer']}"
        self._spawn(info, "etcd", [
            binaries["etcd"], "--name=inferplane", f"--data-dir={self.state_dir / 'etcd'}",
            f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=inferplane={peer_url}", "--listen-metrics-urls=",
            # a throwaway test store: durability is not worth the fsync latency
            "--unsafe-no-fsync", "--log-level=warn",
        ])
        self._wait(info, "etcd", f"{etcd_url}/health", deadline, verify=False)

        self._spawn(info, "kube-apiserver", [
            binaries["kube-apiserver"], f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1", f"--secure-port={ports['kube-apiserver']}",
            "--advertise-address=127.0.0.1",
            # a loopback address is not a valid endpoint for the `kubernetes` Service
            "--endpoint-reconciler-type=none",
            f"--tls-cert-file={serving.cert}", f"--tls-private-key-file={serving.key}",
            f"--client-ca-file={pki.ca.cert}",
            f"--service-account-key-file={service_account.cert}",
            f"--service-account-signing-key-file={service_account.key}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            "--authorization-mode=Node,RBAC", "--allow-privileged=true",
            f"--kubelet-client-certificate={kubelet_client.cert}",
            f"--kubelet-client-key={kubelet_client.key}",
            f"--kubelet-certificate-authority={pki.ca.cert}",
            # the real node's kubelet listens on its bridge IP, not on a hostname
            "--kubelet-preferred-address-types=InternalIP",
            "--enable-priority-and-fairness=false", "--profiling=false", "--v=1",
        ])
        client = self._admin_client(server, pki.ca.cert, admin)
        self._wait(info, "kube-apiserver", f"{server}/readyz", deadline, client=client)

        def secured(component: str, kubeconfig: Path) -> list[str]:
            """The flags kube-controller-manager and kube-scheduler share: their kubeconfig for
            everything, and a loopback-only TLS endpoint checking client certificates."""
            return [binaries[component], f"--kubeconfig={kubeconfig}",
                    f"--authentication-kubeconfig={kubeconfig}",
                    f"--authorization-kubeconfig={kubeconfig}",
                    "--bind-address=127.0.0.1", f"--secure-port={ports[component]}",
                    f"--tls-cert-file={serving.cert}", f"--tls-private-key-file={serving.key}",
                    f"--client-ca-file={pki.ca.cert}"]

        kcm_kubeconfig = component_kubeconfig("kube-controller-manager", controller_manager)
        self._spawn(info, "kube-controller-manager", [
            *secured("kube-controller-manager", kcm_kubeconfig), f"--root-ca-file={pki.ca.cert}",
            f"--service-account-private-key-file={service_account.key}",
            f"--cluster-signing-cert-file={pki.ca.cert}", f"--cluster-signing-key-file={pki.ca.key}",
            "--use-service-account-credentials=true", "--leader-elect=false",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}", "--profiling=false", "--v=1",
        ])
        scheduler_kubeconfig = component_kubeconfig("kube-scheduler", scheduler)
        self._spawn(info, "kube-scheduler", [
            *secured("kube-scheduler", scheduler_kubeconfig), "--leader-elect=false", "--profiling=false", "--v=1",
        ])
        if fake_nodes:
            kwok_kubeconfig = component_kubeconfig("kwok", kwok_cert)
            kwok_config = self.state_dir / "kwok.yaml"
            stages_dir = tools.KWOK.directory / "stages"
            kwok_config.write_text("".join(
                f"---\n{(stages_dir / Path(relative).name).read_text()}\n"
                for relative in tools.versions.KWOK_STAGE_FILES))
            self._spawn(info, "kwok", [
                binaries["kwok"], f"--config={kwok_config}", f"--kubeconfig={kwok_kubeconfig}",
                f"--manage-nodes-with-label-selector={FAKE_NODE_LABEL}=true",
                f"--server-address=127.0.0.1:{ports['kwok']}", "--node-ip=127.0.0.1",
                f"--cidr={POD_CIDR}",
            ])
        ca_context = ssl.create_default_context(cafile=str(pki.ca.cert))
        for name in ("kube-controller-manager", "kube-scheduler"):
            self._wait(info, name, f"https://127.0.0.1:{ports[name]}/healthz", deadline,
                       verify=ca_context)
        if fake_nodes:
            self._wait(info, "kwok", f"http://127.0.0.1:{ports['kwok']}/healthz", deadline,
                       verify=False)
            info.nodes = self._create_nodes(client, nodes, accelerator, region, zone)
            self._wait_until(deadline, "the fake nodes to become Ready (kwok)", info,
                             lambda: self._nodes_ready(client, info.nodes))
        # The service-account controller creates `default` in each namespace: pods need it.
        self._wait_until(deadline, "the default service account (kube-controller-manager)", info,
                         lambda: client.get("/api/v1/namespaces/default/serviceaccounts/default")
                         .status_code == 200)

        if real_node:
            self._start_real_node(info, pki, server, ca_pem, client, deadline)

        kubeconfig_path.parent.mkdir(parents=True, exist_ok=True)
        kubeconfig_path.write_text(yaml.safe_dump(kubeconfig_document(
            server, ca_pem, admin.cert.read_bytes(), admin.key.read_bytes()), sort_keys=False))
        kubeconfig_path.chmod(0o600)
        client.close()
        return info

    def _start_real_node(self, info: ClusterInfo, pki: Any, server: str, ca_pem: bytes,
                         client: httpx.Client, deadline: float) -> None:
        """containerd (with the pause image), then kubelet and kube-proxy; wait for Ready."""
        from inferplane.cluster.node import NODE_NAME, RealNode

        node = RealNode(self.state_dir, self.echo)
        commands = node.prepare(pki, server, ca_pem, kubeconfig_document)
        self._spawn(info, "containerd", commands["containerd"], env=node.environment())
        node.wait_containerd(deadline)
        node.load_pause()
        self._spawn(info, "kubelet", commands["kubelet"])
        self._spawn(info, "kube-proxy", commands["kube-proxy"])
        info.real_nodes = [NODE_NAME]
        info.nodes = [*info.nodes, NODE_NAME]
        self._wait_until(deadline, f"the real node {NODE_NAME} to become Ready (kubelet)", info,
                         lambda: self._nodes_ready(client, [NODE_NAME], label=None),
                         component="kubelet")
        self.echo(f"  node {NODE_NAME}: real (containerd + runc + kubelet), CPU pods")

    def _admin_client(self, server: str, ca: Path, admin: Any) -> httpx.Client:
        context = ssl.create_default_context(cafile=str(ca))
        context.load_cert_chain(str(admin.cert), str(admin.key))
        return httpx.Client(base_url=server, verify=context, timeout=10.0)

    def _spawn(self, info: ClusterInfo, name: str, argv: list[str],
               env: dict[str, str] | None = None) -> None:
        log = self._log(name).open("ab")
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, cwd=self.state_dir,
                                   start_new_session=True, env=env)
        log.close()
        self._pid_file(name).write_text(str(process.pid))
        info.processes[name] = {"pid": process.pid, "binary": argv[0], "log": str(self._log(name))}
        # Write as we go, so `down` finds every process even if `up` fails halfway.
        self.state_file.write_text(json.dumps(info.to_json(), indent=2))
        self.echo(f"  started {name} (pid {process.pid})")

    def _failure(self, info: ClusterInfo, name: str, what: str) -> ClusterError:
        log = self._log(name)
        tail = ""
        if log.exists():
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        return ClusterError(f"{name} {what}; last lines of {log}:\n{tail}")

    def _wait(self, info: ClusterInfo, name: str, url: str, deadline: float,
              client: httpx.Client | None = None, verify: Any = True) -> None:
        own = client is None
        client = client or httpx.Client(verify=verify, timeout=5.0)
        try:
            def healthy() -> bool:
                try:
                    return client.get(url).status_code == 200
                except httpx.HTTPError:
                    return False
            self._wait_until(deadline, f"{name} to report healthy at {url}", info, healthy,
                             component=name)
        finally:
            if own:
                client.close()

    def _wait_until(self, deadline: float, what: str, info: ClusterInfo,
                    condition: Callable[[], bool], component: str | None = None) -> None:
        while True:
            for name, process in info.processes.items():
                if not _process_alive(process["pid"], process["binary"]):
                    raise self._failure(info, name, "exited during start-up")
            try:
                if condition():
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise self._failure(info, component or "kube-apiserver", f"timed out waiting for {what}")
            time.sleep(0.25)

    def _create_nodes(self, client: httpx.Client, count: int, accelerator: str, region: str,
                      zone: str) -> list[str]:
        names = []
        for index in range(count):
            name = f"gpu-{accelerator.lower()}-{index}"
            node = fake_gpu_node(name, accelerator, region, zone)
            response = client.post("/api/v1/nodes", json=node)
            if response.status_code not in (200, 201):
                raise ClusterError(f"creating node {name} failed: {response.status_code} {response.text}")
            # Capacity lives in status, which a create may drop: set it through the status subresource.
            response = client.patch(f"/api/v1/nodes/{name}/status", json={"status": node["status"]},
                                    headers={"Content-Type": "application/merge-patch+json"})
            if response.status_code != 200:
                raise ClusterError(f"setting capacity of {name} failed: {response.status_code} "
                                   f"{response.text}")
            names.append(name)
            self.echo(f"  node {name}: {node['status']['capacity'][GPU_RESOURCE]} x {accelerator}, "
                      f"{region}/{zone}")
        return names

    @staticmethod
    def _nodes_ready(client: httpx.Client, names: list[str],
                     label: str | None = f"{FAKE_NODE_LABEL}=true") -> bool:
        response = client.get("/api/v1/nodes", params={"labelSelector": label} if label else None)
        if response.status_code != 200:
            return False
        ready = {
            item["metadata"]["name"]
            for item in response.json()["items"]
            if any(c["type"] == "Ready" and c["status"] == "True"
                   for c in item.get("status", {}).get("conditions", []))
        }
        return set(names) <= ready

    # -- status --
    def running(self, info: ClusterInfo | None = None) -> bool:
        """Every recorded process is alive."""
        info = info or self.info()
        if not info:
            return False
        has_fakes = len(info.nodes) > len(info.real_nodes)
        expected = {c for c in COMPONENTS if c != "kwok" or has_fakes}
        expected |= set(NODE_COMPONENTS) if info.real_nodes else set()
        if set(info.processes) != expected:
            return False
        return all(_process_alive(p["pid"], p["binary"]) for p in info.processes.values())

    def status(self) -> dict[str, Any]:
        """Each process (alive or not) and whether the API server answers /readyz."""
        info = self.info()
        if not info:
            return {"state_dir": str(self.state_dir), "running": False, "processes": {},
                    "api": "not started"}
        processes = {
            name: {"pid": p["pid"], "alive": _process_alive(p["pid"], p["binary"]), "log": p["log"]}
            for name, p in info.processes.items()
        }
        api = "unreachable"
        try:
            pki = self.state_dir / "pki"
            client = self._admin_client(info.server, pki / "ca.crt",
                                        type("Paths", (), {"cert": pki / "admin.crt",
                                                           "key": pki / "admin.key"}))
            with client:
                response = client.get("/readyz")
                api = "ready" if response.status_code == 200 else f"not ready ({response.status_code})"
        except (httpx.HTTPError, OSError, ssl.SSLError):
            pass
        return {"state_dir": str(self.state_dir), "server": info.server,
                "kubeconfig": str(info.kubeconfig), "nodes": info.nodes,
                "node_kinds": {name: "real" if name in info.real_nodes else "kwok"
                               for name in info.nodes},
                "running": all(p["alive"] for p in processes.values()) and api == "ready",
                "api": api, "processes": processes}

    # -- down --
    def down(self, quiet: bool = False, keep_logs: bool = False) -> list[str]:
        """Stop every process this state dir started (by pid, newest first); remove the state."""
        stopped = []
        pid_dir = self.state_dir / "pids"
        info = self.info()
        recorded = dict(info.processes) if info else {}
        for pid_file in sorted(pid_dir.glob("*.pid")) if pid_dir.is_dir() else []:
            name = pid_file.stem
            if name not in recorded:
                # Started but not yet recorded in cluster.json: the pid file alone is not proof of
                # ownership, so only stop it if it runs one of our tool binaries.
                binaries = [str(t.path(b)) for t in (*tools.CLUSTER_TOOLS, *tools.NODE_TOOLS)
                            for b in t.binaries]
                pid = int(pid_file.read_text().strip() or 0)
                binary = next((b for b in binaries if _process_alive(pid, b)), None)
                if binary:
                    recorded[name] = {"pid": pid, "binary": binary}
        node = None
        if any(name in recorded for name in NODE_COMPONENTS) or (self.state_dir / "node").is_dir():
            from inferplane.cluster.node import RealNode

            node = RealNode(self.state_dir, self.echo)
            if info and "kubelet" in recorded:
                self._drain_real_node(info, node)
        for name in reversed((*COMPONENTS, *NODE_COMPONENTS)):
            process = recorded.get(name)
            if name == "containerd" and node is not None and process \
                    and _process_alive(process["pid"], process["binary"]):
                node.kill_containers()
            if process and self._stop(process["pid"], process["binary"]):
                stopped.append(name)
                if not quiet:
                    self.echo(f"  stopped {name} (pid {process['pid']})")
            if name == "containerd" and node is not None:
                node.cleanup()
        if self.state_dir.is_dir() and (self.state_file.exists() or pid_dir.is_dir()):
            if keep_logs:
                for sub in ("pki", "etcd", "pids"):
                    shutil.rmtree(self.state_dir / sub, ignore_errors=True)
                self.state_file.unlink(missing_ok=True)
            else:
                kubeconfig = info.kubeconfig if info else None
                shutil.rmtree(self.state_dir, ignore_errors=True)
                if kubeconfig and kubeconfig.exists() and not kubeconfig.is_relative_to(self.state_dir):
                    kubeconfig.unlink()
        return stopped

    def _drain_real_node(self, info: ClusterInfo, node: Any) -> None:
        """Cordon the real node and delete its pods, so kubelet stops the sandboxes itself (CNI
        releases their addresses); give up after NODE_DRAIN_SECONDS and let `down` kill the rest."""
        from inferplane.cluster.node import NODE_NAME

        pki = self.state_dir / "pki"
        try:
            client = self._admin_client(info.server, pki / "ca.crt",
                                        type("Paths", (), {"cert": pki / "admin.crt",
                                                           "key": pki / "admin.key"}))
        except (OSError, ssl.SSLError):
            return
        with client:
            try:
                client.patch(f"/api/v1/nodes/{NODE_NAME}", json={"spec": {"unschedulable": True}},
                             headers={"Content-Type": "application/merge-patch+json"})
                pods = client.get("/api/v1/pods",
                                  params={"fieldSelector": f"spec.nodeName={NODE_NAME}"}).json()
                for pod in pods.get("items", []):
                    meta = pod["metadata"]
                    client.request("DELETE", f"/api/v1/namespaces/{meta['namespace']}/pods/"
                                   f"{meta['name']}", json={"gracePeriodSeconds": 0})
            except (httpx.HTTPError, ValueError):
                return
        deadline = time.monotonic() + NODE_DRAIN_SECONDS
        while time.monotonic() < deadline:
            if not node.ctr("tasks", "ls", "-q", check=False).stdout.split():
                return
            time.sleep(0.5)

    @staticmethod
    def _stop(pid: int, binary: str) -> bool:
        if not _process_alive(pid, binary):
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if not _process_alive(pid, binary):
                return True
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)
        while _process_alive(pid, binary):
            time.sleep(0.05)
        return True
