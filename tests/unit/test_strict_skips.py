"""Under CI a skipped test fails (a missing prerequisite must not pass as green); only a test that
cannot run on this kind of machine may skip, and the summary says so."""


pytest_plugins = ["pytester"]

INNER = """
import pytest

def test_needs_curl():
    pytest.skip("curl is not on PATH")

@pytest.mark.skipif(True, reason="NOT RUN HERE: kind needs a Docker engine")
def test_kind():
    pass

def test_plain():
    assert True
"""


def run(pytester, monkeypatch, ci: bool):
    monkeypatch.delenv("INFERPLANE_REQUIRE_CLUSTER_TOOLS", raising=False)
    monkeypatch.setenv("CI", "true" if ci else "")
    pytester.makepyfile(INNER)
    return pytester.runpytest_subprocess("-p", "inferplane.testing.strict_skips", "-rsf")


def test_under_ci_a_skip_is_a_failure_except_what_cannot_run_here(pytester, monkeypatch):
    result = run(pytester, monkeypatch, ci=True)
    result.assert_outcomes(passed=1, failed=1, skipped=1)
    result.stdout.fnmatch_lines(["*not run here (with the reason)*",
                                 "*test_kind*NOT RUN HERE: kind needs a Docker engine*",
                                 "*FAILED*test_needs_curl*missing prerequisite must fail*"])


def test_outside_ci_skips_stay_skips(pytester, monkeypatch):
    run(pytester, monkeypatch, ci=False).assert_outcomes(passed=1, skipped=2)
