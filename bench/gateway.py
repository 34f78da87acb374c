"""Benchmark: the simulator directly vs through the gateway (auth + metering + ledger on).

One run, one process tree, loopback only: the simulator, the gateway and a floor proxy run as
child processes, this process drives them with aiohttp on uvloop at concurrency 1, 16, 64 and
256, non-streamed and streamed, and prints requests/s, p50/p99 latency, the latency added and
the throughput as a ratio to direct. The upstream is "fixed fast" (no simulated GPU time), so
every microsecond the gateway costs shows. Streamed requests generate 64 tokens each
(ignore_eos), so the streamed rows also give SSE chunks forwarded per second.

Targets: {floor, gateway} rows are the proxies:
- floor: bench/floor_proxy.py, the same server and upstream client as the gateway with none of
  its work (no auth, limits, metering, ledger). Its ratio is the most any gateway on this stack
  can reach on this machine.
- gateway: the real sidecar with auth, limits, the reasoning toggle, metering and its SQLite
  ledger.

Where the processes run:
- default: everything shares the machine's cores, so the gateway's CPU is taken from the load
  generator and the simulator, and a ratio to direct includes that contention;
- --sidecar-core: the proxies are pinned to the last CPU, the load generator and the simulator
  to the others, as in a pod where the sidecar has CPU of its own next to the model server:
  the ratio then says whether the gateway keeps up with an upstream, not who wins the cores.

The load generator: aiohttp (Python) drives every point and counts SSE chunks, but it needs about
as much CPU per request as the proxy it measures, so on two cores it caps every absolute rate.
When wrk (a C load generator; `make bench` installs Debian's) is on PATH, the non-streamed points
at concurrency 1, 64 and 256 are measured again with it, direct, floor and gateway interleaved
the same way: those rows give the request rates the proxies themselves reach here (wrk reports
percentiles per round, so their p50/p99 are the median over rounds).

    .venv/bin/python bench/gateway.py                  # ~3 minutes
    .venv/bin/python bench/gateway.py --sidecar-core   # the same, proxies on a core of their own
    .venv/bin/python bench/gateway.py --quick          # a smaller run, for a quick look
    .venv/bin/python bench/gateway.py --litellm-bin /path/to/venv/bin/litellm   # add LiteLLM

Targets (issue and design notes): added p50 <= 0.5 ms (p99 < 2 ms) at concurrency 1; >= 80 % of
direct throughput at 64, and >= 5,000 requests/s there (design notes: wrk rows); >= 20,000 SSE chunks/s; <= 150 MiB resident after 256 streams.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import aiohttp

from inferplane.cli import examples_dir
from inferplane.config import load
from inferplane.gateway.keys import KeysFile, create_key, save_keys_file
from inferplane.gateway.testing import deployment_gateway_settings, gateway_process
from inferplane.simulator import SimulatorSettings
from inferplane.simulator.testing import simulator_subprocess
from inferplane.sockets import wait_until_ok

CONCURRENCIES = (1, 16, 64, 256)
STREAM_TOKENS = 64
# (non-streamed, streamed) requests measured per concurrency; a warm-up precedes each.
FULL_COUNTS = {1: (1500, 150), 16: (3000, 400), 64: (4000, 600), 256: (4000, 768)}
QUICK_COUNTS = {1: (300, 40), 16: (800, 100), 64: (1000, 150), 256: (1024, 256)}
WRK_CONCURRENCIES = (1, 64, 256)
WRK_SECONDS, WRK_QUICK_SECONDS = 5, 2  # per target and round
# wrk's script: POST the body; at the end, one JSON line (latencies in microseconds).
_WRK_SCRIPT = """wrk.method = "POST"
wrk.body = [==[{body}]==]
{headers}
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('{{"requests": %d, "micros": %d, "p50": %d, "p99": %d, "errors": %d}}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.status + e.timeout))
end
"""
OFF = "detailed thinking off"


@dataclass
class Result:
    requests: int
    seconds: float
    latencies: list[float]
    chunks: int
    errors: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000.0


async def drive(url: str, headers: dict[str, str], body: bytes, streamed: bool, concurrency: int,
                count: int) -> Result:
    """`count` measured requests from `concurrency` workers over kept-alive connections, after
    a warm-up (a tenth as many, at least one per worker) that opens the connections."""
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        latencies: list[float] = []
        chunks = errors = 0
        remaining = count + max(concurrency, count // 10)

        async def worker() -> None:
            nonlocal remaining, chunks, errors
            while remaining > 0:
                remaining -= 1
                measured = remaining < count
                started = time.perf_counter()
                async with session.post(url, data=body, headers=headers) as response:
                    data = await response.read()
                elapsed = time.perf_counter() - started
                if response.status != 200:
                    errors += 1
                if measured:
                    latencies.append(elapsed)
                    if streamed:
                        chunks += data.count(b"\n\n") - 1  # minus [DONE]

        workers = asyncio.gather(*(worker() for _ in range(concurrency)))
        while remaining > count:  # the clock starts when the warm-up requests are handed out
            await asyncio.sleep(0.001)
        started = time.perf_counter()
        await workers
        return Result(len(latencies), time.perf_counter() - started, latencies, chunks, errors)


@dataclass
class WrkResult:
    """One wrk run: wrk keeps a histogram, not the latencies, so only its percentiles."""

    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


def drive_wrk(url: str, headers: dict[str, str], body: bytes, concurrency: int, seconds: int,
              workdir: Path) -> WrkResult:
    """wrk, one thread, `concurrency` kept-alive connections, POSTing `body` for `seconds`."""
    text = body.decode()
    if "]==]" in text:
        raise ValueError("the body would end the Lua string early")
    script = workdir / "wrk.lua"
    script.write_text(_WRK_SCRIPT.format(body=text, headers="\n".join(
        f"wrk.headers[{json.dumps(name)}] = {json.dumps(value)}"
        for name, value in headers.items())))
    completed = subprocess.run(
        ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "--timeout", "30s", "-s",
         str(script), url], capture_output=True, text=True, check=True)
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    return WrkResult(report["requests"], report["micros"] / 1e6, report["p50"] / 1000.0,
                     report["p99"] / 1000.0, report["errors"])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pid: int) -> float:
    """VmHWM: the most memory the process has held resident (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pin(pid: int, cpus: set[int]) -> None:
    """Every thread of `pid` (threads started before this call keep their own mask) on `cpus`."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), cpus)


@contextmanager
def floor_proxy(upstream_url: str) -> Iterator[tuple[str, int]]:
    """bench/floor_proxy.py in front of `upstream_url`: (its URL, its pid)."""
    process = subprocess.Popen([sys.executable, str(Path(__file__).with_name("floor_proxy.py")),
                                upstream_url], stdout=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        if not line.startswith("listening on "):
            raise RuntimeError(f"the floor proxy did not start (said {line!r})")
        yield line.split()[-1], process.pid
    finally:
        process.terminate()
        process.wait(20)
        process.stdout.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiteLLM:
    """LiteLLM's proxy in front of the same simulator, as a peer (auth with a master key; it
    keeps no spend without a database, so it meters less than the gateway does)."""

    def __init__(self, binary: str, simulator_url: str, model: str, workdir: Path) -> None:
        config = workdir / "litellm.yaml"
        config.write_text(json.dumps({
            "model_list": [{"model_name": model, "litellm_params": {
                "model": f"openai/{model}", "api_base": f"{simulator_url}/v1", "api_key": "x"}}],
            "general_settings": {"master_key": "sk-bench"},
            "litellm_settings": {"drop_params": True},
        }))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [binary, "--config", str(config), "--host", "127.0.0.1", "--port", str(self.port),
             "--num_workers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={**os.environ, "LITELLM_LOG": "ERROR"})
        if not wait_until_ok(f"{self.url}/health/liveliness", 180, interval_seconds=0.5,
                             alive=lambda: self.process.poll() is None):
            self.close()
            raise RuntimeError("LiteLLM's proxy did not start")

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()


def pooled(results: list[Result]) -> Result:
    """Several rounds of one point as one result (rates over the summed time)."""
    return Result(sum(r.requests for r in results), sum(r.seconds for r in results),
                  [latency for r in results for latency in r.latencies],
                  sum(r.chunks for r in results), sum(r.errors for r in results))


def row(mode: str, concurrency: int, target: str, rounds: list[Result],
        direct_rounds: list[Result] | None, cpu_us: float | None = None) -> str:
    """One point: pooled rounds; the ratio is the median of the per-round ratios (each round
    measures direct and the proxies back to back), with their range."""
    result = pooled(rounds)
    p50, p99 = result.percentile(0.50), result.percentile(0.99)
    added = None
    if direct_rounds is not None:
        direct = pooled(direct_rounds)
        added = (p50 - direct.percentile(0.5), p99 - direct.percentile(0.99))
    return formatted(mode, concurrency, target, result.rps, p50, p99, added,
                     ratios(rounds, direct_rounds), result.chunks / result.seconds, cpu_us,
                     result.errors)


def wrk_row(concurrency: int, target: str, rounds: list[WrkResult],
            direct_rounds: list[WrkResult] | None, cpu_us: float | None) -> str:
    """A wrk point: rates pooled over the rounds, percentiles the median of the rounds'."""
    rps = sum(r.requests for r in rounds) / sum(r.seconds for r in rounds)
    p50 = statistics.median(r.p50_ms for r in rounds)
    p99 = statistics.median(r.p99_ms for r in rounds)
    added = None
    if direct_rounds is not None:
        added = (p50 - statistics.median(r.p50_ms for r in direct_rounds),
                 p99 - statistics.median(r.p99_ms for r in direct_rounds))
    return formatted("plain/wrk", concurrency, target, rps, p50, p99, added,
                     ratios(rounds, direct_rounds), 0.0, cpu_us, sum(r.errors for r in rounds))


def ratios(rounds: list, direct_rounds: list | None) -> list[float]:
    """Per round: the target's req/s relative to direct's in the same round, sorted."""
    if direct_rounds is None:
        return []
    return sorted(r.rps / d.rps for r, d in zip(rounds, direct_rounds))


def formatted(mode: str, concurrency: int, target: str, rps: float, p50: float, p99: float,
              added: tuple[float, float] | None, round_ratios: list[float],
              chunks_per_second: float, cpu_us: float | None, errors: int) -> str:
    added_text = f"{added[0]:+7.2f} {added[1]:+7.2f}" if added is not None else ""
    ratio = f"{statistics.median(round_ratios):6.2f}" if round_ratios else ""
    spread = (f"{round_ratios[0]:.2f}-{round_ratios[-1]:.2f}" if len(round_ratios) > 1
              else "")
    chunks = f"{chunks_per_second:9.0f}" if chunks_per_second else ""
    cpu = f"{cpu_us:8.0f}" if cpu_us is not None else ""
    error_text = f"  errors={errors}" if errors else ""
    return (f"{mode:<9} {concurrency:>4} {target:<8} {rps:>8.0f} {p50:>8.2f} {p99:>8.2f} "
            f"{added_text:>15} {ratio:>6} {spread:>9} {chunks:>9} {cpu:>8}{error_text}")

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests per point")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per point, each measuring "
                        "direct and every proxy back to back (default 3)")
    parser.add_argument("--litellm-bin", help="the `litellm` executable of a venv with "
                        "litellm[proxy], to add its proxy as a peer")
    parser.add_argument("--sidecar-core", action="store_true",
                        help="pin the proxies to the last CPU and the load generator and the "
                        "simulator to the others")
    args = parser.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    if args.sidecar_core and len(cpus) < 2:
        parser.error("--sidecar-core needs at least two CPUs")
    counts = QUICK_COUNTS if args.quick else FULL_COUNTS
    resource.setrlimit(resource.RLIMIT_NOFILE, (8192, 8192))
    config = load(examples_dir() / "nemotron-ultra.yaml")
    simulator = SimulatorSettings.from_deployment(config, max_num_seqs=1024)
    simulator_pids: list[int] = []
    with tempfile.TemporaryDirectory(prefix="inferplane-bench-") as workdir, \
            simulator_subprocess(simulator, on_start=lambda p: simulator_pids.append(p.pid)) \
            as simulator_url, floor_proxy(simulator_url) as (floor_url, floor_pid):
        work = Path(workdir)
        settings = deployment_gateway_settings(work, simulator_url)
        model = settings.models[0].served_name
        keys_file = KeysFile()
        key, _ = create_key(keys_file, tenant="bench")
        save_keys_file(settings.keys_file, keys_file)
        (work / "gateway.yaml").write_text(settings.to_yaml())
        peers = {"floor": (floor_url, {}, floor_pid)}
        litellm = None
        if args.litellm_bin:
            litellm = LiteLLM(args.litellm_bin, simulator_url, model, work)
            peers["litellm"] = (litellm.url, {"Authorization": "Bearer sk-bench"},
                                litellm.process.pid)
        try:
            with gateway_process(work / "gateway.yaml", log_level="info",
                                 stderr=subprocess.DEVNULL) as gateway:
                if args.sidecar_core:
                    proxies, others = {cpus[-1]}, set(cpus[:-1])
                    for pid in (gateway.process.pid, *(pid for *_, pid in peers.values())):
                        pin(pid, proxies)
                    for pid in (os.getpid(), *simulator_pids):
                        pin(pid, others)
                    print(f"proxies on CPU {cpus[-1]}; load generator and simulator on CPU "
                          f"{', '.join(map(str, sorted(others)))}")
                else:
                    print(f"all processes share CPUs {', '.join(map(str, cpus))}")
                run(counts, args.rounds, simulator_url, gateway.url, key, model, peers,
                    gateway.process.pid)
                if shutil.which("wrk"):
                    run_wrk(WRK_QUICK_SECONDS if args.quick else WRK_SECONDS, args.rounds,
                            simulator_url, gateway.url, key, model, peers, gateway.process.pid,
                            work)
                else:
                    print("\nwrk is not installed, so no rows measured with a C load generator "
                          "(`make bench` installs it; or: apt-get install wrk)")
                print(f"gateway peak resident memory: {peak_rss_mib(gateway.process.pid):.0f} MiB "
                      "(after 256 concurrent streams)")
        finally:
            if litellm is not None:
                litellm.close()


def request_bodies(model: str) -> tuple[dict, dict]:
    """(direct, gateway): the same request; the gateway's asks for reasoning off by parameter."""
    question = {"role": "user", "content": "How do I measure a proxy's overhead?"}
    return ({"model": model, "messages": [{"role": "system", "content": OFF}, question]},
            {"model": model, "messages": [question], "reasoning_effort": "none"})


def run(counts, rounds: int, simulator_url: str, gateway_url: str, key: str, model: str,
        peers: dict[str, tuple[str, dict[str, str], int]], gateway_pid: int) -> None:
    import uvloop

    direct_body, gateway_body = request_bodies(model)
    modes = {
        "plain": ({"max_tokens": 16}, False),
        "streamed": ({"max_tokens": STREAM_TOKENS, "ignore_eos": True, "stream": True}, True),
    }
    json_header = {"Content-Type": "application/json"}
    pids = {"gateway": gateway_pid, **{name: pid for name, (*_, pid) in peers.items()}}
    targets = {
        "direct": (simulator_url, json_header, direct_body),
        "floor": (peers["floor"][0], json_header, direct_body),
        "gateway": (gateway_url, {**json_header, "Authorization": f"Bearer {key}"},
                    gateway_body),
        **{name: (url, {**json_header, **headers}, direct_body)
           for name, (url, headers, _) in peers.items() if name != "floor"},
    }
    print(f"{'mode':<9} {'conc':>4} {'target':<8} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'added p50/p99 ms':>15} {'ratio':>6} {'range':>9} {'chunks/s':>9} {'CPU us':>8}")
    started = time.monotonic()
    for mode, (extra, streamed) in modes.items():
        for concurrency in CONCURRENCIES:
            count = counts[concurrency][1 if streamed else 0]
            measured: dict[str, list[Result]] = {}
            cpu: dict[str, float] = {}
            for _ in range(rounds):
                for target, (url, headers, body) in targets.items():
                    if target == "litellm" and (streamed or concurrency > 64):
                        continue  # ~100 req/s: the large points would take minutes
                    payload = json.dumps({**body, **extra}).encode()
                    n = count if target != "litellm" else min(count, 300)
                    pid = pids.get(target)
                    cpu_before = cpu_seconds(pid) if pid else 0.0
                    result = uvloop.run(drive(f"{url}/v1/chat/completions", headers, payload,
                                              streamed, concurrency, n))
                    measured.setdefault(target, []).append(result)
                    if pid:  # the proxy's CPU per request, warm-up included in the count
                        handled = result.requests + max(concurrency, result.requests // 10)
                        cpu[target] = cpu.get(target, 0.0) + \
                            (cpu_seconds(pid) - cpu_before) / handled * 1e6 / rounds
            for target, results in measured.items():
                direct = measured["direct"] if target != "direct" else None
                print(row(mode, concurrency, target, results, direct, cpu.get(target)),
                      flush=True)
    print(f"\n{time.monotonic() - started:.0f} s; added = gateway minus direct latency at the "
          "same percentile, all rounds pooled; ratio = req/s relative to direct, the median of "
          f"{rounds} rounds (range: lowest-highest); CPU us = the proxy process's CPU "
          "microseconds per request (all its threads).")


def run_wrk(seconds: int, rounds: int, simulator_url: str, gateway_url: str, key: str,
            model: str, peers: dict[str, tuple[str, dict[str, str], int]], gateway_pid: int,
            workdir: Path) -> None:
    """The non-streamed points again, driven by wrk: direct, floor and gateway per round."""
    direct_body, gateway_body = request_bodies(model)
    extra = {"max_tokens": 16}
    json_header = {"Content-Type": "application/json"}
    targets = {
        "direct": (simulator_url, json_header, direct_body, None),
        "floor": (peers["floor"][0], json_header, direct_body, peers["floor"][2]),
        "gateway": (gateway_url, {**json_header, "Authorization": f"Bearer {key}"},
                    gateway_body, gateway_pid),
    }
    print(f"\nplain, driven by wrk (one C thread; {seconds} s per target and round):")
    started = time.monotonic()
    for concurrency in WRK_CONCURRENCIES:
        measured: dict[str, list[WrkResult]] = {}
        cpu: dict[str, float] = {}
        for _ in range(rounds):
            for target, (url, headers, body, pid) in targets.items():
                payload = json.dumps({**body, **extra}).encode()
                cpu_before = cpu_seconds(pid) if pid else 0.0
                result = drive_wrk(f"{url}/v1/chat/completions", headers, payload, concurrency,
                                   seconds, workdir)
                measured.setdefault(target, []).append(result)
                if pid and result.requests:
                    cpu[target] = cpu.get(target, 0.0) + \
                        (cpu_seconds(pid) - cpu_before) / result.requests * 1e6 / rounds
        for target, results in measured.items():
            direct = measured["direct"] if target != "direct" else None
            print(wrk_row(concurrency, target, results, direct, cpu.get(target)), flush=True)
    print(f"\n{time.monotonic() - started:.0f} s; wrk rows: req/s pooled over the rounds, "
          "p50/p99 the median of the rounds' (wrk's histogram), added and ratio as above.")


if __name__ == "__main__":
    sys.exit(main())
