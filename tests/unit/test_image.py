"""The Dockerfile's COPY set is enough to build the wheel (hatchling's force-include paths included).

The build runs pip on a directory holding exactly what the Dockerfile copies, so a path added to
pyproject's force-include but not to the Dockerfile fails here, not in an image build on a cloud.
The image itself is built and run on the local cluster's real node (tests/cluster/test_real_node.py).
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from inferplane.cluster import images

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_copy_set_names_every_path_pyproject_force_includes():
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    wheel = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]
    needed = {"pyproject.toml", *wheel["force-include"], *(Path(p).parts[0] for p in wheel["packages"])}
    assert needed <= set(images.dockerfile_copy_sources(REPO_ROOT / "Dockerfile"))


def test_copy_sources_ignore_copy_from_and_flags(tmp_path):
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("FROM x AS a\nCOPY --chown=1:1 a b ./\ncopy src ./src\n"
                          "COPY --from=a /opt /opt\n")
    assert images.dockerfile_copy_sources(dockerfile) == ["a", "b", "src"]


def test_base_image_is_a_build_argument():
    text = (REPO_ROOT / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE=" in text and "FROM ${BASE_IMAGE}" in text


def test_wheel_builds_from_exactly_the_dockerfile_copy_set(tmp_path):
    context = images.stage_context(tmp_path / "context", REPO_ROOT)
    out = tmp_path / "wheels"
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                             "-w", str(out), str(context)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = out.glob("inferplane-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for packed in ("inferplane/_templates/deployment.yaml.j2",
                   "inferplane/_examples/nemotron-ultra.yaml", "inferplane/cli.py"):
        assert packed in names
    assert any(name.startswith("inferplane/_charts/") for name in names)


def test_a_copy_set_without_charts_fails_to_build(tmp_path):
    """The regression this guards against: hatchling's "Forced include not found"."""
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("\n".join(line for line in (REPO_ROOT / "Dockerfile").read_text()
                                    .splitlines() if "charts" not in line))
    context = images.stage_context(tmp_path / "context", REPO_ROOT, dockerfile)
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                             "-w", str(tmp_path / "wheels"), str(context)],
                            capture_output=True, text=True)
    assert result.returncode != 0
    assert "Forced include not found" in result.stdout + result.stderr
