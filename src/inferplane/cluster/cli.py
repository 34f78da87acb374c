"""`inferplane cluster`: build the pinned tools, and bring a local test cluster up, down, or report it."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer

cluster_app = typer.Typer(
    rich_markup_mode=None,
    help="A local Kubernetes cluster with fake 8-GPU nodes, for tests and demos.\n\n"
    "\b\nExample:  inferplane cluster tools && inferplane cluster up",
    no_args_is_help=True,
)

StateDirOption = typer.Option(None, "--state-dir",
                              help="Where pids, logs, certificates and etcd live "
                                   "(default: .inferplane/cluster).")
BackendOption = typer.Option("local", "--backend",
                             help="local (upstream binaries + kwok, no Docker) or kind "
                                  "(Docker, or podman with a node image built here).")


def _fail(message: str, code: int = 1) -> None:
    typer.echo(message, err=True)
    raise typer.Exit(code)


def _local(state_dir: Optional[Path]):
    from inferplane.cluster.local import DEFAULT_STATE_DIR, LocalCluster

    return LocalCluster(state_dir or DEFAULT_STATE_DIR, echo=lambda m: typer.echo(m, err=True))


@cluster_app.command()
def tools(
    only: str = typer.Option("all", "--only", help="all, cluster (etcd, Kubernetes, kwok), node "
                                                   "(containerd, runc, kubelet, kube-proxy, "
                                                   "pause), pulumi (CLI + kubernetes provider) "
                                                   "or kind (kind, kubeadm, kubectl)."),
    check: bool = typer.Option(False, "--check", help="Report what is built; build nothing."),
) -> None:
    """Build the pinned tools with `go build` from the Go module proxy, or reuse the cached build.

    The cache is machine-wide and keyed by version: ${INFERPLANE_CACHE:-~/.cache/inferplane}/tools.

    \b
    Example:  inferplane cluster tools --only cluster
    """
    from inferplane.cluster import tools as tool_builds

    selections = {"all": tool_builds.ALL_TOOLS, "cluster": tool_builds.CLUSTER_TOOLS,
                  "node": tool_builds.NODE_TOOLS, "pulumi": tool_builds.PULUMI_TOOLS,
                  "kind": tool_builds.KIND_TOOLS}
    if only not in selections:
        _fail(f"--only must be one of {', '.join(selections)}, not {only!r}", 2)
    selected = selections[only]
    if check:
        missing = tool_builds.missing(selected)
        for tool in selected:
            state = "missing" if tool in missing else "built"
            typer.echo(f"{tool.name:20} {tool.version:40} {state:8} {tool.bin_dir}")
        raise typer.Exit(1 if missing else 0)
    started = time.monotonic()
    progress = tool_builds.Progress(lambda m: typer.echo(m, err=True))
    try:
        tool_builds.ensure_all(selected, progress)
    except tool_builds.ToolBuildError as error:
        _fail(str(error))
    typer.echo(f"tools ready in {time.monotonic() - started:.0f} s; PATH for them:\n"
               f"  export PATH={tool_builds.path_with_tools(selected, '$PATH')}", err=True)


@cluster_app.command()
def image(state_dir: Optional[Path] = StateDirOption,
          postgres: bool = typer.Option(False, "--postgres",
                                        help="Build the central ledger's PostgreSQL image (Debian's "
                                             "postgresql-17) instead of the gateway's."),
          kind_node: bool = typer.Option(False, "--kind-node",
                                         help="Build the node image of kind's podman provider "
                                              "instead (systemd, containerd, kubelet, kubeadm "
                                              "and the control plane's images).")) -> None:
    """Build the gateway image from the Dockerfile on a Debian base (mmdebstrap + podman, no
    registry), or reuse the build of the same sources; load it into the local cluster's real node
    if one runs; print its reference.

    \b
    Example:  pulumi config set --path inferplane:image.gateway \\
                "$(inferplane cluster image)"
              pulumi config set --path inferplane:ledgerDb.image \\
                "$(inferplane cluster image --postgres)"
    """
    from inferplane.cluster import images
    from inferplane.cluster.node import NodeError, RealNode

    if kind_node:
        from inferplane.cluster import kind_node as kind_node_image

        try:
            typer.echo(kind_node_image.node_image(echo=lambda m: typer.echo(m, err=True)))
        except images.ImageBuildError as error:  # KindNodeError among them
            _fail(str(error))
        return
    build = images.postgres_image if postgres else images.gateway_image
    try:
        built = build(echo=lambda m: typer.echo(m, err=True))
    except images.ImageBuildError as error:
        _fail(str(error))
    typer.echo(f"docker-archive: {built.archive}", err=True)
    cluster = _local(state_dir)
    info = cluster.info()
    if info and info.real_nodes and cluster.running(info):
        try:
            RealNode(cluster.state_dir, echo=cluster.echo).import_image(built.archive)
        except NodeError as error:
            _fail(str(error))
        typer.echo(f"loaded into {', '.join(info.real_nodes)}", err=True)
    typer.echo(built.reference)


@cluster_app.command()
def up(
    backend: str = BackendOption,
    state_dir: Optional[Path] = StateDirOption,
    kubeconfig: Optional[Path] = typer.Option(None, "--kubeconfig",
                                              help="Where to write the admin kubeconfig "
                                                   "(default: <state-dir>/kubeconfig)."),
    nodes: int = typer.Option(2, "--nodes", min=0, max=16,
                              help="Fake 8-GPU nodes (2 leave room for a rolling update); 0 only "
                                   "with the real node."),
    region: str = typer.Option("europe-west4", "--region", help="topology.kubernetes.io/region"),
    zone: str = typer.Option("europe-west4-a", "--zone", help="topology.kubernetes.io/zone"),
    accelerator: str = typer.Option("H100-80G", "--accelerator",
                                    help="Catalog accelerator of the fake nodes."),
    real_node: bool = typer.Option(True, "--real-node/--no-real-node",
                                   help="local only: also run a real node (containerd + kubelet, "
                                        "needs root) for CPU pods; the GPU nodes stay kwok fakes."),
    deploy: bool = typer.Option(True, "--deploy/--no-deploy",
                                help="kind only: deploy the local stack on the simulator and "
                                     "smoke-test a chat completion through the gateway."),
) -> None:
    """Start a local cluster: etcd, kube-apiserver, controller manager, scheduler, kwok GPU nodes,
    and a real node (containerd, runc, kubelet, kube-proxy) that runs CPU pods.

    \b
    Example:  inferplane cluster up --backend local
              export KUBECONFIG=.inferplane/cluster/kubeconfig
    """
    if backend == "kind":
        from inferplane.cluster import kind

        try:
            kind.up(kubeconfig=kubeconfig, deploy=deploy,
                    echo=lambda message: typer.echo(message, err=True))
        except kind.KindError as error:
            _fail(str(error))
        return
    if backend != "local":
        _fail(f"--backend must be local or kind, not {backend!r}", 2)
    from inferplane.cluster.local import ClusterError

    cluster = _local(state_dir)
    try:
        info = cluster.up(nodes=nodes, kubeconfig=kubeconfig, region=region, zone=zone,
                          accelerator=accelerator, real_node=real_node)
    except ClusterError as error:
        _fail(str(error))
    fakes = len(info.nodes) - len(info.real_nodes)
    typer.echo(f"cluster up in {info.started_seconds:.0f} s: {info.server}, "
               f"{fakes} fake GPU nodes (kwok), {len(info.real_nodes)} real node(s)", err=True)
    typer.echo(f"export KUBECONFIG={info.kubeconfig}")


@cluster_app.command()
def down(backend: str = BackendOption, state_dir: Optional[Path] = StateDirOption) -> None:
    """Stop every process `up` started (by pid) and remove the cluster's state.

    \b
    Example:  inferplane cluster down
    """
    if backend == "kind":
        from inferplane.cluster import kind

        try:
            kind.down()
        except kind.KindError as error:
            _fail(str(error))
        return
    cluster = _local(state_dir)
    stopped = cluster.down()
    typer.echo(f"stopped {len(stopped)} processes; removed {cluster.state_dir}", err=True)


@cluster_app.command()
def status(
    state_dir: Optional[Path] = StateDirOption,
    output: str = typer.Option("table", "--output", "-o", help="table or json"),
) -> None:
    """Report each process of the local cluster and the API server's health. Exit 1 if not running.

    \b
    Example:  inferplane cluster status -o json
    """
    report = _local(state_dir).status()
    if output == "json":
        typer.echo(json.dumps(report, indent=2))
    elif output == "table":
        typer.echo(f"api: {report['api']}  {report.get('server', '')}")
        for name, process in report["processes"].items():
            typer.echo(f"  {name:25} pid {process['pid']:<8} "
                       f"{'running' if process['alive'] else 'STOPPED'}  {process['log']}")
        for name, kind in report.get("node_kinds", {}).items():
            what = ("real: containerd + kubelet, runs CPU pods" if kind == "real"
                    else "fake: kwok, 8-GPU capacity, runs no containers")
            typer.echo(f"  node {name:23} {what}")
        if report.get("kubeconfig"):
            typer.echo(f"kubeconfig: {report['kubeconfig']}")
    else:
        _fail(f"--output must be table or json, not {output!r}", 2)
    raise typer.Exit(0 if report["running"] else 1)


@cluster_app.command()
def env(state_dir: Optional[Path] = StateDirOption) -> None:
    """Print shell exports for the cluster and the Pulumi engine (local backend, tools on PATH).

    \b
    Example:  eval "$(inferplane cluster env)" && pulumi stack ls
    """
    from inferplane.cluster import pulumi_env

    cluster = _local(state_dir)
    info = cluster.info()
    values = pulumi_env.engine_environment(cluster.state_dir / "pulumi")
    if info:
        values["KUBECONFIG"] = str(info.kubeconfig)
    for key, value in values.items():
        if key == "PATH":
            typer.echo(f'export PATH="{pulumi_env.tools_path()}:$PATH"')
        else:
            typer.echo(f"export {key}={json.dumps(value)}")
