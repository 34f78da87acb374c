"""The model-weight cache: fetch a model into a Hugging Face cache once, verify it, mark it complete.

Runs in the pre-fetch Job (`inferplane weights fetch`) that fills the model-cache PVC, and in the
vLLM pod's init container (`inferplane weights wait`) that holds vLLM back until the marker exists,
so vLLM starts with HF_HUB_OFFLINE=1 and loads from disk, never from the network.

A fetch resumes file by file: shards already in the cache are kept and only the rest is
downloaded (huggingface_hub retries a broken transfer within a run; a shard cut off by a killed
pod restarts from its beginning, so the loss is bounded by the shards in flight). Every file is
verified against the Hub's checksums (sha256 for LFS files, git blob sha1 otherwise); a file
that fails is deleted so that the next attempt fetches it again.
"""

from __future__ import annotations

import fnmatch
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

# What vLLM needs: weights, configs, tokenizer, chat template and remote code. Not the duplicate
# checkpoints some repos carry (original/*.pth, pytorch_model*.bin beside safetensors).
ALLOW_PATTERNS = ["*.safetensors", "*.json", "*.py", "*.jinja", "*.txt", "*.model", "*.tiktoken",
                  "tokenizer*"]
IGNORE_PATTERNS = ["original/*", "*.pth", "*.pt", "*.bin", "*.gguf", "*.onnx"]
MARKER_DIR = ".inferplane"


class WeightsError(RuntimeError):
    """The weights could not be fetched or did not verify; the message names the files."""


@dataclass(frozen=True)
class FetchResult:
    """What the cache holds now, written as the completion marker."""

    repo: str
    revision: str  # the resolved commit
    files: int
    bytes: int
    seconds: float


def wanted(path: str) -> bool:
    """True for repo files the cache must hold."""
    if any(fnmatch.fnmatch(path, pattern) for pattern in IGNORE_PATTERNS):
        return False
    name = path.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatch(path, p) or fnmatch.fnmatch(name, p) for p in ALLOW_PATTERNS)


def marker_path(cache_dir: str | Path, repo: str) -> Path:
    """Where the completion marker of `repo` lives in the cache."""
    return Path(cache_dir) / MARKER_DIR / f"{repo.replace('/', '--')}.complete.json"


def fetch(repo: str, cache_dir: str | Path, revision: str = "main", token: str | None = None,
          max_workers: int = 8) -> FetchResult:
    """Download `repo` at `revision` into the HF cache at `cache_dir`, verify it, write the marker."""
    from huggingface_hub import HfApi, snapshot_download

    started = time.monotonic()
    cache = Path(cache_dir)
    snapshot = Path(snapshot_download(
        repo, revision=revision, cache_dir=cache, token=token, allow_patterns=ALLOW_PATTERNS,
        ignore_patterns=IGNORE_PATTERNS, max_workers=max_workers,
    ))
    commit = snapshot.name
    verification = HfApi(token=token).verify_repo_checksums(repo, revision=commit, cache_dir=cache)
    missing = [path for path in verification.missing_paths if wanted(path)]
    if verification.mismatches or missing:
        for mismatch in verification.mismatches:  # TypedDicts: path, expected, actual, algorithm
            _discard(snapshot / mismatch["path"])
        problems = [f"{m['path']}: {m['algorithm']} {m['actual']} != expected {m['expected']}"
                    for m in verification.mismatches] + [f"{path}: missing" for path in missing]
        raise WeightsError(f"{repo}@{commit} did not verify ({len(problems)} file(s)); the bad files "
                           "were removed, run again to fetch them:\n  " + "\n  ".join(problems))
    files = [snapshot / path for path in _local_files(snapshot)]
    result = FetchResult(repo=repo, revision=commit, files=len(files),
                         bytes=sum(f.stat().st_size for f in files),
                         seconds=round(time.monotonic() - started, 3))
    marker = marker_path(cache, repo)
    marker.parent.mkdir(parents=True, exist_ok=True)
    temporary = marker.with_suffix(".tmp")
    temporary.write_text(json.dumps(asdict(result), indent=2))
    os.replace(temporary, marker)  # atomic: a waiter never reads half a marker
    return result


def wait(repo: str, cache_dir: str | Path, timeout_seconds: float, poll_seconds: float = 10.0) -> FetchResult:
    """Block until the marker of `repo` exists (the pre-fetch Job finished), or raise on timeout."""
    marker = marker_path(cache_dir, repo)
    deadline = time.monotonic() + timeout_seconds
    while True:
        if marker.exists():
            return FetchResult(**json.loads(marker.read_text()))
        if time.monotonic() >= deadline:
            raise WeightsError(f"no completion marker {marker} after {timeout_seconds:.0f} s: "
                               "is the pre-fetch Job running? (kubectl get jobs)")
        time.sleep(poll_seconds)


def _local_files(snapshot: Path) -> list[str]:
    return sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file())


def _discard(path: Path) -> None:
    """Remove a cached file and, in the HF cache layout, the blob its symlink points at."""
    target = path.resolve() if path.is_symlink() else None
    path.unlink(missing_ok=True)
    if target is not None:
        target.unlink(missing_ok=True)
