"""kind's node image, made here for kind's podman provider: no registry, no Docker engine.

kind's own node images (kindest/node) come from a registry, and `kind build node-image` needs a
Docker engine and pulls images, so neither works here. This builds the same kind of image from
what the project already pins: a Debian base with systemd (mmdebstrap), kind's node files (its
entrypoint, systemd units and containerd config, read from the pinned kind module), containerd,
runc, kubelet, kubeadm and kubectl from our tool builds, and the control plane's images
(kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy, etcd, pause) built from the
same binaries and preloaded into the node's containerd, as kind's build does. kubeadm then finds
every image it needs without pulling.

What differs from kindest/node, and why (kind_config() sets the matching kubeadm options):
- Pod networking is the CNI bridge plugin with a static conflist (one node, one subnet) instead
  of kindnetd, whose image would need a registry; CoreDNS is not installed (no image): the
  project's manifests reach Services by ClusterIP.
- etcd is the project's pinned etcd, not the version kubeadm defaults to.
- containerd restricts pods' oom_score_adj to its own: this VM withholds CAP_SYS_RESOURCE, so
  runc cannot lower a container's oom_score_adj and kubelet's -998 for static pods fails.
- The default StorageClass has no dynamic provisioner.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Callable

from inferplane.cluster import images, tools, versions

RECIPE_DIR = Path(__file__).with_name("kind-node")
RECIPE_VERSION = "1"
NODE_REPOSITORY = "localhost/inferplane-kind-node"
# bookworm's systemd (252) boots on this host's cgroup v1; newer systemd drops cgroup v1.
NODE_SUITE = "bookworm"
NODE_PACKAGES = ("systemd", "systemd-sysv", "dbus", "conntrack", "iptables", "nftables",
                 "iproute2", "ethtool", "util-linux", "mount", "kmod", "libseccomp2", "pigz",
                 "bash", "ca-certificates", "jq", "procps", "socat")
# kind's node files (images/base/files in the kind module), as its base image installs them.
KIND_NODE_FILES = (
    "usr/local/bin/entrypoint", "kind/bin", "etc/containerd/config.toml", "etc/crictl.yaml",
    "etc/default/kubelet", "etc/sysctl.d", "etc/systemd/system/containerd.service",
    "etc/systemd/system/kubelet.service", "etc/systemd/system/kubelet.service.d",
    "etc/systemd/system/kubelet.slice", "etc/systemd/system/undo-mount-hacks.service",
)
CNI_PLUGINS = ("bridge", "host-local", "loopback", "portmap")
CNI_PLUGIN_DIRS = (Path("/usr/lib/cni"), Path("/opt/cni/bin"))
POD_SUBNET = "10.244.0.0/24"  # the conflist's range; kind's podSubnet must contain it
IMAGE_REGISTRY = "registry.k8s.io"  # where kubeadm looks for the control plane's images
TOOLS = (tools.CONTAINERD, tools.RUNC, tools.KUBERNETES_NODE, tools.KUBERNETES,
         tools.ETCD, tools.KUBERNETES_KIND)


class KindNodeError(images.ImageBuildError):
    """The node image could not be built: the message names the step and what to do."""


def etcd_image_tag() -> str:
    """Our etcd's tag in kubeadm's form (3.6.16-0): kind_config() points kubeadm at it."""
    return f"{versions.ETCD_VERSION.lstrip('v')}-0"


def pause_version() -> str:
    """The pause image's version in the pinned Kubernetes source (build/pause/Makefile's TAG)."""
    source = tools.kubernetes_module_dir() / "build" / "pause" / "Makefile"
    match = re.search(r"^TAG \?= (\S+)$", source.read_text(), re.MULTILINE)
    if not match:
        raise KindNodeError(f"no TAG in {source}")
    return match.group(1)


def component_images() -> dict[str, tuple[tools.Tool, str]]:
    """Image reference -> (tool, binary) for every image kubeadm runs (pause: the sandbox)."""
    k8s = versions.KUBERNETES_VERSION
    return {
        f"{IMAGE_REGISTRY}/kube-apiserver:{k8s}": (tools.KUBERNETES, "kube-apiserver"),
        f"{IMAGE_REGISTRY}/kube-controller-manager:{k8s}": (tools.KUBERNETES,
                                                             "kube-controller-manager"),
        f"{IMAGE_REGISTRY}/kube-scheduler:{k8s}": (tools.KUBERNETES, "kube-scheduler"),
        f"{IMAGE_REGISTRY}/kube-proxy:{k8s}": (tools.KUBERNETES_NODE, "kube-proxy"),
        f"{IMAGE_REGISTRY}/etcd:{etcd_image_tag()}": (tools.ETCD, "etcd"),
        f"{IMAGE_REGISTRY}/pause:{pause_version()}": (tools.KUBERNETES_NODE, "pause"),
    }


def node_key() -> str:
    """A short hash of everything the node image is made from."""
    recipe = [RECIPE_VERSION, NODE_SUITE, NODE_PACKAGES, images.BASE_MIRRORS,
              images.BASE_DPKG_EXCLUDES, versions.KIND_VERSION, KIND_NODE_FILES, CNI_PLUGINS,
              [(tool.name, tool.version) for tool in TOOLS],
              sorted((path.name, path.read_text()) for path in RECIPE_DIR.iterdir())]
    return hashlib.sha256(json.dumps(recipe).encode()).hexdigest()[:12]


def node_image_reference() -> str:
    return f"{NODE_REPOSITORY}:{versions.KUBERNETES_VERSION}-{node_key()}"


def podman_environment() -> dict[str, str]:
    """podman for kind: our containers.conf plus runc (our build) as the OCI runtime, since
    crun refuses this host's hybrid cgroups for a container with its own cgroup namespace."""
    conf = images.images_dir() / "containers-kind.conf"
    # [engine] is the last table of CONTAINERS_CONF, so the runtime line lands in it.
    text = (f'{images.CONTAINERS_CONF}runtime = "runc"\n\n'
            f'[engine.runtimes]\nrunc = ["{tools.RUNC.path()}"]\n')
    if not conf.exists() or conf.read_text() != text:
        conf.write_text(text)
    return {**images.podman_environment(), "CONTAINERS_CONF": str(conf),
            "KIND_EXPERIMENTAL_PROVIDER": "podman"}


def node_image(echo: Callable[[str], None] = print) -> str:
    """The node image's reference, built (1-2 min) unless present; the images of earlier
    pins are removed once it is built (about 1 GB each)."""
    reference = node_image_reference()
    images.require_command("podman", "podman")
    if images.image_exists(reference, podman_environment()):
        echo(f"kind node image {reference}: present")
        return reference
    missing = tools.missing(TOOLS)
    if missing:
        raise KindNodeError(f"the kind node image needs {', '.join(t.name for t in missing)}: run "
                            "`inferplane cluster tools` first")
    started = time.monotonic()
    work = images.images_dir() / f"kind-node-{node_key()}.partial"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        base = _base_image(work, echo)
        archive = _component_archive(base, work, echo)
        _stage_files(work / "context" / "files")
        shutil.copyfile(RECIPE_DIR / "Containerfile", work / "context" / "Containerfile")
        stage = f"{NODE_REPOSITORY}:stage-{node_key()}"
        _podman("podman build (kind node)", ["build", "--isolation=chroot", "--pull=never",
                                            "--build-arg", f"BASE_IMAGE={base}", "-t", stage,
                                            str(work / "context")])
        _preload(stage, archive, reference, echo)
        _podman("podman rmi", ["rmi", stage])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    images.remove_stale_tags(reference, f"{NODE_REPOSITORY}:*")
    images.remove_stale_tags(base, f"{NODE_REPOSITORY}-base:*")
    echo(f"kind node image {reference}: built in {time.monotonic() - started:.0f} s")
    return reference


def _podman(step: str, args: list[str]) -> str:
    return images.run_step(step, ["podman", *args], env=podman_environment())


def _base_image(work: Path, echo: Callable[[str], None]) -> str:
    """Debian with systemd and what kubelet, kube-proxy and kind's entrypoint call."""
    reference = f"{NODE_REPOSITORY}-base:{NODE_SUITE}-{node_key()}"
    if images.image_exists(reference, podman_environment()):
        return reference
    images.require_command("mmdebstrap", "mmdebstrap")
    echo(f"kind node image: mmdebstrap {NODE_SUITE} with systemd (about 2 min)")
    tar = work / "base.tar"
    images.debian_rootfs(NODE_SUITE, NODE_PACKAGES, tar, images.BASE_MIRRORS)
    _podman("podman import", ["import", "--change", 'CMD ["/bin/bash"]', str(tar), reference])
    tar.unlink()
    return reference


def _component_archive(base: str, work: Path, echo: Callable[[str], None]) -> Path:
    """The control plane's images, one binary each on the node's base (kube-proxy needs its
    iptables; pause is static and alone), saved into one archive for containerd."""
    references = component_images()
    echo(f"kind node image: {len(references)} control plane images from the pinned binaries")
    for reference, (tool, binary) in references.items():
        context = work / "components" / binary
        context.mkdir(parents=True)
        shutil.copy2(tool.path(binary), context / binary)
        if binary == "pause":  # runs as nobody, like upstream's pause image
            recipe = 'FROM scratch\nCOPY pause /pause\nUSER 65535:65535\nENTRYPOINT ["/pause"]\n'
        else:
            recipe = f"FROM {base}\nCOPY {binary} /usr/local/bin/{binary}\n"
        (context / "Containerfile").write_text(recipe)
        _podman(f"podman build ({binary})", ["build", "--isolation=chroot", "--pull=never", "-t",
                                             reference, str(context)])
    archive = work / "components.tar"
    _podman("podman save", ["save", "--multi-image-archive", "--format", "docker-archive",
                            "-o", str(archive), *references])
    _podman("podman rmi", ["rmi", *references])
    return archive


def _stage_files(files: Path) -> None:
    """kind's node files, our binaries and CNI plugins, and the recipe's conflist and storage."""
    kind_files = tools.kind_module_dir() / "images" / "base" / "files"
    for relative in KIND_NODE_FILES:
        source, target = kind_files / relative, files / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            shutil.copyfile(source, target)
    config = files / "etc" / "containerd" / "config.toml"
    text = config.read_text()
    text, sandbox = re.subn(r'sandbox_image = "[^"]*"',
                            f'sandbox_image = "{IMAGE_REGISTRY}/pause:{pause_version()}"', text)
    text, restrict = re.subn(r"restrict_oom_score_adj = false", "restrict_oom_score_adj = true",
                             text)
    if sandbox != 1 or restrict != 1:
        raise KindNodeError(f"kind {versions.KIND_VERSION}'s containerd config changed: no "
                            "sandbox_image or restrict_oom_score_adj to set in it")
    config.write_text(text)
    binaries = {
        "usr/local/bin": [(tools.CONTAINERD, name) for name in tools.CONTAINERD.binaries],
        "usr/local/sbin": [(tools.RUNC, "runc")],
        "usr/bin": [(tools.KUBERNETES_NODE, "kubelet"), (tools.KUBERNETES_KIND, "kubeadm"),
                    (tools.KUBERNETES_KIND, "kubectl")],
    }
    for directory, entries in binaries.items():
        (files / directory).mkdir(parents=True, exist_ok=True)
        for tool, binary in entries:
            shutil.copy2(tool.path(binary), files / directory / binary)
    cni = files / "opt" / "cni" / "bin"
    cni.mkdir(parents=True)
    for plugin in CNI_PLUGINS:
        found = next((d / plugin for d in CNI_PLUGIN_DIRS if (d / plugin).exists()), None)
        if found is None:
            raise KindNodeError(f"no CNI plugin {plugin!r} in "
                                f"{', '.join(map(str, CNI_PLUGIN_DIRS))}: apt-get install "
                                "containernetworking-plugins (scripts/install-system-deps does it)")
        shutil.copy2(found, cni / plugin)
    (files / "etc" / "cni" / "net.d").mkdir(parents=True)
    shutil.copyfile(RECIPE_DIR / "10-inferplane-bridge.conflist",
                    files / "etc" / "cni" / "net.d" / "10-inferplane-bridge.conflist")
    (files / "kind" / "manifests").mkdir(parents=True)
    shutil.copyfile(RECIPE_DIR / "default-storage.yaml",
                    files / "kind" / "manifests" / "default-storage.yaml")
    (files / "kind" / "version").write_text(versions.KUBERNETES_VERSION + "\n")


def _preload(stage: str, archive: Path, reference: str, echo: Callable[[str], None]) -> None:
    """Import the control plane's images into the node's containerd (content only, unpacked at
    first use, pinned against garbage collection), as kind's own build does, then commit."""
    echo("kind node image: preloading the control plane images into its containerd")
    container = f"inferplane-kind-node-build-{node_key()}"
    subprocess.run(["podman", "rm", "-f", container], env=podman_environment(),
                   capture_output=True)
    _podman("podman run (kind node build)", ["run", "-d", "--name", container, "--privileged",
                                             "--entrypoint", "sleep", stage, "infinity"])
    try:
        _podman("podman cp", ["cp", str(archive), f"{container}:/components.tar"])
        script = (
            "containerd >/tmp/containerd.log 2>&1 & "
            "for i in $(seq 60); do [ -S /run/containerd/containerd.sock ] && break; sleep 0.5; "
            "done; ctr --namespace=k8s.io images import --label=io.cri-containerd.pinned=pinned "
            "--no-unpack --digests /components.tar >/dev/null "
            "|| { cat /tmp/containerd.log; exit 1; }; "
            "kill %1; wait; rm -f /components.tar /tmp/containerd.log"
        )
        _podman("preload (containerd import)", ["exec", container, "bash", "-c", script])
        _podman("podman commit", [
            "commit", "--change", 'ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]',
            "--change", "CMD []", "--change", "STOPSIGNAL SIGRTMIN+3", container, reference])
    finally:
        subprocess.run(["podman", "rm", "-f", "-t", "0", container], env=podman_environment(),
                       capture_output=True)
