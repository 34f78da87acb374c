"""The `pulumi` command exactly as a user runs it: Pulumi.yaml's project, the stack config in
stacks/, a local file backend and a passphrase, the Python language host on PATH.

The project is copied to a scratch directory (config changes stay out of the repo), with `.venv`
pointing at the repository's virtualenv (Pulumi.yaml's `virtualenv: .venv`).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from inferplane.cluster import pulumi_env, tools

from .conftest import REPO_ROOT


def project_copy(destination: Path) -> Path:
    """Pulumi.yaml, stacks/ and policy/ in a scratch dir, with .venv linked to the repo's."""
    destination.mkdir(parents=True)
    shutil.copy(REPO_ROOT / "Pulumi.yaml", destination / "Pulumi.yaml")
    for directory in ("stacks", "policy"):
        shutil.copytree(REPO_ROOT / directory, destination / directory,
                        ignore=shutil.ignore_patterns("__pycache__"))
    (destination / ".venv").symlink_to(REPO_ROOT / ".venv")
    return destination


class PulumiCli:
    """Runs `pulumi ...` in the project with the local engine environment."""

    def __init__(self, project: Path, engine_dir: Path, kubeconfig: Path, stack: str = "local"):
        self.project = project
        self.stack = stack
        self.env = pulumi_env.engine_environment(engine_dir)
        self.env["KUBECONFIG"] = str(kubeconfig)

    def __call__(self, *args: str, stdin: str | None = None, check: bool = True,
                 timeout: float = 900) -> subprocess.CompletedProcess:
        # Global flags first: after a `--` in args they would be read as values.
        command = [str(tools.PULUMI.path()), "--non-interactive", "--color", "never", *args]
        result = subprocess.run(command, cwd=self.project, env=self.env, input=stdin, text=True,
                                capture_output=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"`pulumi {' '.join(args)}` exited {result.returncode}:\n"
                                 f"{result.stdout[-6000:]}\n{result.stderr[-3000:]}")
        return result

    def init(self) -> None:
        self("stack", "init", self.stack)

    def set(self, key: str, value: Any, secret: bool = False) -> None:
        """`pulumi config set` (a nested key with --path); secrets go in on stdin, not argv."""
        args = ["config", "set", "--stack", self.stack]
        if "." in key:
            args.append("--path")
        if secret:
            self(*args, "--secret", f"inferplane:{key}", stdin=str(value))
        else:
            text = str(value).lower() if isinstance(value, bool) else str(value)
            self(*args, f"inferplane:{key}", "--", text)

    def up(self) -> subprocess.CompletedProcess:
        return self("up", "--stack", self.stack, "--yes", "--skip-preview")

    def preview(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self("preview", "--stack", self.stack, *args, check=check)

    def outputs(self) -> dict[str, Any]:
        return json.loads(self("stack", "output", "--stack", self.stack, "--json").stdout)

    def destroy(self) -> None:
        self("destroy", "--stack", self.stack, "--yes", check=False)
        self("stack", "rm", self.stack, "--yes", "--force", check=False)
