"""The gateway in front of the simulator, driven by the real openai client over loopback:
streamed and not, reasoning on and off; usage and cost in the ledger exact to the token."""

from __future__ import annotations

import json
from decimal import Decimal

import httpx
import pytest

from inferplane.ledger.records import price
from inferplane.gateway.testing import running_data_plane
from inferplane.simulator import (
    SimulatorSettings,
    count_chat_prompt_tokens,
    count_completion_prompt_tokens,
)
from inferplane.simulator.generation import THINK_OVERHEAD_TOKENS

ON, OFF = "detailed thinking on", "detailed thinking off"
INPUT_PRICE, OUTPUT_PRICE = Decimal("0.60"), Decimal("1.80")  # the shipped example's prices
QUESTION = [{"role": "user", "content": "What does a gateway sidecar do, in short?"}]


@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    with running_data_plane(tmp_path_factory.mktemp("plane")) as plane:
        yield plane


@pytest.fixture(scope="module")
def key(plane):
    return plane.add_key(tenant="acme")


def expected_cost(prompt_tokens: int, completion_tokens: int) -> Decimal:
    return price(prompt_tokens, completion_tokens, INPUT_PRICE, OUTPUT_PRICE)


def check_record(plane, request_id, entry, *, prompt, completion, streamed, status=200,
                 endpoint="/v1/chat/completions"):
    record = plane.record(request_id)
    assert (record.key_id, record.tenant, record.model, record.endpoint) == \
        (entry.id, entry.tenant, plane.model, endpoint)
    assert (record.prompt_tokens, record.completion_tokens) == (prompt, completion)
    assert record.cost == expected_cost(prompt, completion) and record.currency == "USD"
    assert (record.input_price_per_million, record.output_price_per_million) == \
        (INPUT_PRICE, OUTPUT_PRICE)
    assert (record.status, record.streamed) == (status, streamed)
    assert record.latency_ms > 0
    return record


def test_non_streamed_reasoning_off_is_metered_exactly(plane, key):
    secret, entry = key
    raw = plane.client(secret).chat.completions.with_raw_response.create(
        model=plane.model, messages=QUESTION, reasoning_effort="low")
    reply = raw.parse()
    assert raw.headers["x-inferplane-reasoning"] == "off"
    content = reply.choices[0].message.content
    assert "<think>" not in content
    prompt = count_chat_prompt_tokens([{"role": "system", "content": OFF}, *QUESTION])
    assert reply.usage.prompt_tokens == prompt
    record = check_record(plane, raw.headers["x-request-id"], entry, prompt=prompt,
                          completion=reply.usage.completion_tokens, streamed=False)
    assert record.ttft_ms is not None


def test_non_streamed_reasoning_on_by_default_thinks(plane, key):
    secret, entry = key
    raw = plane.client(secret).chat.completions.with_raw_response.create(
        model=plane.model, messages=QUESTION)
    reply = raw.parse()
    assert raw.headers["x-inferplane-reasoning"] == "on"  # the example's default
    message = reply.choices[0].message
    assert message.model_extra["reasoning"] and "<think>" not in message.content
    assert reply.usage.completion_tokens_details.reasoning_tokens > 0
    prompt = count_chat_prompt_tokens([{"role": "system", "content": ON}, *QUESTION])
    check_record(plane, raw.headers["x-request-id"], entry, prompt=prompt,
                 completion=reply.usage.completion_tokens, streamed=False)


def test_reasoning_extension_travels_in_extra_body(plane, key):
    secret, _ = key
    raw = plane.client(secret).chat.completions.with_raw_response.create(
        model=plane.model, messages=QUESTION, reasoning_effort="high",
        extra_body={"reasoning": False})  # the extension wins
    assert raw.headers["x-inferplane-reasoning"] == "off"
    assert "<think>" not in raw.parse().choices[0].message.content


def test_system_instructions_are_moved_not_lost(plane, key):
    secret, entry = key
    messages = [{"role": "system", "content": "Answer in one word."}, *QUESTION]
    raw = plane.client(secret).chat.completions.with_raw_response.create(
        model=plane.model, messages=messages, extra_body={"reasoning": False})
    assert raw.headers["x-inferplane-system-prompt"] == "moved-to-user"
    moved = [{"role": "system", "content": OFF},
             {"role": "user", "content": "Answer in one word.\n\n" + QUESTION[0]["content"]}]
    assert raw.parse().usage.prompt_tokens == count_chat_prompt_tokens(moved)


def stream_chunks(plane, secret, **kwargs):
    stream = plane.client(secret).chat.completions.with_raw_response.create(
        model=plane.model, messages=QUESTION, stream=True, **kwargs)
    return stream.headers, list(stream.parse())


def test_streamed_without_include_usage_gets_no_usage_but_is_billed(plane, key):
    secret, entry = key
    headers, chunks = stream_chunks(plane, secret, reasoning_effort="high")
    assert all(chunk.usage is None for chunk in chunks)
    assert all(chunk.choices for chunk in chunks)  # no usage-only final chunk
    reasoning = "".join((chunk.choices[0].delta.model_extra or {}).get("reasoning") or ""
                        for chunk in chunks)
    assert reasoning  # the think block streams as delta.reasoning
    # Every token is billed, also the think markers, which send no chunk of their own.
    settings = SimulatorSettings()
    completion = settings.output_tokens + THINK_OVERHEAD_TOKENS + settings.reasoning_tokens
    prompt = count_chat_prompt_tokens([{"role": "system", "content": ON}, *QUESTION])
    record = check_record(plane, headers["x-request-id"], entry, prompt=prompt,
                          completion=completion, streamed=True)
    assert record.ttft_ms is not None and record.ttft_ms <= record.latency_ms


def test_streamed_with_include_usage_gets_only_the_final_usage_chunk(plane, key):
    secret, entry = key
    headers, chunks = stream_chunks(plane, secret, reasoning_effort="none",
                                    stream_options={"include_usage": True})
    assert all(chunk.usage is None for chunk in chunks[:-1])
    final = chunks[-1]
    assert final.choices == [] and final.usage is not None
    prompt = count_chat_prompt_tokens([{"role": "system", "content": OFF}, *QUESTION])
    assert final.usage.prompt_tokens == prompt
    check_record(plane, headers["x-request-id"], entry, prompt=prompt,
                 completion=final.usage.completion_tokens, streamed=True)


def test_streamed_with_continuous_usage_passes_every_chunk_unchanged(plane, key):
    secret, entry = key
    options = {"include_usage": True, "continuous_usage_stats": True}
    headers, chunks = stream_chunks(plane, secret, stream_options=options)
    assert all(chunk.usage is not None for chunk in chunks)
    counts = [c.usage.completion_tokens for c in chunks[:-1]]
    assert counts[0] == 0 and counts == sorted(set(counts))  # counts up, chunk by chunk
    check_record(plane, headers["x-request-id"], entry, prompt=chunks[-1].usage.prompt_tokens,
                 completion=chunks[-1].usage.completion_tokens, streamed=True)


def raw_events(response: httpx.Response) -> list[bytes]:
    return [event for event in response.read().split(b"\n\n") if event]


def test_streamed_bytes_are_vllms_except_the_documented_usage(plane, key):
    """What the client reads equals what the simulator sends for the same request with the
    usage the client did not ask for removed (ids and timestamps aside)."""
    secret, _ = key
    body = {"model": plane.model, "stream": True, "reasoning": False, "seed": 7,
            "messages": QUESTION, "stream_options": {"include_usage": True}}
    through = httpx.post(f"{plane.base_url}/chat/completions", json=body,
                         headers={"Authorization": f"Bearer {secret}"})
    direct_body = {**body, "messages": [{"role": "system", "content": OFF}, *QUESTION]}
    del direct_body["reasoning"]
    direct = httpx.post(f"{plane.simulator_url}/v1/chat/completions", json=direct_body)

    def normalise(event: bytes) -> object:
        if event == b"data: [DONE]":
            return "[DONE]"
        data = json.loads(event.removeprefix(b"data: "))
        data.pop("id"), data.pop("created")
        return data

    assert [normalise(e) for e in raw_events(through)] == \
        [normalise(e) for e in raw_events(direct)]
    assert through.headers["content-type"].startswith("text/event-stream")


def test_completions_endpoint_streamed_and_not(plane, key):
    secret, entry = key
    client = plane.client(secret)
    prompt_text = "Once upon a time"
    prompt = count_completion_prompt_tokens(prompt_text)
    raw = client.completions.with_raw_response.create(model=plane.model, prompt=prompt_text,
                                                      max_tokens=5)
    reply = raw.parse()
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (prompt, 5)
    check_record(plane, raw.headers["x-request-id"], entry, prompt=prompt, completion=5,
                 streamed=False, endpoint="/v1/completions")
    stream = client.completions.with_raw_response.create(model=plane.model, prompt=prompt_text,
                                                         max_tokens=4, stream=True)
    chunks = list(stream.parse())
    assert len(chunks) == 4 and all(chunk.usage is None for chunk in chunks)
    check_record(plane, stream.headers["x-request-id"], entry, prompt=prompt, completion=4,
                 streamed=True, endpoint="/v1/completions")


def test_models_are_listed_and_filtered_by_the_keys_allowed_models(plane, key):
    secret, _ = key
    assert [m.id for m in plane.client(secret).models.list()] == [plane.model]
    restricted, _ = plane.add_key(tenant="acme", models=["some-other-model"])
    assert [m.id for m in plane.client(restricted).models.list()] == []


def test_request_ids_are_unique_even_when_the_client_repeats_one(plane, key):
    secret, _ = key
    headers = {"Authorization": f"Bearer {secret}", "X-Request-Id": "client-trace-42"}
    body = {"model": plane.model, "messages": QUESTION, "max_tokens": 2}
    ids = [httpx.post(f"{plane.base_url}/chat/completions", json=body,
                      headers=headers).headers["x-request-id"] for _ in range(2)]
    assert ids[0] != ids[1] and all(i.startswith("client-trace-42.") for i in ids)
    assert all(plane.record(i).completion_tokens == 2 for i in ids)  # both billed
    odd = httpx.post(f"{plane.base_url}/chat/completions", json=body,
                     headers={**headers, "X-Request-Id": "has spaces/and\"quotes"})
    assert odd.headers["x-request-id"].startswith("req_")


def test_cached_prompt_tokens_are_recorded(tmp_path):
    from inferplane.config import examples_dir
    from inferplane.config import load
    from inferplane.simulator import SimulatorSettings

    simulator = SimulatorSettings.from_deployment(load(examples_dir() / "nemotron-ultra.yaml"),
                                                  enable_prompt_tokens_details=True)
    long_question = [{"role": "user", "content": "Summarise the design of a metering gateway. "
                      * 20}]
    with running_data_plane(tmp_path, simulator) as plane:
        secret, _ = plane.add_key()
        client = plane.client(secret)
        for _ in range(2):  # the second request hits the prefix cache
            raw = client.chat.completions.with_raw_response.create(
                model=plane.model, messages=long_question, max_tokens=2)
        reply = raw.parse()
        cached = reply.usage.prompt_tokens_details.cached_tokens
        assert cached > 0
        record = plane.record(raw.headers["x-request-id"])
        assert record.cached_tokens == cached
        assert record.cost == expected_cost(reply.usage.prompt_tokens, 2)


def test_auth_disabled_serves_and_meters_an_anonymous_key(tmp_path):
    with running_data_plane(tmp_path, auth_enabled=False) as plane:
        response = httpx.post(f"{plane.base_url}/chat/completions",
                              json={"model": plane.model, "messages": QUESTION, "max_tokens": 3})
        assert response.status_code == 200
        record = plane.record(response.headers["x-request-id"])
        assert (record.key_id, record.tenant, record.completion_tokens) == \
            ("key_anonymous", "anonymous", 3)
