"""The environment that runs the real Pulumi engine against a local cluster, with no Pulumi Cloud.

State in a local file backend, a passphrase secrets provider (a test value: the local cluster's
state is throwaway), plugins from the tools cache on PATH, and no update checks or downloads.
"""

from __future__ import annotations

import os
from pathlib import Path

from inferplane.cluster import tools

# Only for the throwaway local backend; real stacks use a secret passphrase or a cloud KMS.
LOCAL_TEST_PASSPHRASE = "inferplane-local-test-only"


def tools_path() -> str:
    """The bin directories of the Pulumi CLI and the kubernetes provider."""
    return os.pathsep.join(str(tool.bin_dir) for tool in tools.PULUMI_TOOLS)


def engine_environment(state_dir: str | Path) -> dict[str, str]:
    """Variables for `pulumi` (or the Automation API) to use a file backend under `state_dir`."""
    state = Path(state_dir).resolve()
    (state / "backend").mkdir(parents=True, exist_ok=True)
    (state / "home").mkdir(parents=True, exist_ok=True)
    return {
        "PATH": os.pathsep.join([tools_path(), os.environ.get("PATH", "")]),
        "PULUMI_BACKEND_URL": f"file://{state / 'backend'}",
        "PULUMI_HOME": str(state / "home"),
        "PULUMI_CONFIG_PASSPHRASE": LOCAL_TEST_PASSPHRASE,
        "PULUMI_SKIP_UPDATE_CHECK": "true",
        # The CLI is built from a newer release than the newest Python SDK on PyPI (see versions.py).
        "PULUMI_AUTOMATION_API_SKIP_VERSION_CHECK": "true",
        "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
    }
