"""A pytest plugin: no test skips silently under CI.

Under .ci/run (CI=true) a test that skips would hide a suite that never ran: a missing
prerequisite (PostgreSQL, a cluster tool, curl, vLLM) fails instead. The one exception is a test
that cannot run on this kind of machine at all (the check of our kind node image's pins, where
kind runs on Docker with its own image): it skips with a reason that starts with NOT_RUN, and the
summary lists it under "not run here".
"""

from __future__ import annotations

import os

import pytest

NOT_RUN = "NOT RUN HERE:"


def strict_skips() -> bool:
    """CI=true or INFERPLANE_REQUIRE_CLUSTER_TOOLS=1 (both set by .ci/run)."""
    return (os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")
            or os.environ.get("INFERPLANE_REQUIRE_CLUSTER_TOOLS") == "1")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not (report.skipped and strict_skips()) or hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if reason.removeprefix("Skipped: ").startswith(NOT_RUN):
        return
    report.outcome = "failed"
    report.longrepr = (f"skipped under CI, where a missing prerequisite must fail: {reason}")


def pytest_terminal_summary(terminalreporter):
    not_run = [report for report in terminalreporter.stats.get("skipped", [])
               if NOT_RUN in str(report.longrepr)]
    if not_run:
        terminalreporter.section("not run here (with the reason)")
        for report in not_run:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
            terminalreporter.line(f"{report.nodeid}: {reason}")
