"""The weight cache against a Hub stand-in: fetch, verify, resume, refuse corrupt files, wait."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from .fake_hub import COMMIT, FakeRepo, running_hub

REPO_ID = "nvidia/Tiny-Test-Model"


def make_repo() -> FakeRepo:
    shard = bytes(range(256)) * 4096  # 1 MiB
    return FakeRepo(
        repo=REPO_ID,
        files={
            "config.json": b'{"architectures": ["DeciLMForCausalLM"]}',
            "tokenizer.json": b'{"version": "1.0"}',
            "model-00001-of-00002.safetensors": shard,
            "model-00002-of-00002.safetensors": shard[::-1],
            "original/consolidated.00.pth": b"x" * 1000,  # not wanted: vLLM reads safetensors
            "README.md": b"# card\n",
        },
        lfs={"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
             "original/consolidated.00.pth"},
    )


def run_cli(*args: str, endpoint: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_ENDPOINT=endpoint, HF_HUB_DISABLE_TELEMETRY="1",
               HF_HUB_DISABLE_PROGRESS_BARS="1", HF_HUB_ENABLE_HF_TRANSFER="0")
    env.pop("HF_TOKEN", None)
    inferplane = str(Path(sys.executable).with_name("inferplane"))
    return subprocess.run([inferplane, "weights", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_fetch_verifies_marks_complete_and_skips_unwanted_files(tmp_path):
    repo = make_repo()
    with running_hub(repo) as endpoint:
        result = run_cli("fetch", "--repo", REPO_ID, "--cache-dir", str(tmp_path), endpoint=endpoint)
        assert result.returncode == 0, result.stderr
        marker = json.loads((tmp_path / ".inferplane" / "nvidia--Tiny-Test-Model.complete.json").read_text())
        assert marker["revision"] == COMMIT and marker["files"] == 4
        assert marker["bytes"] == sum(len(repo.files[p]) for p in repo.files
                                      if not p.startswith("original/") and p != "README.md")
        snapshot = tmp_path / f"models--nvidia--Tiny-Test-Model/snapshots/{COMMIT}"
        assert (snapshot / "model-00002-of-00002.safetensors").read_bytes() == repo.files["model-00002-of-00002.safetensors"]
        assert not (snapshot / "original").exists()
        assert repo.downloads["original/consolidated.00.pth"] == 0
        # a second run finds everything cached and verified: no file is downloaded again
        before = sum(repo.downloads.values())
        again = run_cli("fetch", "--repo", REPO_ID, "--cache-dir", str(tmp_path), endpoint=endpoint)
        assert again.returncode == 0, again.stderr
        assert sum(repo.downloads.values()) == before


def test_a_corrupt_file_fails_the_fetch_is_removed_and_refetched(tmp_path):
    repo = make_repo()
    shard = "model-00001-of-00002.safetensors"
    repo.corrupt[shard] = b"\0" * len(repo.files[shard])
    with running_hub(repo) as endpoint:
        bad = run_cli("fetch", "--repo", REPO_ID, "--cache-dir", str(tmp_path), endpoint=endpoint)
        assert bad.returncode == 1
        assert shard in bad.stderr and "sha256" in bad.stderr
        assert not (tmp_path / ".inferplane").exists() or not list((tmp_path / ".inferplane").glob("*.json"))
        repo.corrupt.clear()  # the mirror heals; the next attempt fetches only the bad file
        good = run_cli("fetch", "--repo", REPO_ID, "--cache-dir", str(tmp_path), endpoint=endpoint)
        assert good.returncode == 0, good.stderr
        assert repo.downloads[shard] == 2 and repo.downloads["model-00002-of-00002.safetensors"] == 1


def test_an_interrupted_fetch_keeps_the_files_it_completed(tmp_path):
    repo = make_repo()
    first, second = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
    repo.unavailable.add(second)
    with running_hub(repo) as endpoint:
        cut = run_cli("fetch", "--repo", REPO_ID, "--cache-dir", str(tmp_path), "--max-workers", "1",
                      endpoint=endpoint)
        assert cut.returncode != 0
        assert repo.downloads[first] == 1 and repo.downloads[second] == 0
        repo.unavailable.clear()
        resumed = run_cli("fetch", "--repo", REPO_ID, "--cache-dir", str(tmp_path), endpoint=endpoint)
        assert resumed.returncode == 0, resumed.stderr
        # the shard finished before the cut is not fetched again
        assert repo.downloads[first] == 1 and repo.downloads[second] == 1


def test_wait_returns_when_the_marker_appears_and_times_out_clearly(tmp_path):
    from inferplane.weights import marker_path, wait, WeightsError

    with pytest.raises(WeightsError, match="pre-fetch Job"):
        wait(REPO_ID, tmp_path, timeout_seconds=0.2, poll_seconds=0.05)

    def finish_later():
        time.sleep(0.3)
        marker = marker_path(tmp_path, REPO_ID)
        marker.parent.mkdir(parents=True, exist_ok=True)
        # Written whole, then renamed, as fetch() does: a poll never sees half a marker.
        partial = marker.with_suffix(".tmp")
        partial.write_text(json.dumps({"repo": REPO_ID, "revision": COMMIT, "files": 4, "bytes": 1,
                                       "seconds": 1.0}))
        partial.replace(marker)

    threading.Thread(target=finish_later).start()
    assert wait(REPO_ID, tmp_path, timeout_seconds=30, poll_seconds=0.05).revision == COMMIT
