"""A stand-in for the Hugging Face Hub's HTTP API on loopback (the real Hub is out of reach here).

Implements what huggingface_hub's snapshot_download / verify_repo_checksums call: model info,
the recursive tree listing with LFS sha256 and git blob ids, and `resolve` downloads with the
Hub's headers and byte ranges.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from inferplane.testing.asgi import serving

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class FakeRepo:
    repo: str
    files: dict[str, bytes]
    lfs: set[str]  # paths stored in LFS
    corrupt: dict[str, bytes] = field(default_factory=dict)  # served instead of the real bytes
    downloads: Counter = field(default_factory=Counter)
    unavailable: set[str] = field(default_factory=set)  # GETs of these paths fail (a cut link)

    def entry(self, path: str) -> dict:
        data = self.files[path]
        item = {"type": "file", "oid": git_blob_sha1(data), "size": len(data), "path": path}
        if path in self.lfs:
            item["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
        return item


def create_app(repo: FakeRepo) -> Starlette:
    prefix = repo.repo

    async def info(request: Request) -> Response:
        return JSONResponse({"id": prefix, "modelId": prefix, "sha": COMMIT, "private": False,
                             "siblings": [{"rfilename": p} for p in sorted(repo.files)]})

    async def tree(request: Request) -> Response:
        return JSONResponse([repo.entry(p) for p in sorted(repo.files)])

    async def resolve(request: Request) -> Response:
        path = request.path_params["path"]
        if path not in repo.files:
            return Response(status_code=404, headers={"X-Error-Code": "EntryNotFound"})
        entry = repo.entry(path)
        etag = entry["lfs"]["oid"] if "lfs" in entry else entry["oid"]
        body = repo.corrupt.get(path, repo.files[path])
        headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{etag}"', "Accept-Ranges": "bytes"}
        if "lfs" in entry:
            headers["X-Linked-Etag"] = f'"{etag}"'
            headers["X-Linked-Size"] = str(len(body))
        if request.method == "HEAD":
            headers["Content-Length"] = str(len(body))
            return Response(status_code=200, headers=headers)
        if path in repo.unavailable:
            return Response(status_code=404, headers={"X-Error-Code": "EntryNotFound"})
        repo.downloads[path] += 1
        start = 0
        ranges = request.headers.get("range", "")
        if ranges.startswith("bytes="):
            start = int(ranges[6:].split("-", 1)[0] or 0)
            headers["Content-Range"] = f"bytes {start}-{len(body) - 1}/{len(body)}"
            return Response(body[start:], status_code=206, headers=headers)
        return Response(body, headers=headers)

    return Starlette(routes=[
        Route(f"/api/models/{prefix}/revision/{{rev}}", info),
        Route(f"/api/models/{prefix}", info),
        Route(f"/api/models/{prefix}/tree/{{rev}}", tree),
        Route(f"/{prefix}/resolve/{{rev}}/{{path:path}}", resolve, methods=["GET", "HEAD"]),
    ])


@contextlib.contextmanager
def running_hub(repo: FakeRepo) -> Iterator[str]:
    """Serve `repo` on a free loopback port; yields the endpoint URL."""
    with serving(create_app(repo), log_level="warning") as url:
        yield url
