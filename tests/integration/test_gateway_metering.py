"""Metering under stress: a client that leaves mid-stream is billed, a stream in flight holds its
reservation, /metrics adds up to the ledger, and SIGKILL loses no completed response's record."""

from __future__ import annotations

import asyncio
import threading
import time
from decimal import Decimal

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from inferplane.config import examples_dir
from inferplane.config import load
from inferplane.ledger import open_ledger
from inferplane.gateway.testing import gateway_process, running_data_plane
from inferplane.simulator import SimulatorSettings, running_simulator

from .gateway_on_simulator import gateway_config_on_simulator

QUESTION = [{"role": "user", "content": "Tell me a long story."}]
SLOW_TOKENS = 60


def slow_simulator() -> SimulatorSettings:
    """Answers of 60 tokens at 20 tokens/s: three seconds to interrupt or to overlap."""
    config = load(examples_dir() / "nemotron-ultra.yaml")
    return SimulatorSettings.from_deployment(config, inter_token_seconds=0.05,
                                             output_tokens=SLOW_TOKENS)


@pytest.fixture(scope="module")
def slow_plane(tmp_path_factory):
    with running_data_plane(tmp_path_factory.mktemp("slow"), slow_simulator()) as plane:
        yield plane


def simulator_aborts(plane) -> float:
    for family in text_string_to_metric_families(httpx.get(f"{plane.simulator_url}/metrics").text):
        for sample in family.samples:
            if sample.name == "vllm:request_success_total" and \
                    sample.labels.get("finished_reason") == "abort":
                return sample.value
    return 0.0


def test_a_client_that_disconnects_mid_stream_is_billed_what_was_generated(slow_plane):
    secret, entry = slow_plane.add_key()
    aborts_before = simulator_aborts(slow_plane)
    raw = slow_plane.client(secret).chat.completions.with_raw_response.create(
        model=slow_plane.model, messages=QUESTION, stream=True, reasoning_effort="none")
    stream = raw.parse()
    received = 0
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            received += 1
        if received == 10:
            break
    stream.close()  # the client goes away
    record = slow_plane.wait_for_record(raw.headers["x-request-id"], timeout_seconds=15.0)
    assert record.status == 499 and record.streamed
    assert received <= record.completion_tokens < SLOW_TOKENS
    assert record.prompt_tokens > 0 and record.cost > 0
    deadline = time.monotonic() + 10  # and vLLM was told to stop generating
    while simulator_aborts(slow_plane) < aborts_before + 1:
        assert time.monotonic() < deadline, "the upstream request was not aborted"
        time.sleep(0.05)


# A client that gives up on a whole (non-streamed) response: see test_billing_integrity.py
# (it pays for every token generated; the gateway reads the response to its end).


def test_a_stream_in_flight_holds_its_tpm_reservation(slow_plane):
    secret, _ = slow_plane.add_key(tpm=1000)
    client = slow_plane.client(secret)
    stream = client.chat.completions.create(model=slow_plane.model, messages=QUESTION,
                                            stream=True, max_tokens=800, reasoning_effort="none")
    next(iter(stream))  # admitted and streaming: ~800 tokens reserved until it ends
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model=slow_plane.model, messages=QUESTION,
                                       max_tokens=300, reasoning_effort="none")
    assert caught.value.response.headers["retry-after"]
    for _ in stream:  # let it finish: settlement returns the unused part
        pass
    client.chat.completions.create(model=slow_plane.model, messages=QUESTION, max_tokens=300,
                                   reasoning_effort="none")


def samples(plane) -> dict[tuple[str, tuple], float]:
    text = httpx.get(f"{plane.url}/metrics").text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_match_known_traffic_and_the_ledger(tmp_path):
    with running_data_plane(tmp_path) as plane:
        secret, entry = plane.add_key(budget=Decimal("1"))
        client = plane.client(secret)
        for _ in range(3):
            client.chat.completions.create(model=plane.model, messages=QUESTION, max_tokens=5)
        list(client.chat.completions.create(model=plane.model, messages=QUESTION, stream=True))
        with pytest.raises(openai.AuthenticationError):
            plane.client("ip-wrong").models.list()
        httpx.post(f"{plane.base_url}/chat/completions", content=b"{",
                   headers={"Authorization": f"Bearer {secret}"})
        values = samples(plane)
        records = [r for r in plane.records() if r.key_id == entry.id]
        exposition = httpx.get(f"{plane.url}/metrics").text

    model, key_id = plane.model, entry.id
    labels = lambda **kw: tuple(sorted(kw.items()))  # noqa: E731
    name = "inferplane_gateway_"
    assert values[(name + "requests_total", labels(model=model, key_id=key_id,
                                                   status="200"))] == 4
    assert values[(name + "requests_total", labels(model="unknown", key_id=key_id,
                                                   status="400"))] == 1
    assert values[(name + "auth_failures_total", labels(reason="unknown"))] == 1
    assert values[(name + "tokens_total", labels(model=model, key_id=key_id, direction="input"))] \
        == sum(r.prompt_tokens for r in records)
    assert values[(name + "tokens_total", labels(model=model, key_id=key_id,
                                                 direction="output"))] \
        == sum(r.completion_tokens for r in records)
    assert values[(name + "cost_total", labels(model=model, key_id=key_id, currency="USD"))] == \
        pytest.approx(float(sum(r.cost for r in records)))
    assert values[(name + "request_latency_seconds_count", labels(model=model, key_id=key_id))] \
        == 4
    assert values[(name + "time_to_first_token_seconds_count",
                   labels(model=model, key_id=key_id))] == 1
    assert values[(name + "key_budget_spent_ratio", labels(key_id=key_id))] == \
        pytest.approx(float(sum(r.cost for r in records)))  # budget 1
    assert values[(name + "upstream_ready", ())] == 1
    # vLLM's own series come along (it listens on loopback only: Prometheus scrapes the gateway)
    assert "vllm:num_requests_running" in exposition and "vllm:request_success_total" in exposition
    assert secret not in exposition


def test_sigkill_loses_no_completed_response_and_duplicates_nothing(tmp_path):
    """Clients hammer a gateway process; it is SIGKILLed mid-traffic and restarted. Every
    response a client received in full has exactly one record."""
    with gateway_config_on_simulator(tmp_path, tenant="load") as configured:
        settings, secret = configured.settings, configured.secret
        config_path = configured.config_path
        completed: list[str] = []
        lock = threading.Lock()

        def hammer(url: str, stop: threading.Event, streamed: bool) -> None:
            body = {"model": settings.models[0].served_name, "messages": QUESTION,
                    "max_tokens": 8, "stream": streamed}
            with httpx.Client(timeout=10) as client:
                while not stop.is_set():
                    try:
                        response = client.post(f"{url}/v1/chat/completions", json=body,
                                               headers={"Authorization": f"Bearer {secret}"})
                    except httpx.TransportError:
                        continue  # the gateway died under this request: not completed
                    done = response.status_code == 200 and (
                        response.text.endswith("data: [DONE]\n\n") if streamed
                        else response.json()["usage"]["completion_tokens"] == 8)
                    if done:
                        with lock:
                            completed.append(response.headers["x-request-id"])

        with gateway_process(config_path) as gateway:
            stop = threading.Event()
            threads = [threading.Thread(target=hammer, args=(gateway.url, stop, i % 2 == 0))
                       for i in range(4)]
            for thread in threads:
                thread.start()
            deadline = time.monotonic() + 30
            while len(completed) < 200 and time.monotonic() < deadline:
                time.sleep(0.05)
            gateway.kill()  # SIGKILL: no shutdown hook runs
            stop.set()
            for thread in threads:
                thread.join()
        assert len(completed) >= 50

        with open_ledger(settings.ledger_url) as ledger:
            records = ledger.records()
        ids = [record.request_id for record in records]
        assert len(ids) == len(set(ids))
        assert set(completed) <= set(ids), "a completed response lost its usage record"
        assert all(r.completion_tokens == 8 for r in records if r.request_id in set(completed))

        with gateway_process(config_path) as gateway:  # restarted on the same ledger
            after = httpx.post(f"{gateway.url}/v1/chat/completions",
                               json={"model": settings.models[0].served_name,
                                     "messages": QUESTION, "max_tokens": 3},
                               headers={"Authorization": f"Bearer {secret}"})
            assert after.status_code == 200
        with open_ledger(settings.ledger_url) as ledger:
            assert ledger.count() == len(records) + 1
            assert ledger.write(records) == 0  # a replay of every record adds nothing
            assert ledger.count() == len(records) + 1
            total = sum((r.cost for r in ledger.records()), Decimal(0))
            assert total == sum((r.cost for r in records), Decimal(0)) + \
                ledger.records()[-1].cost


def test_a_model_server_without_vllms_abort_endpoint_is_not_asked_again():
    """The simulator has no abort endpoint (vLLM without --enable-scale-out answers 403): the
    gateway falls back to half-closing, and stops asking."""
    from inferplane.gateway.proxy import Upstream

    async def ask_twice(url: str) -> tuple[list[bool], bool]:
        upstream = Upstream(url, 10.0)
        try:
            answers = [await upstream.abort(["chatcmpl-gone"]) for _ in range(2)]
            return answers, upstream.abort_supported
        finally:
            await upstream.close()

    with running_simulator() as url:
        assert asyncio.run(ask_twice(url)) == ([False, False], False)
