"""Build the data-plane image without a registry: a Debian base from mmdebstrap, then the Dockerfile.

No container registry is reachable from CI here, so the base image is made from Debian packages
(`mmdebstrap` -> `podman import`) and the gateway image is built on it with `podman build
--build-arg BASE_IMAGE=...`. Both are cached by a key of their inputs: the base in
`<cache>/images/` as a tar (so a reset podman store reimports it in seconds), the gateway image as
a docker-archive that the local node's containerd imports.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from inferplane.cluster.tools import cache_root

REPO_ROOT = Path(__file__).resolve().parents[3]
# The base: Debian's python3 (3.11 in bookworm) with venv, and libnuma1 (~50 kB), which real
# vLLM's CPU kernels link against when this image runs the local cluster's `model.engine:
# vllm-cpu` (docs/local-cluster.md). Changing any of these changes the key, so a new base is
# built beside the old one.
BASE_SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates", "libnuma1")
BASE_MIRRORS = (
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
)
# Docs, man pages and locales are dead weight in an image.
BASE_DPKG_EXCLUDES = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/locale/*",
                      "/usr/share/info/*")
BASE_RECIPE_VERSION = "1"
BASE_REPOSITORY = "localhost/inferplane-base"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
BUILD_CA_BUNDLE = "/run/build-ca.crt"
GATEWAY_REPOSITORY = "localhost/inferplane"
# podman's defaults raise rlimits above the hard limits of this kind of VM (no CAP_SYS_RESOURCE),
# and there is no systemd to manage cgroups or the journal.
CONTAINERS_CONF = """\
[containers]
default_ulimits = []

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
"""


class ImageBuildError(RuntimeError):
    """An image could not be built: the message names the step, the command and its output tail."""


def images_dir() -> Path:
    path = cache_root() / "images"
    path.mkdir(parents=True, exist_ok=True)
    return path


def podman_environment() -> dict[str, str]:
    """podman with our containers.conf (written into the cache, never into /etc)."""
    conf = images_dir() / "containers.conf"
    if not conf.exists() or conf.read_text() != CONTAINERS_CONF:
        conf.write_text(CONTAINERS_CONF)
    return {**os.environ, "CONTAINERS_CONF": str(conf)}


def run_step(step: str, args: list[str], cwd: Path | None = None,
         env: dict[str, str] | None = None) -> str:
    command = ["nice", "-n", "10", *args] if shutil.which("nice") else args
    result = subprocess.run(command, cwd=cwd, env=env or podman_environment(),
                            capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-30:])
        raise ImageBuildError(f"{step}: `{' '.join(args[:6])} ...` exited {result.returncode}:\n"
                              f"{tail}")
    return result.stdout


def require_command(command: str, package: str) -> str:
    found = shutil.which(command)
    if not found:
        raise ImageBuildError(f"`{command}` is not installed: run `apt-get install {package}` "
                              "(scripts/install-system-deps does it)")
    return found


def image_exists(reference: str, env: dict[str, str] | None = None) -> bool:
    return subprocess.run(["podman", "image", "exists", reference],
                          env=env or podman_environment(), capture_output=True).returncode == 0


def debian_rootfs(suite: str, packages: tuple[str, ...], target: Path,
                  mirrors: tuple[str, ...], hooks: tuple[str, ...] = ()) -> None:
    """A minimal Debian root filesystem as a tar (mmdebstrap as root), without the docs, locales
    and apt lists an image has no use for; `hooks` are further mmdebstrap hook options."""
    run_step("mmdebstrap", [
        "mmdebstrap", "--variant=minbase", "--mode=root", f"--include={','.join(packages)}",
        *[f"--dpkgopt=path-exclude={path}" for path in BASE_DPKG_EXCLUDES],
        *hooks,
        "--customize-hook=rm -rf \"$1\"/var/lib/apt/lists/* \"$1\"/var/cache/apt/*",
        "--format=tar", suite, str(target), *mirrors,
    ])


def base_key() -> str:
    """A short hash of everything the base image is made from."""
    recipe = json.dumps([BASE_RECIPE_VERSION, BASE_SUITE, BASE_PACKAGES, BASE_MIRRORS,
                         BASE_DPKG_EXCLUDES])
    return hashlib.sha256(recipe.encode()).hexdigest()[:12]


def base_image(echo: Callable[[str], None] = print) -> str:
    """The Debian base image's reference, built with mmdebstrap and imported on first use."""
    reference = f"{BASE_REPOSITORY}:{BASE_SUITE}-{base_key()}"
    require_command("podman", "podman")
    if image_exists(reference):
        echo(f"base image {reference}: present")
        return reference
    tar = images_dir() / f"base-{BASE_SUITE}-{base_key()}.tar"
    started = time.monotonic()
    if not tar.exists():
        require_command("mmdebstrap", "mmdebstrap")
        echo(f"base image: mmdebstrap {BASE_SUITE} + {', '.join(BASE_PACKAGES)} (about 1-2 min)")
        partial = tar.with_suffix(".partial")
        partial.unlink(missing_ok=True)
        debian_rootfs(BASE_SUITE, BASE_PACKAGES, partial, BASE_MIRRORS)
        partial.rename(tar)
    run_step("podman import", ["podman", "import", "--change", 'CMD ["/bin/bash"]', str(tar),
                               reference])
    echo(f"base image {reference}: built in {time.monotonic() - started:.0f} s")
    return reference


_COPY = re.compile(r"^\s*COPY\s+(?!--from)(.+)$", re.IGNORECASE)


def dockerfile_copy_sources(dockerfile: Path = REPO_ROOT / "Dockerfile") -> list[str]:
    """The build-context paths the Dockerfile's COPY instructions read (not `COPY --from`)."""
    sources: list[str] = []
    for line in dockerfile.read_text().splitlines():
        match = _COPY.match(line)
        if not match:
            continue
        words = [w for w in match.group(1).split() if not w.startswith("--")]
        sources += words[:-1]
    return sources


def stage_context(destination: Path, root: Path = REPO_ROOT,
                  dockerfile: Path | None = None) -> Path:
    """A build context holding exactly the Dockerfile's COPY set (and the Dockerfile)."""
    dockerfile = dockerfile or root / "Dockerfile"
    destination.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for source in dockerfile_copy_sources(dockerfile):
        path = root / source
        if path.is_dir():
            shutil.copytree(path, destination / source, ignore=ignore, dirs_exist_ok=True)
        elif path.exists():
            shutil.copy2(path, destination / source)
        else:
            raise ImageBuildError(f"Dockerfile copies {source}, which is not in {root}")
    shutil.copy2(dockerfile, destination / "Dockerfile")
    return destination


def _tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


@dataclass(frozen=True)
class GatewayImage:
    """A built gateway image: its reference and a docker-archive of it for `ctr images import`."""

    reference: str
    archive: Path
    built_seconds: float


def remove_stale_tags(current: str, pattern: str = f"{GATEWAY_REPOSITORY}:dev-*") -> None:
    """Untag (and so free) the images of earlier inputs matching `pattern` (by default the
    gateway's: podman's store kept one per `make test` run, ~320 MB each, until the disk filled)."""
    listed = subprocess.run(["podman", "images", "--format", "{{.Repository}}:{{.Tag}}",
                             "--filter", f"reference={pattern}"],
                            capture_output=True, text=True, env=podman_environment())
    stale = [name for name in listed.stdout.split() if name != current]
    if stale:
        subprocess.run(["podman", "rmi", "--ignore", *stale], capture_output=True,
                       env=podman_environment())


def gateway_image(echo: Callable[[str], None] = print, root: Path = REPO_ROOT) -> GatewayImage:
    """Build the Dockerfile on the Debian base (or reuse the build of the same sources)."""
    base = base_image(echo)
    scratch = images_dir() / "context"
    shutil.rmtree(scratch, ignore_errors=True)
    stage_context(scratch, root)
    key = hashlib.sha256(f"{base}:{_tree_digest(scratch)}".encode()).hexdigest()[:12]
    reference = f"{GATEWAY_REPOSITORY}:dev-{key}"
    archive = images_dir() / f"gateway-{key}.tar"
    if archive.exists() and image_exists(reference):
        echo(f"gateway image {reference}: present")
        shutil.rmtree(scratch, ignore_errors=True)
        return GatewayImage(reference, archive, 0.0)
    started = time.monotonic()
    echo(f"gateway image {reference}: podman build on {base}")
    # The build installs the wheel's dependencies from PyPI: the host's network, no registry.
    # chroot isolation: RUN steps need no OCI runtime, so no cgroup setup (crun refuses the
    # hybrid cgroup v1/v2 hosts this runs on).
    # The host's CA bundle is mounted for the pip step only (networks that inspect TLS).
    trust = []
    if HOST_CA_BUNDLE.exists():
        trust = ["--volume", f"{HOST_CA_BUNDLE}:{BUILD_CA_BUNDLE}:ro",
                 "--build-arg", f"BUILD_CA_BUNDLE={BUILD_CA_BUNDLE}"]
    run_step("podman build", ["podman", "build", "--isolation=chroot", "--network=host",
                              "--pull=never", *trust, "--build-arg", f"BASE_IMAGE={base}",
                              "-t", reference, str(scratch)])
    partial = archive.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    run_step("podman save", ["podman", "save", "--format", "docker-archive", "-o", str(partial),
                             reference])
    partial.rename(archive)
    shutil.rmtree(scratch, ignore_errors=True)
    # One archive per source state would fill the disk (~300 MB each): keep the newest only.
    for stale in images_dir().glob("gateway-*.tar"):
        if stale != archive:
            stale.unlink(missing_ok=True)
    remove_stale_tags(reference)
    seconds = time.monotonic() - started
    echo(f"gateway image {reference}: built in {seconds:.0f} s")
    return GatewayImage(reference, archive, round(seconds, 1))


# The in-cluster ledger database's PostgreSQL for clusters that reach no registry (the local
# cluster): Debian's postgresql-17 (trixie, the same major version as the official image the
# component defaults to), with our entrypoint taking the official image's POSTGRES_* environment.
# uid/gid 999 as in the official image (the component's securityContext runs it as 999): the
# user is written before the packages install, so postgresql-common keeps it.
POSTGRES_SUITE = "trixie"
POSTGRES_MAJOR = "17"
POSTGRES_PACKAGES = (f"postgresql-{POSTGRES_MAJOR}", "ca-certificates")
POSTGRES_MIRRORS = (
    "deb http://deb.debian.org/debian trixie main",
    "deb http://deb.debian.org/debian trixie-updates main",
    "deb http://deb.debian.org/debian-security trixie-security main",
)
POSTGRES_UID = 999
POSTGRES_RECIPE_VERSION = "1"
POSTGRES_REPOSITORY = "localhost/inferplane-postgres"
POSTGRES_ENTRYPOINT = Path(__file__).with_name("postgres-entrypoint.sh")
POSTGRES_ENTRYPOINT_IN_IMAGE = "/usr/local/bin/inferplane-postgres"


@dataclass(frozen=True)
class BuiltImage:
    """An image made here: its reference and a docker-archive for `ctr images import`."""

    reference: str
    archive: Path
    built_seconds: float


def postgres_key() -> str:
    """A short hash of the PostgreSQL image's recipe, entrypoint included."""
    recipe = json.dumps([POSTGRES_RECIPE_VERSION, POSTGRES_SUITE, POSTGRES_PACKAGES,
                         POSTGRES_MIRRORS, BASE_DPKG_EXCLUDES, POSTGRES_UID,
                         POSTGRES_ENTRYPOINT.read_text()])
    return hashlib.sha256(recipe.encode()).hexdigest()[:12]


def postgres_image(echo: Callable[[str], None] = print) -> BuiltImage:
    """PostgreSQL from Debian packages (mmdebstrap -> podman import), cached as a docker-archive."""
    key = postgres_key()
    reference = f"{POSTGRES_REPOSITORY}:{POSTGRES_MAJOR}-{POSTGRES_SUITE}-{key}"
    archive = images_dir() / f"postgres-{POSTGRES_MAJOR}-{key}.tar"
    if archive.exists():
        echo(f"postgres image {reference}: present")
        return BuiltImage(reference, archive, 0.0)
    require_command("podman", "podman")
    require_command("mmdebstrap", "mmdebstrap")
    started = time.monotonic()
    echo(f"postgres image: mmdebstrap {POSTGRES_SUITE} + postgresql-{POSTGRES_MAJOR} "
         "(about 2 min)")
    rootfs = images_dir() / f"postgres-rootfs-{key}.partial"
    rootfs.unlink(missing_ok=True)
    uid = POSTGRES_UID
    debian_rootfs(POSTGRES_SUITE, POSTGRES_PACKAGES, rootfs, POSTGRES_MIRRORS, hooks=(
        # Before the packages: the postgres user at the official image's uid.
        f"--essential-hook=echo 'postgres:x:{uid}:{uid}:PostgreSQL administrator:"
        f"/var/lib/postgresql:/bin/sh' >> \"$1/etc/passwd\"; "
        f"echo 'postgres:x:{uid}:' >> \"$1/etc/group\"",
        f"--customize-hook=upload {POSTGRES_ENTRYPOINT} {POSTGRES_ENTRYPOINT_IN_IMAGE}",
        f"--customize-hook=chmod 0755 \"$1{POSTGRES_ENTRYPOINT_IN_IMAGE}\"",
        # The package's own cluster (made by its postinst) is not ours: the entrypoint makes one
        # in PGDATA. The socket directory is a volume in the pod.
        f"--customize-hook=rm -rf \"$1\"/var/lib/postgresql/{POSTGRES_MAJOR} "
        f"\"$1\"/etc/postgresql/{POSTGRES_MAJOR}",
    ))
    bin_dir = f"/usr/lib/postgresql/{POSTGRES_MAJOR}/bin"
    try:
        run_step("podman import", [
            "podman", "import",
            "--change", f"ENV PATH={bin_dir}:/usr/local/bin:/usr/bin:/bin",
            "--change", "ENV PGDATA=/var/lib/postgresql/data",
            "--change", f"USER {uid}:{uid}",
            # SIGINT is PostgreSQL's "fast" shutdown: clients are disconnected, data is flushed.
            "--change", "STOPSIGNAL SIGINT",
            "--change", f'ENTRYPOINT ["{POSTGRES_ENTRYPOINT_IN_IMAGE}"]',
            str(rootfs), reference])
        partial = archive.with_suffix(".partial")
        partial.unlink(missing_ok=True)
        run_step("podman save", ["podman", "save", "--format", "docker-archive", "-o",
                                 str(partial), reference])
        partial.rename(archive)
    finally:
        rootfs.unlink(missing_ok=True)
    for stale in images_dir().glob("postgres-*.tar"):
        if stale != archive:
            stale.unlink(missing_ok=True)
    seconds = time.monotonic() - started
    echo(f"postgres image {reference}: built in {seconds:.0f} s")
    return BuiltImage(reference, archive, round(seconds, 1))
