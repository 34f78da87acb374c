"""Benchmark: the simulator directly vs through the gateway (auth + metering + ledger on).

One run, one process tree, loopback only: the simulator and the gateway run as child processes,
this process drives them with aiohttp on uvloop at concurrency 1, 16, 64 and 256, non-streamed
and streamed, and prints requests/s, p50/p99 latency, the latency the gateway adds and its
throughput as a ratio to direct. The upstream is "fixed fast" (no simulated GPU time), so every
microsecond the gateway costs shows. Streamed requests generate 64 tokens each (ignore_eos), so
the streamed rows also give SSE chunks forwarded per second.

    .venv/bin/python bench/gateway.py            # ~2-3 minutes
    .venv/bin/python bench/gateway.py --quick    # a smaller run, for a quick look
    .venv/bin/python bench/gateway.py --litellm-bin /path/to/venv/bin/litellm   # add LiteLLM

Targets (docs/design): added p50 <= 0.5 ms (p99 < 2 ms) at concurrency 1; >= 80 % of direct
throughput at 64; >= 20,000 SSE chunks/s. Note that the client, the gateway and the simulator
share this machine's cores: a ratio measured here includes that contention.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from inferplane.cli import examples_dir
from inferplane.config import load
from inferplane.gateway.keys import KeysFile, create_key, save_keys_file
from inferplane.gateway.testing import deployment_gateway_settings, gateway_process
from inferplane.simulator import SimulatorSettings
from inferplane.simulator.testing import simulator_subprocess

CONCURRENCIES = (1, 16, 64, 256)
STREAM_TOKENS = 64
# (non-streamed, streamed) requests measured per concurrency; a warm-up precedes each.
FULL_COUNTS = {1: (1500, 150), 16: (3000, 400), 64: (4000, 600), 256: (4000, 768)}
QUICK_COUNTS = {1: (300, 40), 16: (800, 100), 64: (1000, 150), 256: (1024, 256)}
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
        import httpx

        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/health/liveliness", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        self.close()
        raise RuntimeError("LiteLLM's proxy did not start")

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()


def row(mode: str, concurrency: int, target: str, result: Result, direct: Result | None,
        cpu_us: float | None = None) -> str:
    p50, p99 = result.percentile(0.50), result.percentile(0.99)
    added = ratio = ""
    if direct is not None:
        added = f"{p50 - direct.percentile(0.5):+7.2f} {p99 - direct.percentile(0.99):+7.2f}"
        ratio = f"{result.rps / direct.rps:6.2f}"
    chunks = f"{result.chunks / result.seconds:9.0f}" if result.chunks else ""
    errors = f"  errors={result.errors}" if result.errors else ""
    cpu = f"{cpu_us:8.0f}" if cpu_us is not None else ""
    return (f"{mode:<9} {concurrency:>4} {target:<8} {result.rps:>8.0f} {p50:>8.2f} {p99:>8.2f} "
            f"{added:>15} {ratio:>6} {chunks:>9} {cpu:>8}{errors}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests per point")
    parser.add_argument("--litellm-bin", help="the `litellm` executable of a venv with "
                        "litellm[proxy], to add its proxy as a peer")
    args = parser.parse_args()
    counts = QUICK_COUNTS if args.quick else FULL_COUNTS
    resource.setrlimit(resource.RLIMIT_NOFILE, (8192, 8192))
    config = load(examples_dir() / "nemotron-ultra.yaml")
    simulator = SimulatorSettings.from_deployment(config, max_num_seqs=1024)
    with tempfile.TemporaryDirectory(prefix="inferplane-bench-") as workdir, \
            simulator_subprocess(simulator) as simulator_url:
        work = Path(workdir)
        settings = deployment_gateway_settings(work, simulator_url)
        model = settings.models[0].served_name
        keys_file = KeysFile()
        key, _ = create_key(keys_file, tenant="bench")
        save_keys_file(settings.keys_file, keys_file)
        (work / "gateway.yaml").write_text(settings.to_yaml())
        peers = {}
        litellm = None
        if args.litellm_bin:
            litellm = LiteLLM(args.litellm_bin, simulator_url, model, work)
            peers["litellm"] = (litellm.url, {"Authorization": "Bearer sk-bench"})
        try:
            with gateway_process(work / "gateway.yaml", log_level="info",
                                 stderr=subprocess.DEVNULL) as gateway:
                run(counts, simulator_url, gateway.url, key, model, peers, gateway.process.pid)
                print(f"gateway peak resident memory: {peak_rss_mib(gateway.process.pid):.0f} MiB "
                      "(after 256 concurrent streams)")
        finally:
            if litellm is not None:
                litellm.close()


def run(counts, simulator_url: str, gateway_url: str, key: str, model: str,
        peers: dict[str, tuple[str, dict[str, str]]], gateway_pid: int) -> None:
    import uvloop

    question = {"role": "user", "content": "How do I measure a proxy's overhead?"}
    direct_body = {"model": model, "messages": [{"role": "system", "content": OFF}, question]}
    gateway_body = {"model": model, "messages": [question], "reasoning_effort": "none"}
    modes = {
        "plain": ({"max_tokens": 16}, False),
        "streamed": ({"max_tokens": STREAM_TOKENS, "ignore_eos": True, "stream": True}, True),
    }
    json_header = {"Content-Type": "application/json"}
    targets = {
        "direct": (simulator_url, json_header, direct_body),
        "gateway": (gateway_url, {**json_header, "Authorization": f"Bearer {key}"},
                    gateway_body),
        **{name: (url, {**json_header, **headers}, direct_body)
           for name, (url, headers) in peers.items()},
    }
    print(f"{'mode':<9} {'conc':>4} {'target':<8} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'added p50/p99 ms':>15} {'ratio':>6} {'chunks/s':>9} {'gw CPU':>8}")
    started = time.monotonic()
    for mode, (extra, streamed) in modes.items():
        for concurrency in CONCURRENCIES:
            count = counts[concurrency][1 if streamed else 0]
            direct = None
            for target, (url, headers, body) in targets.items():
                if target == "litellm" and (streamed or concurrency > 64):
                    continue  # ~100 req/s: the large points would take minutes
                payload = json.dumps({**body, **extra}).encode()
                n = count if target != "litellm" else min(count, 300)
                cpu_before = cpu_seconds(gateway_pid)
                result = uvloop.run(drive(f"{url}/v1/chat/completions", headers, payload,
                                          streamed, concurrency, n))
                cpu_us = None
                if target == "gateway":  # per request, warm-up included in the count
                    handled = result.requests + max(concurrency, result.requests // 10)
                    cpu_us = (cpu_seconds(gateway_pid) - cpu_before) / handled * 1e6
                print(row(mode, concurrency, target, result, direct, cpu_us), flush=True)
                if target == "direct":
                    direct = result
    print(f"\n{time.monotonic() - started:.0f} s; added = gateway minus direct latency at the "
          "same percentile; ratio = req/s relative to direct; gw CPU = the gateway process's "
          "CPU microseconds per request.")


if __name__ == "__main__":
    sys.exit(main())
