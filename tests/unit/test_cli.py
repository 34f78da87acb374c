"""The `inferplane` command as users run it: a real process, real files, real exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from ..conftest import EXAMPLE, REPO

INFERPLANE = [str(Path(sys.executable).with_name("inferplane"))]


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(INFERPLANE + list(args), capture_output=True, text=True, cwd=cwd, timeout=120)


def test_render_to_stdout_matches_the_golden_file():
    result = run("render", "-f", str(EXAMPLE), "-o", "-")
    assert result.returncode == 0, result.stderr
    assert result.stdout == (REPO / "tests" / "golden" / "nemotron-ultra.yaml").read_text()


def test_render_to_a_directory_twice_is_byte_identical(tmp_path):
    for out in ("one", "two"):
        result = run("render", "-f", str(EXAMPLE), "-o", str(tmp_path / out))
        assert result.returncode == 0, result.stderr
        assert "TP=8" in result.stderr
    one = {p.name: p.read_bytes() for p in (tmp_path / "one").iterdir()}
    two = {p.name: p.read_bytes() for p in (tmp_path / "two").iterdir()}
    assert one == two and "kustomization.yaml" in one


def test_a_config_that_cannot_fit_exits_non_zero_with_the_numbers(tmp_path):
    config = tmp_path / "tp4.yaml"
    config.write_text(yaml.safe_dump({"cloud": "gke", "region": "europe-west4",
                                      "accelerator": {"tensor_parallel_size": 4}}))
    result = run("render", "-f", str(config), "-o", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "accelerator.tensor_parallel_size" in result.stderr
    assert "506.8 GB" in result.stderr and "4 x 85.5 GB" in result.stderr
    assert not (tmp_path / "out").exists()


def test_plan_json_has_the_sizing_numbers():
    result = run("plan", "-f", str(EXAMPLE), "-o", "json")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["tensor_parallel_size"] == 8
    assert plan["weights_bytes"] == 506_800_000_000
    assert plan["max_full_context_sequences"] == 2
    assert plan["nodes"] == 1


def test_plan_table_and_check_speak_to_humans():
    table = run("plan", "-f", str(EXAMPLE))
    assert table.returncode == 0
    assert "KV-cache budget" in table.stdout and "full-context sequences  2" in table.stdout
    check = run("check", "-f", str(EXAMPLE))
    assert check.returncode == 0 and "8 x H100-80G in gke/europe-west4" in check.stdout
    bad = run("plan", "-f", str(EXAMPLE), "-o", "xml")
    assert bad.returncode == 2 and "table or json" in bad.stderr


def test_help_shows_an_example():
    result = run("render", "--help")
    assert result.returncode == 0 and "Example:" in result.stdout


def _all_command_paths(group, prefix=()):
    for name, command in group.commands.items():
        yield prefix + (name,)
        if hasattr(command, "commands"):
            yield from _all_command_paths(command, prefix + (name,))


def _command_at(root, path):
    for name in path:
        root = root.commands[name]
    return root


def test_every_help_is_readable_at_80_columns():
    # Rich's boxes cut option names ("--inter-token-seco…") and click cut summaries mid-phrase.
    import typer.main
    from typer.testing import CliRunner

    from inferplane.cli import app

    root = typer.main.get_command(app)
    paths = [()] + list(_all_command_paths(root))
    assert len(paths) > 20
    for path in paths:
        result = CliRunner().invoke(app, [*path, "--help"], terminal_width=80)
        assert result.exit_code == 0, (path, result.output)
        shown = " ".join(("inferplane",) + path)
        for line in result.stdout.splitlines():
            assert len(line) <= 80, f"`{shown} --help` has a line of {len(line)} columns: {line!r}"
            cut = "…" in line or (line.rstrip().endswith("...") and "[ARGS]..." not in line)
            assert not cut, f"`{shown} --help` cuts: {line!r}"
        assert "<bool>" not in result.stdout
        if path and not hasattr(_command_at(root, path), "commands"):
            assert "Example:" in result.stdout, f"`{shown} --help` shows no example"


def test_a_command_whose_extra_is_missing_names_the_extra(monkeypatch, capsys):
    # `make dev` installs the data plane only: the Pulumi and cloud SDKs come with their extras.
    import pytest

    from inferplane import cli

    def needs_gcp():
        raise ModuleNotFoundError("No module named 'pulumi_gcp'", name="pulumi_gcp")

    monkeypatch.setattr(cli, "app", needs_gcp)
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    assert exit_.value.code == 2
    assert "needs the 'gcp' extra" in capsys.readouterr().err

    def broken():
        raise ModuleNotFoundError("No module named 'nonexistent'", name="nonexistent")

    monkeypatch.setattr(cli, "app", broken)
    with pytest.raises(ModuleNotFoundError):  # not an extra: a real bug, raised as it is
        cli.main()


def test_the_base_install_is_the_data_plane_only():
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    base = " ".join(project["dependencies"]).lower()
    assert "pulumi" not in base and "psycopg" not in base and "kubernetes" not in base
    assert project["scripts"]["inferplane"] == "inferplane.cli:main"
    makefile = (REPO / "Makefile").read_text()
    assert '$(BIN)/pip install --progress-bar on -e .\n' in makefile  # make dev: no extras


def test_check_and_render_refuse_a_cloud_ledger_that_dies_with_the_pod(tmp_path):
    config = tmp_path / "pod-local.yaml"
    config.write_text(EXAMPLE.read_text() + "ledger:\n  central: false\n")
    for command in (["check", "-f", str(config)],
                    ["render", "-f", str(config), "-o", str(tmp_path / "out")]):
        result = run(*command)
        assert result.returncode == 2, result.stdout
        assert "ledger.central" in result.stderr and "pod_local" in result.stderr
    assert not (tmp_path / "out").exists()
