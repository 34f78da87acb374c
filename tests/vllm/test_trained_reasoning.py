"""Reasoning kept apart when the model really reasons: the trained tiny checkpoint writes
Nemotron's think block when thinking is on (system prompt "detailed thinking on", no system
prompt, or the gateway's `reasoning_effort`), and answers at once when it is off. Real vLLM runs
our reasoning parser on that output; the client gets the thought in `reasoning` and only the
answer in `content`, and the ledger bills the reasoning tokens vLLM counted.
"""

from __future__ import annotations

import pytest

from inferplane.engines.tiny_nemotron import reasoning_examples

QUESTION = {"role": "user", "content": "Tell me about the weather in Paris."}
THOUGHT = "The user asks about the weather in Paris. I answer briefly."
ANSWER = "It is sunny in Paris."


def test_the_examples_are_what_this_file_asks():
    taught = {(tuple(m["content"] for m in e["messages"]), e["completion"])
              for e in reasoning_examples()}
    assert (("detailed thinking off", QUESTION["content"]), ANSWER) in taught
    assert ((QUESTION["content"],), f"<think>\n{THOUGHT}\n</think>\n\n{ANSWER}") in taught


def reasoning_of(message_or_delta) -> str | None:
    return (message_or_delta.model_extra or {}).get("reasoning")


def ask(plane, client, how: str, thinking: str):
    """QUESTION through the gateway, thinking set `how` ("system prompt": "detailed thinking
    <thinking>", "reasoning_effort": the gateway's knob, else neither); the raw and parsed reply."""
    messages = [{"role": "system", "content": f"detailed thinking {thinking}"}, QUESTION] \
        if how == "system prompt" else [QUESTION]
    effort = {"on": "high", "off": "none"}[thinking]
    extra = {"reasoning_effort": effort} if how == "reasoning_effort" else {}
    raw = client.chat.completions.with_raw_response.create(
        model=plane.model, messages=messages, max_tokens=80, temperature=0.0, **extra)
    return raw, raw.parse()


@pytest.mark.parametrize("how", ["system prompt", "no system prompt", "reasoning_effort"])
def test_thinking_on_puts_the_models_thought_in_reasoning_and_bills_it(
        trained_plane, trained_client, how):
    raw, reply = ask(trained_plane, trained_client, how, "on")
    message = reply.choices[0].message
    assert reply.choices[0].finish_reason == "stop"
    assert (reasoning_of(message) or "").strip() == THOUGHT
    assert message.content.strip() == ANSWER  # no <think> block left in the content
    reasoning_tokens = reply.usage.completion_tokens_details.reasoning_tokens
    assert 0 < reasoning_tokens < reply.usage.completion_tokens
    record = trained_plane.wait_for_record(raw.headers["x-request-id"])
    assert (record.completion_tokens, record.reasoning_tokens) == \
        (reply.usage.completion_tokens, reasoning_tokens)


def test_thinking_on_streamed_sends_reasoning_deltas_then_content(trained_plane, trained_client):
    stream = trained_client.chat.completions.create(
        model=trained_plane.model, messages=[QUESTION], max_tokens=80, temperature=0.0,
        stream=True, stream_options={"include_usage": True})
    reasoning, content, order = [], [], []
    for chunk in stream:
        for choice in chunk.choices:
            if reasoning_of(choice.delta):
                reasoning.append(reasoning_of(choice.delta))
                order.append("reasoning")
            if choice.delta.content:
                content.append(choice.delta.content)
                order.append("content")
    assert "".join(reasoning).strip() == THOUGHT
    assert "".join(content).strip() == ANSWER
    assert order.index("content") > max(i for i, kind in enumerate(order) if kind == "reasoning")


@pytest.mark.parametrize("how", ["system prompt", "reasoning_effort"])
def test_thinking_off_answers_at_once_with_no_reasoning(trained_plane, trained_client, how):
    raw, reply = ask(trained_plane, trained_client, how, "off")
    assert raw.headers["x-inferplane-reasoning"] == "off"
    assert reply.choices[0].message.content.strip() == ANSWER
    assert reasoning_of(reply.choices[0].message) is None
    record = trained_plane.wait_for_record(raw.headers["x-request-id"])
    assert record.reasoning_tokens == 0
