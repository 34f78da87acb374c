"""Spool and ship: each gateway commits usage to its own SQLite spool and ships it to one real
PostgreSQL central ledger; no record is lost or counted twice across SIGKILL, restarts and a
database outage, and the totals reconcile with the simulator's own token counters."""

from __future__ import annotations

import itertools
import json
import socket
import threading
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from inferplane.gateway.keys import KeysFile, create_key, save_keys_file
from inferplane.ledger import open_ledger
from inferplane.ledger.sqlite import SQLiteLedger
from inferplane.gateway.testing import (
    GatewayProcess,
    deployment_gateway_settings,
    running_data_plane,
)
from inferplane.simulator import running_simulator
from inferplane.testing.postgres import postgres_server, postgres_url, start_postgres_or_skip  # noqa: F401

# Fast shipping and retries, so that the tests wait on events rather than on the defaults.
FAST_SHIPPING = dict(ship_interval_seconds=0.05, ship_retry_max_seconds=0.3, ship_drain_seconds=30)
WAIT_SECONDS = 60  # bound of every "until" wait; none of them is a timing assertion


def metric(url: str, name: str) -> float:
    """One unlabelled sample of the gateway's /metrics (0 when absent)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    return 0.0


def wait_until(condition, what: str, seconds: float = WAIT_SECONDS) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what} after {seconds} s")
        time.sleep(0.05)


def central_records(url: str) -> list:
    with open_ledger(url, create=False) as ledger:
        return ledger.records()


def unused_loopback_url() -> str:
    """A PostgreSQL URL where nothing listens (connection refused at once)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"postgresql://inferplane@127.0.0.1:{port}/nothing"


def chat(url: str, key: str, request_id: str, streamed: bool = False) -> httpx.Response:
    body = {"model": "nvidia/Llama-3_1-Nemotron-Ultra-253B-v1",
            "messages": [{"role": "user", "content": "Count to ten."}], "max_tokens": 6,
            "stream": streamed}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30,
                      headers={"Authorization": f"Bearer {key}", "X-Request-Id": request_id})


# --- one gateway in this process -----------------------------------------------------------

def test_records_reach_the_central_ledger_and_leave_the_spool(tmp_path, postgres_url):
    with running_data_plane(tmp_path, central_ledger_url=postgres_url, **FAST_SHIPPING) as plane:
        key, entry = plane.add_key(tenant="acme")
        ids = [chat(plane.url, key, f"c-{n}", streamed=n % 2 == 0).headers["x-request-id"]
               for n in range(10)]
        wait_until(lambda: len(central_records(postgres_url)) == 10, "10 records in the central ledger")
        wait_until(lambda: metric(plane.url, "inferplane_gateway_spool_records") == 0, "an empty spool")
        assert metric(plane.url, "inferplane_gateway_ledger_shipped_records_total") == 10
        spooled = {record.request_id: record for record in plane.records()}
    central = {record.request_id: record for record in central_records(postgres_url)}
    assert sorted(central) == sorted(ids)
    assert central == spooled  # the same records, field for field (cost exact)
    assert {record.key_id for record in central.values()} == {entry.id}


def test_gateway_serves_while_the_central_ledger_is_unreachable(tmp_path):
    with running_data_plane(tmp_path, central_ledger_url=unused_loopback_url(),
                            **{**FAST_SHIPPING, "ship_drain_seconds": 0}) as plane:
        key, _ = plane.add_key()
        for n in range(3):
            assert chat(plane.url, key, f"d-{n}").status_code == 200
        wait_until(lambda: metric(plane.url, "inferplane_gateway_ledger_ship_failures_total") >= 1,
                   "a failed ship attempt")
        assert metric(plane.url, "inferplane_gateway_spool_records") == 3
        assert metric(plane.url, "inferplane_gateway_spool_oldest_unshipped_age_seconds") > 0
        assert httpx.get(f"{plane.url}/readyz").status_code == 200  # below the bound: ready
    # Nothing shipped, nothing lost: the three records wait in the spool for the next start.
    with SQLiteLedger(tmp_path / "ledger.db") as spool:
        assert spool.spool_state()[0] == 3


def test_at_the_spool_bound_new_requests_are_refused_not_unmetered(tmp_path):
    with running_data_plane(tmp_path, central_ledger_url=unused_loopback_url(),
                            spool_max_records=2, **{**FAST_SHIPPING, "ship_drain_seconds": 0}) as plane:
        key, _ = plane.add_key()
        assert chat(plane.url, key, "e-1").status_code == 200
        assert chat(plane.url, key, "e-2").status_code == 200
        refused = chat(plane.url, key, "e-3")
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "metering_unavailable"
        assert refused.headers["retry-after"] == "5"
        ready = httpx.get(f"{plane.url}/readyz")
        assert ready.status_code == 503 and "usage spool full" in ready.text
        assert metric(plane.url, "inferplane_gateway_spool_max_records") == 2
        # The refusal is itself metered (zero tokens), like every answered authenticated request.
        statuses = sorted(record.status for record in plane.records())
    assert statuses == [200, 200, 503]


def test_shutdown_drains_the_spool(tmp_path, postgres_url):
    # The shipper looks once at start-up and then not for an hour: only the drain can ship.
    with running_data_plane(tmp_path, central_ledger_url=postgres_url, ship_interval_seconds=3600,
                            ship_drain_seconds=30) as plane:
        key, _ = plane.add_key()
        ids = [chat(plane.url, key, f"s-{n}").headers["x-request-id"] for n in range(5)]
        assert central_records(postgres_url) == []
    assert sorted(record.request_id for record in central_records(postgres_url)) == sorted(ids)
    with SQLiteLedger(tmp_path / "ledger.db") as spool:
        assert spool.spool_state()[0] == 0


def test_a_restarted_gateway_ships_what_its_predecessor_spooled(tmp_path, postgres_url):
    with running_data_plane(tmp_path, central_ledger_url=unused_loopback_url(),
                            **{**FAST_SHIPPING, "ship_drain_seconds": 0}) as plane:
        key, _ = plane.add_key()
        ids = [chat(plane.url, key, f"r-{n}").headers["x-request-id"] for n in range(4)]
    # Same spool volume, and now the central ledger is there.
    with running_data_plane(tmp_path, central_ledger_url=postgres_url, **FAST_SHIPPING):
        wait_until(lambda: len(central_records(postgres_url)) == 4, "the predecessor's records")
    assert sorted(record.request_id for record in central_records(postgres_url)) == sorted(ids)


def test_a_record_the_central_ledger_refuses_stays_spooled_and_does_not_block(tmp_path, postgres_url):
    import psycopg

    with running_data_plane(tmp_path, central_ledger_url=postgres_url, ship_interval_seconds=3600,
                            ship_drain_seconds=30) as plane:
        key, _ = plane.add_key()
        good = chat(plane.url, key, "good").headers["x-request-id"]
        # A central constraint this one record breaks (as a stricter future schema might).
        with psycopg.connect(postgres_url, autocommit=True) as connection:
            connection.execute("ALTER TABLE usage_records ADD CONSTRAINT no_bad "
                               "CHECK (request_id NOT LIKE 'bad.%')")
        bad = chat(plane.url, key, "bad").headers["x-request-id"]
        also_good = chat(plane.url, key, "fine").headers["x-request-id"]
    assert sorted(r.request_id for r in central_records(postgres_url)) == sorted([good, also_good])
    with SQLiteLedger(tmp_path / "ledger.db") as spool:
        assert spool.spool_state() [0] == 0 and spool.spool_state()[2] == 1
        assert [r.request_id for r in spool.records()] .count(bad) == 1


# --- two gateway processes, one PostgreSQL, SIGKILL and a database outage ------------------

class LoadClient:
    """Workers sending chat requests (every third streamed) to the gateways, each request with
    its own client id (X-Request-Id); records which completed, with the usage they returned."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.completed: dict[str, tuple[int, int]] = {}  # client id -> (prompt, completion)
        self.failed: set[str] = set()
        self.lock = threading.Lock()
        self.ids = itertools.count()

    def one(self, url: str, phase: str) -> None:
        client_id = f"{phase}-{next(self.ids)}"
        streamed = int(client_id.rsplit("-", 1)[1]) % 3 == 0
        words = " ".join(["token"] * (1 + int(client_id.rsplit("-", 1)[1]) % 7))
        body = {"model": "nvidia/Llama-3_1-Nemotron-Ultra-253B-v1",
                "messages": [{"role": "user", "content": words}],
                "max_tokens": 2 + int(client_id.rsplit("-", 1)[1]) % 5, "stream": streamed}
        if streamed:
            body["stream_options"] = {"include_usage": True}
        headers = {"Authorization": f"Bearer {self.key}", "X-Request-Id": client_id}
        try:
            response = httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers,
                                  timeout=30)
            usage = None
            if response.status_code == 200 and not streamed:
                usage = response.json()["usage"]
            elif response.status_code == 200 and response.text.endswith("data: [DONE]\n\n"):
                events = [json.loads(line[6:]) for line in response.text.splitlines()
                          if line.startswith("data: {")]
                usage = events[-1]["usage"]
        except httpx.TransportError:
            usage = None
        with self.lock:
            if usage is None:
                self.failed.add(client_id)
            else:
                self.completed[client_id] = (usage["prompt_tokens"], usage["completion_tokens"])

    def run(self, urls: dict[str, str], phase: str, requests_per_worker: int, workers: int = 6,
            between=None) -> None:
        """`workers` threads, each alternating between the gateways (read from `urls` at every
        request, so a restarted gateway's new address is used); `between(done)` runs in this
        thread while they work, given the count of finished requests."""
        finished = itertools.count()
        done = [0]

        def work(index: int) -> None:
            for n in range(requests_per_worker):
                name = sorted(urls)[(index + n) % len(urls)]
                self.one(urls[name], phase)
                done[0] = next(finished) + 1

        threads = [threading.Thread(target=work, args=(i,)) for i in range(workers)]
        for thread in threads:
            thread.start()
        if between is not None:
            between(lambda: done[0])
        for thread in threads:
            thread.join()


def simulator_tokens(url: str) -> tuple[int, int]:
    """The simulator's own vllm:prompt_tokens_total and vllm:generation_tokens_total."""
    values = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for sample in family.samples:
            if sample.name in ("vllm:prompt_tokens_total", "vllm:generation_tokens_total"):
                values[sample.name] = values.get(sample.name, 0) + sample.value
    return int(values["vllm:prompt_tokens_total"]), int(values["vllm:generation_tokens_total"])


@contextmanager
def own_postgres():
    server = start_postgres_or_skip()
    try:
        yield server
    finally:
        server.destroy()


def test_two_gateways_survive_sigkill_and_a_database_outage_without_loss_or_duplicates(tmp_path):
    with own_postgres() as database, running_simulator() as simulator_url:
        central_url = database.create_database("central")
        keys_path = tmp_path / "keys.json"
        keys_file = KeysFile()
        key, entry = create_key(keys_file, tenant="acme")
        save_keys_file(keys_path, keys_file)
        configs: dict[str, Path] = {}
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            settings = deployment_gateway_settings(
                tmp_path / name, simulator_url, keys_file=str(keys_path),
                central_ledger_url=central_url, **FAST_SHIPPING)
            configs[name] = tmp_path / name / "gateway.yaml"
            configs[name].write_text(settings.to_yaml())
        gateways = {name: GatewayProcess(path) for name, path in configs.items()}
        urls = {name: gateway.url for name, gateway in gateways.items()}
        load = LoadClient(key)
        try:
            # Phase 1: load on both; gateway a is SIGKILLed mid-load and started again.
            def kill_and_restart(done) -> None:
                wait_until(lambda: done() >= 60, "60 requests before the kill")
                gateways["a"].kill()
                wait_until(lambda: done() >= 90, "requests while a is down")
                gateways["a"] = GatewayProcess(configs["a"])
                urls["a"] = gateways["a"].url

            load.run(urls, "k", requests_per_worker=40, between=kill_and_restart)
            assert load.failed, "the SIGKILL should have failed some requests"

            # Phase 2: PostgreSQL stops under load and comes back; the simulator's counters
            # bracket the phase, which fails no request.
            failed_before = set(load.failed)
            tokens_before = simulator_tokens(simulator_url)
            outage_seen = {}

            def database_outage(done) -> None:
                wait_until(lambda: done() >= 40, "40 requests before the outage")
                database.stop()
                start = done()
                wait_until(lambda: done() >= start + 60, "60 requests during the outage")
                for name, url in urls.items():
                    wait_until(lambda: metric(url, "inferplane_gateway_ledger_ship_failures_total") >= 1,
                               f"gateway {name} failing to ship")
                    outage_seen[name] = metric(url, "inferplane_gateway_spool_records")
                database.start()

            load.run(urls, "o", requests_per_worker=40, between=database_outage)
            tokens_after = simulator_tokens(simulator_url)
            assert load.failed == failed_before, "no request may fail during the database outage"
            assert sum(outage_seen.values()) >= 1, outage_seen  # records waited in the spools
            for name, url in urls.items():
                wait_until(lambda: metric(url, "inferplane_gateway_spool_records") == 0,
                           f"gateway {name}'s spool to drain")
        finally:
            for gateway in gateways.values():
                if gateway.process.poll() is None:
                    gateway.terminate()

        records = central_records(central_url)
        print(f"completed={len(load.completed)} failed={len(load.failed)} central={len(records)} "
              f"spooled during the outage={outage_seen}")
        by_client = Counter(record.request_id.split(".", 1)[0] for record in records)
        # None twice (not even under different gateway-made ids), none lost.
        assert [client for client, count in by_client.items() if count > 1] == []
        missing = sorted(set(load.completed) - set(by_client))
        assert missing == []
        # A record without a completed response: only requests cut by the SIGKILL (committed,
        # then killed before the answer left), never anything else.
        assert set(by_client) - set(load.completed) <= load.failed
        usage = {record.request_id.split(".", 1)[0]: record for record in records}
        for client_id, (prompt, completion) in load.completed.items():
            record = usage[client_id]
            assert (record.prompt_tokens, record.completion_tokens) == (prompt, completion), client_id
            assert record.status == 200 and record.key_id == entry.id
        # Both spools: everything shipped, and the central ledger holds exactly their union.
        spooled: set[str] = set()
        for name in configs:
            with SQLiteLedger(tmp_path / name / "ledger.db") as spool:
                assert spool.spool_state()[0] == 0
                spooled |= {record.request_id for record in spool.records()}
        assert spooled == {record.request_id for record in records}
        # Phase 2 reconciles exactly with the simulator's own token counters.
        outage = [record for record in records if record.request_id.startswith("o-")]
        assert len(outage) == len([c for c in load.completed if c.startswith("o-")])
        assert (sum(r.prompt_tokens for r in outage), sum(r.completion_tokens for r in outage)) == \
            (tokens_after[0] - tokens_before[0], tokens_after[1] - tokens_before[1])
        # Phase 1: the ledger never bills more than the simulator generated.
        killed = [record for record in records if record.request_id.startswith("k-")]
        assert sum(r.completion_tokens for r in killed) <= tokens_before[1]
