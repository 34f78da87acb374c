"""Build (or reuse) the pinned cluster and Pulumi engine binaries with `go build`.

Everything comes from the Go module proxy at the versions in `versions.py`. Builds go into a
machine-wide cache keyed by version, outside the repo, so a second run, another checkout or CI on
the same machine reuses them:
`${INFERPLANE_CACHE:-${XDG_CACHE_HOME:-~/.cache}/inferplane}/tools/<name>-<version>/bin/`.
Each build happens in a scratch directory and is moved into place only when complete, so an
interrupted build never leaves a half-built tool that a later run would trust.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from inferplane.cache import cache_root
from inferplane.cluster import versions

STAMP_FILE = "tool.json"


class ToolBuildError(RuntimeError):
    """A tool could not be built: the message names the tool, the command and its output tail."""




def go_environment() -> dict[str, str]:
    """Go's module and build caches live in our cache too, so a warm machine builds nothing."""
    root = cache_root() / "go"
    env = dict(os.environ)
    env.update({
        "GOMODCACHE": str(root / "mod"),
        "GOCACHE": str(root / "build"),
        "GOFLAGS": "-mod=mod -buildvcs=false",
        "CGO_ENABLED": "0",
        "GOTOOLCHAIN": env.get("GOTOOLCHAIN", "local"),
        "GOWORK": "off",
    })
    return env


@dataclass(frozen=True)
class Tool:
    """One pinned tool: the binaries it provides and how to build them."""

    name: str
    version: str
    binaries: tuple[str, ...]
    build: Callable[["Tool", Path, "Progress"], None]
    # `binary --version`-style command whose output must contain `version_text`; empty: stamp only.
    version_args: tuple[str, ...] = ()
    version_text: str = ""
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def directory(self) -> Path:
        return cache_root() / "tools" / f"{self.name}-{self.version}"

    @property
    def bin_dir(self) -> Path:
        return self.directory / "bin"

    def path(self, binary: str | None = None) -> Path:
        """Where a binary of this tool lives (built or not)."""
        return self.bin_dir / (binary or self.binaries[0])

    def is_built(self) -> bool:
        """The stamp matches, every binary exists, and the first one reports the pinned version."""
        stamp = self.directory / STAMP_FILE
        try:
            recorded = json.loads(stamp.read_text())
        except (OSError, ValueError):
            return False
        if recorded.get("version") != self.version:
            return False
        if not all(os.access(self.path(b), os.X_OK) for b in self.binaries):
            return False
        if not self.version_args:
            return True
        try:
            result = subprocess.run([str(self.path()), *self.version_args], capture_output=True,
                                    text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            return False
        return self.version_text in (result.stdout + result.stderr)


class Progress:
    """Prints what is being built and how long it took (builds take minutes when cold)."""

    def __init__(self, echo: Callable[[str], None] | None = None):
        self.echo = echo or (lambda message: print(message, flush=True))

    def step(self, message: str) -> None:
        self.echo(f"  {message}")


def _run(tool: Tool, args: list[str], cwd: Path, progress: Progress, env: dict[str, str] | None = None,
         log: Path | None = None) -> None:
    """Run one build command at low priority; on failure raise with the tail of its output."""
    progress.step(" ".join(args[:3]) + (" ..." if len(args) > 3 else ""))
    command = ["nice", "-n", "10", *args] if shutil.which("nice") else args
    result = subprocess.run(command, cwd=cwd, env=env or go_environment(), capture_output=True,
                            text=True)
    if log is not None:
        with log.open("a") as handle:
            handle.write(f"$ {' '.join(args)}\n{result.stdout}{result.stderr}\n")
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-30:])
        raise ToolBuildError(f"building {tool.name} {tool.version} failed: `{' '.join(args)}` "
                             f"exited {result.returncode}:\n{tail}")


GO_MINIMUM = (1, 26)  # the pinned Kubernetes, containerd and pulumi sources need it (GOTOOLCHAIN=local)


def _go_version(go: str) -> tuple[int, ...] | None:
    result = subprocess.run([go, "env", "GOVERSION"], capture_output=True, text=True)
    match = re.match(r"go(\d+)\.(\d+)", result.stdout.strip()) if result.returncode == 0 else None
    return tuple(int(part) for part in match.groups()) if match else None


def _go() -> str:
    """A Go new enough for the builds: on PATH, Go's installer's /usr/local/go, or the toolchain
    scripts/install-system-deps puts in our cache; an older one is named, not used."""
    installed = sorted((cache_root() / "go-toolchain").glob("go*/bin/go"), reverse=True)
    candidates = [shutil.which("go"), "/usr/local/go/bin/go", *map(str, installed)]
    seen = []
    for go in filter(None, candidates):
        if not os.access(go, os.X_OK):
            continue
        version = _go_version(go)
        if version and version >= GO_MINIMUM:
            return go
        seen.append(f"{go} ({'go' + '.'.join(map(str, version)) if version else 'does not run'})")
    found = f" (found: {', '.join(seen)})" if seen else ""
    raise ToolBuildError(f"no Go {'.'.join(map(str, GO_MINIMUM))} or newer{found}: run "
                         "scripts/install-system-deps, which installs the pinned Go from the Go "
                         "module proxy (the tools are built from it with GOTOOLCHAIN=local)")


def _module_dir(module: str, version: str) -> Path:
    """Download a module into our module cache and return its (read-only) directory."""
    result = subprocess.run([_go(), "mod", "download", "-json", f"{module}@{version}"],
                            env=go_environment(), capture_output=True, text=True, cwd=cache_root())
    if result.returncode != 0:
        raise ToolBuildError(f"cannot download {module}@{version}: {result.stdout}{result.stderr}")
    info = json.loads(result.stdout)
    if "Error" in info:
        raise ToolBuildError(f"cannot download {module}@{version}: {info['Error']}")
    return Path(info["Dir"])


def _write_wrapper(work: Path, module_name: str, requires: dict[str, str],
                   replaces: dict[str, tuple[str, str]]) -> None:
    """A throwaway main module: `require` the upstream modules and repeat their replaces."""
    lines = [f"module {module_name}", "", "go 1.26.0", "", "require ("]
    lines += [f"\t{path} {version}" for path, version in requires.items()]
    lines += [")", ""]
    if replaces:
        lines.append("replace (")
        for path, (target, version) in replaces.items():
            lines.append(f"\t{path} => {target} {version}".rstrip())
        lines += [")", ""]
    (work / "go.mod").write_text("\n".join(lines))


def _go_build(tool: Tool, work: Path, out: Path, packages: dict[str, str], ldflags: Iterable[str],
              progress: Progress, tags: Iterable[str] = (), env: dict[str, str] | None = None) -> None:
    """`go get` the main packages at the pinned versions, then build each into out/<binary>."""
    log = work / "build.log"
    _run(tool, [_go(), "get", *[f"{pkg}@{version}" for pkg, version in packages.values()]],
         work, progress, env=env, log=log)
    flags = " ".join(["-s", "-w", *ldflags])
    tag_args = ["-tags", ",".join(tags)] if tags else []
    for binary, (pkg, _version) in packages.items():
        started = time.monotonic()
        _run(tool, [_go(), "build", "-trimpath", *tag_args, "-ldflags", flags,
                    "-o", str(out / binary), pkg], work, progress, env=env, log=log)
        progress.step(f"built {binary} in {time.monotonic() - started:.0f} s")


# -- the tools ---------------------------------------------------------------------------------

def _build_etcd(tool: Tool, work: Path, progress: Progress) -> None:
    _write_wrapper(work, "inferplane.local/tools/etcd", {versions.ETCD_MODULE: tool.version}, {})
    _go_build(tool, work, work / "out" / "bin",
              {"etcd": (versions.ETCD_MODULE, tool.version)}, [], progress)


def kubernetes_staging_replaces(version: str, staging_version: str) -> dict[str, tuple[str, str]]:
    """k8s.io/kubernetes replaces every k8s.io/* staging module with ./staging/...; a wrapper module
    points each at its published v0.X.Y instead (read from the pinned go.mod, never hard-coded)."""
    source = _module_dir("k8s.io/kubernetes", version) / "go.mod"
    replaces: dict[str, tuple[str, str]] = {}
    for line in source.read_text().splitlines():
        parts = line.replace("replace ", "").split()
        if len(parts) == 3 and parts[1] == "=>" and parts[2].startswith("./staging/"):
            replaces[parts[0]] = (parts[0], staging_version)
    if not replaces:
        raise ToolBuildError(f"found no staging replace directives in k8s.io/kubernetes@{version}")
    return replaces


def _build_kubernetes(tool: Tool, work: Path, progress: Progress,
                      binaries: Iterable[str] | None = None) -> None:
    replaces = kubernetes_staging_replaces(tool.version, versions.KUBERNETES_STAGING_VERSION)
    _write_wrapper(work, "inferplane.local/tools/kubernetes", {"k8s.io/kubernetes": tool.version},
                   replaces)
    major, minor = tool.version.lstrip("v").split(".")[:2]
    ldflags = [
        f"-X k8s.io/component-base/version.gitVersion={tool.version}",
        f"-X k8s.io/component-base/version.gitMajor={major}",
        f"-X k8s.io/component-base/version.gitMinor={minor}",
        "-X k8s.io/component-base/version.gitTreeState=clean",
        f"-X k8s.io/client-go/pkg/version.gitVersion={tool.version}",
    ]
    packages = {name: (f"k8s.io/kubernetes/cmd/{name}", tool.version)
                for name in (binaries or tool.binaries)}
    _go_build(tool, work, work / "out" / "bin", packages, ldflags, progress)


def _build_kubernetes_node(tool: Tool, work: Path, progress: Progress) -> None:
    """kubelet and kube-proxy like the control plane, plus the pod sandbox's `pause` process,
    compiled statically from the same Kubernetes module (build/pause/linux/pause.c)."""
    _build_kubernetes(tool, work, progress, binaries=("kubelet", "kube-proxy"))
    source = _module_dir("k8s.io/kubernetes", tool.version) / "build" / "pause" / "linux" / "pause.c"
    gcc = shutil.which("gcc") or shutil.which("cc")
    if not gcc:
        raise ToolBuildError("building pause needs a C compiler: apt-get install gcc libc6-dev")
    _run(tool, [gcc, "-Os", "-Wall", "-static", f"-DVERSION={tool.version}", "-o",
                str(work / "out" / "bin" / "pause"), str(source)], work, progress)
    _run(tool, ["strip", str(work / "out" / "bin" / "pause")], work, progress)


def _build_containerd(tool: Tool, work: Path, progress: Progress) -> None:
    """containerd 2.x (Kubernetes >= 1.36 needs it), its runc shim and `ctr` to import images."""
    _write_wrapper(work, "inferplane.local/tools/containerd",
                   {versions.CONTAINERD_MODULE: tool.version}, {})
    packages = {name: (f"{versions.CONTAINERD_MODULE}/cmd/{name}", tool.version)
                for name in tool.binaries}
    # No cgo: the btrfs and devmapper snapshotters drop out; overlayfs is all the node uses.
    _go_build(tool, work, work / "out" / "bin", packages,
              [f"-X {versions.CONTAINERD_MODULE}/version.Version={tool.version}"], progress,
              tags=("no_btrfs", "no_devmapper", "no_zfs"))


def _build_runc(tool: Tool, work: Path, progress: Progress) -> None:
    """runc with seccomp (pods ask for the RuntimeDefault profile), linked statically: it needs
    cgo for its nsenter part, gcc and libseccomp-dev (scripts/install-system-deps)."""
    if not Path("/usr/include/seccomp.h").exists():
        raise ToolBuildError("building runc needs libseccomp's headers: apt-get install "
                             "libseccomp-dev (scripts/install-system-deps installs it)")
    _write_wrapper(work, "inferplane.local/tools/runc", {versions.RUNC_MODULE: tool.version}, {})
    env = {**go_environment(), "CGO_ENABLED": "1"}
    _go_build(tool, work, work / "out" / "bin", {"runc": (versions.RUNC_MODULE, tool.version)},
              ["-extldflags=-static"], progress, tags=("seccomp", "netgo", "osusergo"), env=env)


def _build_kwok(tool: Tool, work: Path, progress: Progress) -> None:
    _write_wrapper(work, "inferplane.local/tools/kwok", {versions.KWOK_MODULE: tool.version}, {})
    _go_build(tool, work, work / "out" / "bin",
              {"kwok": (f"{versions.KWOK_MODULE}/cmd/kwok", tool.version)},
              [f"-X sigs.k8s.io/kwok/pkg/consts.Version={tool.version.lstrip('v')}"], progress)
    # kwok needs Stage objects to act like kubelets; take upstream's from the pinned module.
    source = _module_dir(versions.KWOK_MODULE, tool.version)
    stages = work / "out" / "stages"
    stages.mkdir(parents=True)
    for relative in versions.KWOK_STAGE_FILES:
        shutil.copyfile(source / relative, stages / Path(relative).name)


def _build_kind(tool: Tool, work: Path, progress: Progress) -> None:
    _write_wrapper(work, "inferplane.local/tools/kind", {versions.KIND_MODULE: tool.version}, {})
    _go_build(tool, work, work / "out" / "bin", {"kind": (versions.KIND_MODULE, tool.version)}, [],
              progress)


def kubernetes_module_dir() -> Path:
    """The pinned Kubernetes source (build/pause and the kind node image read from it)."""
    return _module_dir("k8s.io/kubernetes", versions.KUBERNETES_VERSION)


def kind_module_dir() -> Path:
    """The pinned kind module's source: its node image files (images/base/files) come from it."""
    return _module_dir(versions.KIND_MODULE, versions.KIND_VERSION)


def _build_pulumi(tool: Tool, work: Path, progress: Progress) -> None:
    _write_wrapper(work, "inferplane.local/tools/pulumi", {versions.PULUMI_MODULE: tool.version},
                   versions.PULUMI_REPLACES)
    _go_build(tool, work, work / "out" / "bin",
              {"pulumi": (f"{versions.PULUMI_MODULE}/cmd/pulumi", tool.version)},
              [f"-X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version={tool.version}"],
              progress)


def pulumi_source() -> Path:
    """A git directory (or checkout) of github.com/pulumi/pulumi: INFERPLANE_PULUMI_SOURCE, else the
    machine's mirror. The Go proxy refuses the language host's module, so its two files come from
    the repository itself."""
    return Path(os.environ.get("INFERPLANE_PULUMI_SOURCE", versions.PULUMI_SOURCE_DEFAULT))


def _git_show(source: Path, path: str) -> bytes:
    git_dir = source / ".git" if (source / ".git").exists() else source
    result = subprocess.run(["git", f"--git-dir={git_dir}", "show", f"HEAD:{path}"],
                            capture_output=True)
    if result.returncode != 0:
        raise ToolBuildError(f"cannot read {path} from the pulumi/pulumi source at {source} "
                             f"(set INFERPLANE_PULUMI_SOURCE to a clone of "
                             f"github.com/pulumi/pulumi): {result.stderr.decode().strip()}")
    return result.stdout


def _build_pulumi_language_python(tool: Tool, work: Path, progress: Progress) -> None:
    """The Python language host: its main.go from the pulumi repository, compiled against the
    CLI's own sdk/v3 and pkg/v3 from the Go proxy (the same pins as `pulumi`), so `pulumi up`
    runs a Python program from Pulumi.yaml as it does for users; plus its -exec script."""
    source = pulumi_source()
    main_dir = work / "cmd" / "pulumi-language-python"
    main_dir.mkdir(parents=True)
    (main_dir / "main.go").write_bytes(_git_show(source, versions.PULUMI_LANGUAGE_PYTHON_MAIN))
    _write_wrapper(work, "inferplane.local/tools/pulumi-language-python",
                   {"github.com/pulumi/pulumi/sdk/v3": tool.version,
                    versions.PULUMI_MODULE: tool.version}, versions.PULUMI_REPLACES)
    log = work / "build.log"
    _run(tool, [_go(), "mod", "tidy"], work, progress, log=log)
    out = work / "out" / "bin"
    _run(tool, [_go(), "build", "-trimpath", "-ldflags",
                f"-s -w -X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version={tool.version}",
                "-o", str(out / "pulumi-language-python"), "./cmd/pulumi-language-python"],
         work, progress, log=log)
    exec_script = out / "pulumi-language-python-exec"
    exec_script.write_bytes(_git_show(source, versions.PULUMI_LANGUAGE_PYTHON_EXEC))
    exec_script.chmod(0o755)


def generate_provider_embeds(package_dir: Path, version: str) -> None:
    """What the provider's `go generate` (generate.go) does before it compiles: the schema with its
    version set, and the Terraform mapping, as the compact JSON files that main.go embeds."""
    schema = json.loads((package_dir / "schema.json").read_text())
    schema["version"] = version
    (package_dir / "schema-embed.json").write_text(json.dumps(schema, separators=(",", ":")))
    mapping = json.loads((package_dir / "terraform-mapping.json").read_text())
    (package_dir / "terraform-mapping-embed.json").write_text(
        json.dumps(mapping, separators=(",", ":")))


def _build_pulumi_kubernetes(tool: Tool, work: Path, progress: Progress) -> None:
    # go:embed files must sit beside main.go, and the module cache is read-only: build from a
    # writable copy of the pinned module, wired in with a replace directive.
    source = _module_dir(versions.PULUMI_KUBERNETES_MODULE, tool.version)
    copy = work / "provider"
    shutil.copytree(source, copy)
    for path in [copy, *copy.rglob("*")]:
        path.chmod(path.stat().st_mode | 0o200)
    plugin_version = tool.version.lstrip("v")
    generate_provider_embeds(copy / "cmd" / "pulumi-resource-kubernetes", plugin_version)
    replaces = dict(versions.PULUMI_KUBERNETES_REPLACES)
    replaces[versions.PULUMI_KUBERNETES_MODULE] = ("./provider", "")
    _write_wrapper(work, "inferplane.local/tools/pulumi-kubernetes",
                   {versions.PULUMI_KUBERNETES_MODULE: tool.version}, replaces)
    version_flag = (f"-X {versions.PULUMI_KUBERNETES_MODULE}/pkg/version.Version={plugin_version}")
    _go_build(tool, work, work / "out" / "bin",
              {"pulumi-resource-kubernetes": (
                  f"{versions.PULUMI_KUBERNETES_MODULE}/cmd/pulumi-resource-kubernetes",
                  tool.version)},
              [version_flag], progress)


ETCD = Tool("etcd", versions.ETCD_VERSION, ("etcd",), _build_etcd,
            ("--version",), f"etcd Version: {versions.ETCD_VERSION.lstrip('v')}")
KUBERNETES = Tool("kubernetes", versions.KUBERNETES_VERSION,
                  ("kube-apiserver", "kube-controller-manager", "kube-scheduler"),
                  _build_kubernetes, ("--version",), f"Kubernetes {versions.KUBERNETES_VERSION}")
KWOK = Tool("kwok", versions.KWOK_VERSION, ("kwok",), _build_kwok,
            ("--version",), versions.KWOK_VERSION.lstrip("v"))
# The real node: containerd + runc run the pods, kubelet and kube-proxy join the control plane.
KUBERNETES_NODE = Tool("kubernetes-node", versions.KUBERNETES_VERSION,
                       ("kubelet", "kube-proxy", "pause"), _build_kubernetes_node,
                       ("--version",), f"Kubernetes {versions.KUBERNETES_VERSION}")
CONTAINERD = Tool("containerd", versions.CONTAINERD_VERSION,
                  ("containerd", "containerd-shim-runc-v2", "ctr"), _build_containerd,
                  ("--version",), versions.CONTAINERD_VERSION)
RUNC = Tool("runc", versions.RUNC_VERSION, ("runc",), _build_runc,
            ("--version",), f"runc version {versions.RUNC_VERSION.lstrip('v')}")
# kind and what its node image needs beyond the node's binaries: kubeadm and kubectl.
KIND = Tool("kind", versions.KIND_VERSION, ("kind",), _build_kind, ("version",),
            f"kind {versions.KIND_VERSION}")
KUBERNETES_KIND = Tool("kubernetes-kind", versions.KUBERNETES_VERSION, ("kubeadm", "kubectl"),
                       _build_kubernetes, ("version", "-o", "short"), versions.KUBERNETES_VERSION)
PULUMI = Tool("pulumi", versions.PULUMI_VERSION, ("pulumi",), _build_pulumi,
              ("version",), versions.PULUMI_VERSION)
PULUMI_LANGUAGE_PYTHON = Tool("pulumi-language-python", versions.PULUMI_VERSION,
                              ("pulumi-language-python", "pulumi-language-python-exec"),
                              _build_pulumi_language_python)
PULUMI_KUBERNETES = Tool("pulumi-kubernetes", versions.PULUMI_KUBERNETES_VERSION,
                         ("pulumi-resource-kubernetes",), _build_pulumi_kubernetes)

CLUSTER_TOOLS = (ETCD, KUBERNETES, KWOK)
NODE_TOOLS = (CONTAINERD, RUNC, KUBERNETES_NODE)
PULUMI_TOOLS = (PULUMI, PULUMI_LANGUAGE_PYTHON, PULUMI_KUBERNETES)
KIND_TOOLS = (KIND, KUBERNETES_KIND)
ALL_TOOLS = CLUSTER_TOOLS + NODE_TOOLS + PULUMI_TOOLS + KIND_TOOLS
TOOLS_BY_NAME = {tool.name: tool for tool in ALL_TOOLS}


def ensure(tool: Tool, progress: Progress | None = None) -> Path:
    """Build `tool` unless a good build is cached; return its bin directory."""
    progress = progress or Progress()
    if tool.is_built():
        progress.echo(f"{tool.name} {tool.version}: cached in {tool.directory}")
        return tool.bin_dir
    started = time.monotonic()
    progress.echo(f"{tool.name} {tool.version}: building (minutes when cold; "
                  f"go caches in {cache_root() / 'go'})")
    scratch = cache_root() / "build" / f"{tool.name}-{tool.version}"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    tool.build(tool, scratch, progress)
    out = scratch / "out"
    (out / STAMP_FILE).write_text(json.dumps({
        "name": tool.name, "version": tool.version, "binaries": list(tool.binaries),
        "built_seconds": round(time.monotonic() - started),
    }, indent=2))
    shutil.rmtree(tool.directory, ignore_errors=True)
    tool.directory.parent.mkdir(parents=True, exist_ok=True)
    out.rename(tool.directory)
    shutil.rmtree(scratch, ignore_errors=True)
    if not tool.is_built():
        raise ToolBuildError(f"{tool.name} built, but `{tool.path()} "
                             f"{' '.join(tool.version_args)}` does not report {tool.version_text!r}")
    progress.echo(f"{tool.name} {tool.version}: built in {time.monotonic() - started:.0f} s")
    return tool.bin_dir


def ensure_all(tools: Iterable[Tool] = ALL_TOOLS, progress: Progress | None = None) -> dict[str, Path]:
    """Build or reuse each tool in turn (one at a time: each `go build` uses every core)."""
    return {tool.name: ensure(tool, progress) for tool in tools}


def missing(tools: Iterable[Tool] = ALL_TOOLS) -> list[Tool]:
    """The tools that are not built yet (cheap: no build, one version call each)."""
    return [tool for tool in tools if not tool.is_built()]


def path_with_tools(tools: Iterable[Tool] = ALL_TOOLS, base: str | None = None) -> str:
    """PATH with the tools' bin directories first, so Pulumi finds its provider there."""
    dirs = [str(tool.bin_dir) for tool in tools]
    return os.pathsep.join([*dirs, base if base is not None else os.environ.get("PATH", "")])
