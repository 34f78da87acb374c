"""The tool cache's own logic: where it lives, when a build is trusted, what the wrappers say."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from inferplane.cluster import tools

pytestmark = pytest.mark.cluster


def test_cache_root_follows_inferplane_cache_then_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("INFERPLANE_CACHE", str(tmp_path / "explicit"))
    assert tools.cache_root() == tmp_path / "explicit"
    monkeypatch.delenv("INFERPLANE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert tools.cache_root() == tmp_path / "xdg" / "inferplane"
    assert tools.KUBERNETES.directory == tmp_path / "xdg" / "inferplane" / "tools" / \
        f"kubernetes-{tools.KUBERNETES.version}"


def _fake_build(tool: tools.Tool, reported_version: str, stamp_version: str) -> None:
    tool.bin_dir.mkdir(parents=True)
    for binary in tool.binaries:
        path = tool.path(binary)
        path.write_text(f"#!/bin/sh\necho 'etcd Version: {reported_version}'\n")
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    (tool.directory / tools.STAMP_FILE).write_text(json.dumps({"version": stamp_version}))


@pytest.mark.parametrize("reported, stamped, trusted", [
    (tools.ETCD.version.lstrip("v"), tools.ETCD.version, True),
    ("3.4.23", tools.ETCD.version, False),  # a binary that is not the pinned version
    (tools.ETCD.version.lstrip("v"), "v3.5.0", False),  # a stamp from another pin
])
def test_a_cached_build_is_trusted_only_at_the_pinned_version(monkeypatch, tmp_path, reported,
                                                              stamped, trusted):
    monkeypatch.setenv("INFERPLANE_CACHE", str(tmp_path))
    _fake_build(tools.ETCD, reported, stamped)
    assert tools.ETCD.is_built() is trusted
    assert (tools.ETCD in tools.missing([tools.ETCD])) is not trusted


def test_a_build_without_its_stamp_is_not_trusted(monkeypatch, tmp_path):
    monkeypatch.setenv("INFERPLANE_CACHE", str(tmp_path))
    _fake_build(tools.ETCD, tools.ETCD.version.lstrip("v"), tools.ETCD.version)
    (tools.ETCD.directory / tools.STAMP_FILE).unlink()  # an interrupted build never writes it
    assert not tools.ETCD.is_built()


def test_wrapper_module_requires_and_repeats_replaces(tmp_path):
    tools._write_wrapper(tmp_path, "inferplane.local/tools/x", {"example.com/a/v3": "v3.1.0"},
                         {"example.com/b": ("example.com/c", "v0.1.0"),
                          "example.com/a/v3": ("./copy", "")})
    text = (tmp_path / "go.mod").read_text()
    assert "\texample.com/a/v3 v3.1.0\n" in text
    assert "\texample.com/b => example.com/c v0.1.0\n" in text
    assert "\texample.com/a/v3 => ./copy\n" in text


def test_provider_embeds_carry_the_version_and_the_same_content(tmp_path):
    schema = {"name": "kubernetes", "version": "", "resources": {"kubernetes:core/v1:Pod": {}}}
    (tmp_path / "schema.json").write_text(json.dumps(schema, indent=4))
    (tmp_path / "terraform-mapping.json").write_text(json.dumps({"a": [1, 2]}, indent=4))
    tools.generate_provider_embeds(tmp_path, "4.0.0-test")
    embedded = json.loads((tmp_path / "schema-embed.json").read_text())
    assert embedded == {**schema, "version": "4.0.0-test"}
    assert "\n" not in (tmp_path / "schema-embed.json").read_text()
    assert json.loads((tmp_path / "terraform-mapping-embed.json").read_text()) == {"a": [1, 2]}


def test_staging_replaces_come_from_the_pinned_go_mod():
    go_mod = tools.cache_root() / "go" / "mod" / "cache" / "download" / "k8s.io" / "kubernetes" / \
        "@v" / f"{tools.versions.KUBERNETES_VERSION}.mod"
    if not go_mod.exists():
        pytest.skip("k8s.io/kubernetes is not in the module cache: run `inferplane cluster tools`")
    replaces = tools.kubernetes_staging_replaces(tools.versions.KUBERNETES_VERSION,
                                                 tools.versions.KUBERNETES_STAGING_VERSION)
    assert replaces["k8s.io/api"] == ("k8s.io/api", tools.versions.KUBERNETES_STAGING_VERSION)
    assert replaces["k8s.io/client-go"] == ("k8s.io/client-go",
                                            tools.versions.KUBERNETES_STAGING_VERSION)
    assert all(path.startswith("k8s.io/") for path in replaces)
    assert Path(go_mod).read_text().count("=> ./staging/") == len(replaces)
