"""Simulator parity: one request matrix sent to real vLLM and to the simulator, compared.

What must match: status codes, the shape of every JSON body (keys and value types, not the
generated text), the SSE framing and the sequence of chunk shapes, and usage semantics. Every
contract test that runs against the simulator (gateway metering, dev, the cluster paths) leans
on these; where this test fails, the simulator is what gets fixed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from inferplane.config import examples_dir, load
from inferplane.engines import vllm_cpu
from inferplane.simulator import SimulatorSettings, running_simulator

MODEL = vllm_cpu.DEFAULT_SERVED_NAME
OFF = {"role": "system", "content": "detailed thinking off"}
QUESTION = {"role": "user", "content": "What is the weather in Paris today?"}
TOKENS = 6


@dataclass(frozen=True)
class Case:
    name: str
    path: str
    body: Any = None  # a dict (sent as JSON), bytes (sent raw), or None for a GET
    method: str = "POST"
    headers: dict[str, str] = field(default_factory=dict)


def chat(**overrides: Any) -> dict:
    return {"model": MODEL, "messages": [OFF, QUESTION], "max_tokens": TOKENS,
            "temperature": 0.0, "ignore_eos": True, **overrides}


def completion(**overrides: Any) -> dict:
    return {"model": MODEL, "prompt": "The weather in Paris is", "max_tokens": TOKENS,
            "temperature": 0.0, "ignore_eos": True, **overrides}


INCLUDE = {"include_usage": True}
CONTINUOUS = {"include_usage": True, "continuous_usage_stats": True}
MATRIX = [
    Case("health", "/health", method="GET"),
    Case("models", "/v1/models", method="GET"),
    Case("chat", "/v1/chat/completions", chat()),
    Case("chat-stream", "/v1/chat/completions", chat(stream=True)),
    Case("chat-stream-usage", "/v1/chat/completions", chat(stream=True, stream_options=INCLUDE)),
    Case("chat-stream-continuous", "/v1/chat/completions",
         chat(stream=True, stream_options=CONTINUOUS)),
    Case("chat-max-completion-tokens", "/v1/chat/completions",
         chat(max_tokens=None, max_completion_tokens=TOKENS)),
    Case("chat-n2-greedy", "/v1/chat/completions", chat(n=2)),
    Case("completion", "/v1/completions", completion()),
    Case("completion-stream", "/v1/completions", completion(stream=True, stream_options=INCLUDE)),
    Case("completion-stream-continuous", "/v1/completions",
         completion(stream=True, stream_options=CONTINUOUS)),
    Case("completion-token-ids", "/v1/completions", completion(prompt=[1, 2, 3, 4])),
    # errors
    Case("unknown-model", "/v1/chat/completions", chat(model="no-such-model")),
    Case("too-long", "/v1/chat/completions", chat(max_tokens=100_000)),
    Case("zero-max-tokens", "/v1/chat/completions", chat(max_tokens=0)),
    Case("not-json", "/v1/chat/completions", b"{not json",
         headers={"content-type": "application/json"}),
    Case("no-messages", "/v1/chat/completions", {"model": MODEL}),
    Case("stream-options-without-stream", "/v1/chat/completions",
         chat(stream_options=INCLUDE)),
    Case("empty-prompt", "/v1/completions", completion(prompt="")),
    Case("get-on-post-route", "/v1/chat/completions", method="GET"),
    Case("unknown-route", "/v1/nothing-here", method="GET"),
]


# Not simulated yet: several choices (n > 1, sampled) and batches of prompts. The simulator
# refuses them with a 400 naming the field; vLLM answers them (the contract tests bill them).
NOT_SIMULATED = [
    Case("chat-n2", "/v1/chat/completions", chat(n=2, temperature=0.8, seed=7)),
    Case("completion-batch", "/v1/completions",
         completion(prompt=["The weather in Paris is", "Two plus two is"])),
]


@pytest.fixture(scope="module")
def simulator_url() -> Iterator[str]:
    """The simulator standing in for the session's vLLM: same name, context and flags."""
    config = load(examples_dir() / "nemotron-ultra.yaml")
    settings = SimulatorSettings.from_deployment(
        config, served_model_names=[MODEL], catalog_keys={MODEL: config.model_spec.key},
        max_model_len=vllm_cpu.DEFAULT_MAX_MODEL_LEN, max_num_seqs=16,
        enable_prompt_tokens_details=True)
    with running_simulator(settings) as url:
        yield url


def send(url: str, case: Case) -> httpx.Response:
    if case.method == "GET":
        return httpx.get(url + case.path, timeout=120)
    if isinstance(case.body, bytes):
        return httpx.post(url + case.path, content=case.body, headers=case.headers, timeout=120)
    body = {k: v for k, v in case.body.items() if v is not None}
    return httpx.post(url + case.path, json=body, headers=case.headers, timeout=120)


def shape(value: Any) -> Any:
    """Keys and value types, recursively; list elements' shapes in order."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in sorted(value.items())}
    if isinstance(value, list):
        return [shape(item) for item in value]
    return "null" if value is None else type(value).__name__


def events(body: str) -> list[str]:
    """SSE events (`data: ...` payloads), checking the framing on the way."""
    assert body.endswith("\n\n"), "a stream must end with a blank line"
    payloads = []
    for event in body[:-2].split("\n\n"):
        assert event.startswith("data: ") and "\n" not in event, f"not one data line: {event!r}"
        payloads.append(event[len("data: "):])
    return payloads


def stream_shapes(body: str) -> list[Any]:
    """The sequence of chunk shapes, runs of equal shapes folded into one (tokens per chunk
    may differ: a byte-level token that completes no character sends no text)."""
    payloads = events(body)
    assert payloads[-1] == "[DONE]" and "[DONE]" not in payloads[:-1]
    folded: list[Any] = []
    for payload in payloads[:-1]:
        current = shape(json.loads(payload))
        if not folded or folded[-1] != current:
            folded.append(current)
    return folded


def summary(response: httpx.Response) -> dict[str, Any]:
    """What must match between the engines for one response."""
    kind = response.headers.get("content-type", "").split(";")[0]
    result: dict[str, Any] = {"status": response.status_code, "type": kind}
    if kind == "text/event-stream":
        result["chunks"] = stream_shapes(response.text)
    elif kind == "application/json":
        body = response.json()
        result["body"] = shape(body)
        if "error" in body:
            result["error_type"] = body["error"].get("type")
            result["error_code"] = body["error"].get("code")
    return result


@pytest.mark.parametrize("case", MATRIX, ids=[case.name for case in MATRIX])
def test_the_simulator_answers_like_vllm(vllm_server, simulator_url, case):
    real = summary(send(vllm_server.url, case))
    simulated = summary(send(simulator_url, case))
    assert simulated == real


def final_usage(response: httpx.Response) -> dict:
    payloads = [json.loads(p) for p in events(response.text)[:-1]]
    return payloads[-1]["usage"]


@pytest.mark.parametrize("path,body", [
    ("/v1/chat/completions", chat(stream=True, stream_options=CONTINUOUS)),
    ("/v1/completions", completion(stream=True, stream_options=CONTINUOUS)),
], ids=["chat", "completion"])
def test_usage_semantics_match(vllm_server, simulator_url, path, body):
    """Totals add up, ignore_eos yields exactly max_tokens, and continuous usage counts up by
    the tokens each chunk carries, ending at the final usage, in both engines."""
    for url in (vllm_server.url, simulator_url):
        response = httpx.post(url + path, json=body, timeout=120)
        payloads = [json.loads(p) for p in events(response.text)[:-1]]
        usages = [p["usage"] for p in payloads]
        final = usages[-1]
        assert final["completion_tokens"] == TOKENS, url
        assert final["total_tokens"] == final["prompt_tokens"] + final["completion_tokens"]
        counts = [u["completion_tokens"] for u in usages]
        assert counts == sorted(counts) and counts[-2] == TOKENS, (url, counts)
        assert {u["prompt_tokens"] for u in usages} == {final["prompt_tokens"]}
