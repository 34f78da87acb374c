"""How the local cluster tells its own processes from dead or recycled pids (real processes)."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from inferplane.cluster.local import _process_alive

SLEEP = shutil.which("sleep")


@pytest.fixture
def spawn():
    started: list[subprocess.Popen] = []

    def start(*argv: str) -> subprocess.Popen:
        process = subprocess.Popen(list(argv), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, start_new_session=True)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()
        process.wait()


def test_a_process_is_alive_the_moment_popen_returns(spawn):
    # Read right after Popen, /proc/<pid>/cmdline was empty for about 1 spawn in 10 here: the
    # kube-proxy that "exited during start-up" with an empty log in CI was this race.
    for _ in range(200):
        process = spawn(SLEEP, "30")
        assert _process_alive(process.pid, SLEEP), "a process that is running was taken for dead"
        process.kill()
        process.wait()


def test_a_pid_running_another_binary_is_not_ours(spawn):
    process = spawn(SLEEP, "30")
    assert not _process_alive(process.pid, "/opt/inferplane/bin/kube-proxy")


def test_an_exited_process_is_not_alive_and_is_reaped(spawn):
    process = spawn(SLEEP, "0")
    stat = Path(f"/proc/{process.pid}/stat")
    while stat.read_text().rsplit(")", 1)[1].split()[0] != "Z":
        time.sleep(0.01)
    assert not _process_alive(process.pid, SLEEP)
    assert not stat.exists(), "the zombie was left for someone else to reap"


def test_a_kernel_thread_with_its_empty_command_line_is_not_ours():
    # pid 2 is kthreadd: its command line stays empty, so the wait for exec must end, with False.
    assert Path("/proc/2/cmdline").read_bytes() == b""
    assert not _process_alive(2, SLEEP)
