"""The machine-wide cache every slow step shares: tool builds, venvs, images, checkpoints.

Outside the repo, so a second checkout or CI in a fresh clone reuses what was built once.
(vllm_check.py keeps its own copy: it also runs as a script where inferplane is not installed.)
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """INFERPLANE_CACHE, else XDG_CACHE_HOME/inferplane (~/.cache/inferplane)."""
    explicit = os.environ.get("INFERPLANE_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "inferplane"
