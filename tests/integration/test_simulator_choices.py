"""The simulator serves what vLLM serves for the billing paths (issue 11, item 5): `n` choices,
lists of prompts, logprobs / top_logprobs and echo, streamed and not, with vLLM's usage rules
(continuous usage per choice; totals count each prompt once and every choice)."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from inferplane.catalog import get_model
from inferplane.simulator import (
    SimulatorSettings,
    count_chat_prompt_tokens,
    count_completion_prompt_tokens,
    running_simulator,
)

NEMOTRON = get_model("nemotron-ultra-253b").hf_repo  # the simulator's default served name
OFF = {"role": "system", "content": "detailed thinking off"}
QUESTION = {"role": "user", "content": "Why meter every token?"}
OUTPUT_TOKENS = 12


@pytest.fixture(scope="module")
def url():
    with running_simulator(SimulatorSettings(output_tokens=OUTPUT_TOKENS)) as url:
        yield url


@pytest.fixture(scope="module")
def client(url):
    with openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0) as client:
        yield client


def stream_events(url: str, path: str, body: dict) -> list[dict]:
    response = httpx.post(f"{url}{path}", json={**body, "stream": True}, timeout=30)
    assert response.status_code == 200, response.text
    assert response.text.endswith("data: [DONE]\n\n")
    return [json.loads(part[6:]) for part in response.text.split("\n\n")
            if part.startswith("data: {")]


def test_chat_n_gives_n_distinct_choices_and_usage_counts_the_prompt_once(client):
    messages = [OFF, QUESTION]
    answer = client.chat.completions.create(model=NEMOTRON, messages=messages, n=3)
    assert [choice.index for choice in answer.choices] == [0, 1, 2]
    assert len({choice.message.content for choice in answer.choices}) == 3
    prompt = count_chat_prompt_tokens(messages)
    assert answer.usage.prompt_tokens == prompt
    assert answer.usage.completion_tokens == 3 * OUTPUT_TOKENS
    single = client.chat.completions.create(model=NEMOTRON, messages=messages)
    assert single.choices[0].message.content == answer.choices[0].message.content


def test_a_chat_stream_with_n_carries_per_choice_continuous_usage(url):
    events = stream_events(url, "/v1/chat/completions", {
        "model": NEMOTRON, "messages": [OFF, QUESTION], "n": 2,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True}})
    prompt = count_chat_prompt_tokens([OFF, QUESTION])
    by_choice: dict[int, list[int]] = {0: [], 1: []}
    for event in events[:-1]:
        (choice,) = event["choices"]
        by_choice[choice["index"]].append(event["usage"]["completion_tokens"])
        assert event["usage"]["prompt_tokens"] == prompt
    # each choice counts its own tokens (a role chunk at 0, then 1, 2, ...)
    assert by_choice[0] == by_choice[1] == list(range(OUTPUT_TOKENS + 1))
    assert events[-1]["choices"] == []
    assert events[-1]["usage"] == {"prompt_tokens": prompt, "completion_tokens": 2 * OUTPUT_TOKENS,
                                   "total_tokens": prompt + 2 * OUTPUT_TOKENS,
                                   # Nemotron's reasoning parser reports it (off here: 0)
                                   "completion_tokens_details": {"reasoning_tokens": 0}}


def test_a_list_of_prompts_with_n_numbers_choices_prompt_by_prompt(client):
    prompts = ["The ledger", "Every token counts because"]
    answer = client.completions.create(model=NEMOTRON, prompt=prompts, n=2, max_tokens=5)
    assert [choice.index for choice in answer.choices] == [0, 1, 2, 3]
    assert answer.usage.prompt_tokens == sum(count_completion_prompt_tokens(p) for p in prompts)
    assert answer.usage.completion_tokens == 4 * 5
    alone = client.completions.create(model=NEMOTRON, prompt=prompts[1], max_tokens=5)
    assert answer.choices[2].text == alone.choices[0].text


def test_a_streamed_list_of_prompts_ends_with_the_summed_usage(url):
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8]]
    events = stream_events(url, "/v1/completions", {
        "model": NEMOTRON, "prompt": prompts, "max_tokens": 4,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True}})
    continuous = {e["choices"][0]["index"]: e["usage"] for e in events[:-1]}
    assert continuous == {0: {"prompt_tokens": 3, "total_tokens": 7, "completion_tokens": 4},
                          1: {"prompt_tokens": 5, "total_tokens": 9, "completion_tokens": 4}}
    assert events[-1]["usage"]["prompt_tokens"] == 8
    assert events[-1]["usage"]["completion_tokens"] == 8


def test_completion_logprobs_with_echo_put_the_prompt_first(client):
    answer = client.completions.create(model=NEMOTRON, prompt="Count the usage", max_tokens=3,
                                       logprobs=2, echo=True)
    choice = answer.choices[0]
    assert choice.text.startswith("Count the usage")
    logprobs = choice.logprobs
    assert logprobs.tokens[:3] == ["Count", " the", " usage"]
    assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None
    assert len(logprobs.tokens) == 3 + 3 and "".join(logprobs.tokens) == choice.text
    assert all(len(top) == 2 for top in logprobs.top_logprobs[1:])
    assert logprobs.text_offset[3] == len("Count the usage")
    assert answer.usage.completion_tokens == 3  # the echo is not generated


def test_streamed_completion_logprobs_hold_the_bare_token_among_the_keys(url):
    events = stream_events(url, "/v1/completions", {
        "model": NEMOTRON, "prompt": "p", "max_tokens": 40, "logprobs": 2})
    for event in events:
        logprobs = event["choices"][0]["logprobs"]
        (token,) = logprobs["tokens"]
        assert token in logprobs["top_logprobs"][0]
        if token.strip() and token != token.strip():
            assert token.strip() in logprobs["top_logprobs"][0]


def test_chat_logprobs_and_top_logprobs(client):
    answer = client.chat.completions.create(model=NEMOTRON, messages=[OFF, QUESTION],
                                            logprobs=True, top_logprobs=3, max_tokens=4)
    content = answer.choices[0].logprobs.content
    assert len(content) == 4
    assert "".join(entry.token for entry in content) == answer.choices[0].message.content
    assert all(len(entry.top_logprobs) == 3 and entry.top_logprobs[0].token == entry.token
               for entry in content)


def test_chat_echo_prepends_the_assistants_last_message(client):
    messages = [OFF, QUESTION, {"role": "assistant", "content": "Because"}]
    answer = client.chat.completions.create(model=NEMOTRON, messages=messages, max_tokens=3,
                                            extra_body={"echo": True})
    assert answer.choices[0].message.content.startswith("Because")
    assert answer.usage.completion_tokens == 3


def test_echo_only_scoring_returns_the_prompt_and_generates_nothing(client, url):
    """vLLM's `echo` with `max_tokens: 0` on /v1/completions: the prompt's logprobs, no tokens."""
    answer = client.completions.create(model=NEMOTRON, prompt="Score this text", max_tokens=0,
                                       echo=True, logprobs=1)
    assert answer.choices[0].text == "Score this text"
    assert answer.choices[0].logprobs.tokens == ["Score", " this", " text"]
    assert answer.usage.completion_tokens == 0
    events = stream_events(url, "/v1/completions", {
        "model": NEMOTRON, "prompt": "Score this text", "max_tokens": 0, "echo": True,
        "stream_options": {"include_usage": True}})
    assert [e["choices"][0]["text"] for e in events[:-1]] == ["Score this text"]
    assert events[-1]["usage"]["completion_tokens"] == 0
    with pytest.raises(openai.BadRequestError):  # without echo, 0 is refused as vLLM does
        client.completions.create(model=NEMOTRON, prompt="x", max_tokens=0)
