"""The cluster tools build only with a Go new enough for the pinned sources; an older one is named."""

import os
import stat

import pytest

from inferplane.cluster import tools


def fake_go(directory, version: str):
    directory.mkdir(parents=True, exist_ok=True)
    go = directory / "go"
    go.write_text(f"#!/bin/sh\n[ \"$1 $2\" = 'env GOVERSION' ] && echo go{version}\n")
    go.chmod(go.stat().st_mode | stat.S_IEXEC)
    return go


@pytest.fixture
def no_system_go(monkeypatch, tmp_path):
    monkeypatch.setenv("INFERPLANE_CACHE", str(tmp_path / "cache"))
    real_access = os.access
    monkeypatch.setattr(tools.os, "access",
                        lambda path, mode: False if str(path).startswith("/usr/local/go/") else real_access(path, mode))
    return tmp_path


def test_an_old_go_on_path_is_named_and_not_used(no_system_go, monkeypatch):
    old = fake_go(no_system_go / "debian", "1.19.8")
    monkeypatch.setenv("PATH", f"{old.parent}:/usr/bin:/bin")
    with pytest.raises(tools.ToolBuildError) as error:
        tools._go()
    assert f"{old} (go1.19)" in str(error.value)
    assert "scripts/install-system-deps" in str(error.value)


def test_the_pinned_toolchain_in_the_cache_is_used_when_path_has_an_old_go(no_system_go, monkeypatch):
    old = fake_go(no_system_go / "debian", "1.19.8")
    pinned = fake_go(no_system_go / "cache" / "go-toolchain" / "go1.26.8" / "bin", "1.26.8")
    monkeypatch.setenv("PATH", f"{old.parent}:/usr/bin:/bin")
    assert tools._go() == str(pinned)


def test_the_install_script_pins_the_go_release_and_its_checksum():
    script = (tools.Path(__file__).resolve().parents[2] / "scripts" / "install-system-deps").read_text()
    assert "missing+=(golang-go)" not in script  # Debian's is 1.19 on bookworm: too old
    assert "GO_VERSION=1.26." in script and "sha256sum -c" in script
