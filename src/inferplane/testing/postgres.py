"""A throwaway PostgreSQL server for tests, started from the machine's own binaries.

Looks for initdb/pg_ctl/postgres in PATH, then in /usr/lib/postgresql/<version>/bin (where
Debian's `postgresql` package puts them). The server lives in a temporary directory: data,
log and unix socket; it listens on a free loopback port with trust authentication for the
user `inferplane`. PostgreSQL refuses to run as root, so as root the commands run through
`runuser -u postgres` -- the system user Debian's package creates -- and the directory is
handed to that user.

Tests use the `postgres_server` (session) and `postgres_url` (a fresh database per test)
fixtures: `from inferplane.testing.postgres import postgres_server, postgres_url`. Without
binaries those tests skip locally and FAIL in CI (CI=true), naming the package to install.
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

APT_PACKAGES = ("postgresql",)  # Debian: the distribution's default major version (15 on bookworm)
SYSTEM_USER = "postgres"  # who runs the server when we are root
DATABASE_USER = "inferplane"
_BINARIES = ("initdb", "pg_ctl", "postgres")


class PostgresNotAvailable(RuntimeError):
    """No usable PostgreSQL binaries (or no unprivileged user to run them) on this machine."""


def find_postgres_bin_dir() -> Path:
    """The directory holding initdb, pg_ctl and postgres: PATH first, then the newest Debian one."""
    candidates: list[Path] = []
    found = shutil.which("pg_ctl")
    if found:
        candidates.append(Path(found).resolve().parent)  # /usr/local/bin/pg_ctl may be a symlink
        candidates.append(Path(found).parent)
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"),
                      key=lambda path: int(re.sub(r"\D", "", path.parent.name) or 0), reverse=True)
    candidates.extend(versions)
    for directory in candidates:
        if all(os.access(directory / name, os.X_OK) for name in _BINARIES):
            return directory
    raise PostgresNotAvailable(
        "no PostgreSQL server binaries (initdb, pg_ctl, postgres) in PATH or /usr/lib/postgresql/*/bin: "
        f"install them, e.g. `apt-get install -y {' '.join(APT_PACKAGES)}`")


def _free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PostgresServer:
    """One PostgreSQL server in its own temporary directory; `destroy()` stops it and removes it."""

    def __init__(self, bin_dir: Path | None = None) -> None:
        self.bin_dir = bin_dir or find_postgres_bin_dir()
        self._run_as: list[str] = []
        owner: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam(SYSTEM_USER)
            except KeyError:
                raise PostgresNotAvailable(
                    f"running as root and there is no {SYSTEM_USER!r} system user to run PostgreSQL as "
                    f"(PostgreSQL refuses root; `apt-get install -y {' '.join(APT_PACKAGES)}` creates it)"
                ) from None
            self._run_as = ["runuser", "-u", SYSTEM_USER, "--"]
        self.base_dir = Path(tempfile.mkdtemp(prefix="inferplane-pg-"))
        if owner is not None:
            os.chown(self.base_dir, owner.pw_uid, owner.pw_gid)
        self.data_dir = self.base_dir / "data"
        self.socket_dir = self.base_dir
        self.log_file = self.base_dir / "server.log"
        self.host = "127.0.0.1"
        self.port = 0
        self.running = False
        try:
            self._pg("initdb", "-D", str(self.data_dir), "-U", DATABASE_USER, "--auth=trust",
                     "--encoding=UTF8", "--no-locale", "--no-sync")
        except BaseException:
            shutil.rmtree(self.base_dir, ignore_errors=True)
            raise

    def _pg(self, program: str, *args: str) -> subprocess.CompletedProcess[str]:
        command = [*self._run_as, str(self.bin_dir / program), *args]
        result = subprocess.run(command, capture_output=True, text=True, cwd=self.base_dir, timeout=120)
        if result.returncode != 0:
            log = self.log_file.read_text(errors="replace")[-2000:] if self.log_file.exists() else ""
            raise RuntimeError(f"{shlex.join(command)} failed ({result.returncode}):\n"
                               f"{result.stdout}{result.stderr}{log}")
        return result

    def start(self) -> "PostgresServer":
        """Start on a free loopback port; a restart keeps the port, so URLs stay valid."""
        for attempt in range(3):
            if not self.port or attempt > 0:
                self.port = _free_loopback_port()
            # fsync off: a test server's own crash safety is PostgreSQL's business, not under
            # test; commits still wait for the server (synchronous_commit stays on).
            options = shlex.join(["-p", str(self.port), "-k", str(self.socket_dir),
                                  "-c", f"listen_addresses={self.host}", "-c", "fsync=off",
                                  "-c", "full_page_writes=off"])
            try:
                self._pg("pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_file), "-o", options,
                         "-w", "-t", "60", "start")
            except RuntimeError:
                if attempt == 2:
                    raise
                continue
            self.running = True
            return self
        raise AssertionError("unreachable")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (by default a clean, fast shutdown), keeping its data for `start()`."""
        if self.running:
            self._pg("pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "stop")
            self.running = False

    def destroy(self) -> None:
        """Stop the server and remove its directory (no shutdown checkpoint: the data goes)."""
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        """A libpq URL for `database` over TCP on loopback (trust auth: no password)."""
        return f"postgresql://{DATABASE_USER}@{self.host}:{self.port}/{database}"

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database and return its URL."""
        import psycopg

        name = name or f"test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def __enter__(self) -> "PostgresServer":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.destroy()


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def start_postgres_or_skip() -> PostgresServer:
    """A started server; without PostgreSQL: skip the test locally, fail it in CI."""
    try:
        return PostgresServer().start()
    except PostgresNotAvailable as missing:
        if _in_ci():
            pytest.fail(f"PostgreSQL tests cannot run in CI: {missing}", pytrace=False)
        pytest.skip(str(missing))


# Test modules import these fixtures; each import makes its own session fixture, so they share
# one server through this reference count and the last one to finish stops it.
_shared_server: PostgresServer | None = None
_shared_users = 0


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the whole test session."""
    global _shared_server, _shared_users
    if _shared_server is None:
        _shared_server = start_postgres_or_skip()
    _shared_users += 1
    try:
        yield _shared_server
    finally:
        _shared_users -= 1
        if _shared_users == 0 and _shared_server is not None:
            _shared_server.destroy()
            _shared_server = None


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """The URL of a fresh, empty database on the session's server."""
    return postgres_server.create_database()
