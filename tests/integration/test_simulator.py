"""The vLLM simulator over real HTTP on loopback, driven by the real `openai` client.

Expected usage is computed with the simulator's documented tokenizer (`inferplane.simulator.
tokens`), so every count below is exact; a simulator that miscounts, drops usage from a stream,
ignores the reasoning toggle or leaks a running request fails here.
"""

from __future__ import annotations

import json
import threading
import time

import httpx
import openai
import pytest
from hypothesis import HealthCheck, given, settings as hypothesis_settings, strategies as st
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from inferplane.catalog import get_model
from inferplane.simulator import (
    SimulatorSettings,
    count_chat_prompt_tokens,
    count_completion_prompt_tokens,
    count_text_tokens,
    running_simulator,
    simulator_subprocess,
)
from inferplane.simulator.engine import PREFIX_CACHE_BLOCK_TOKENS
from inferplane.simulator.generation import THINK_OVERHEAD_TOKENS

NEMOTRON = get_model("nemotron-ultra-253b").hf_repo
OUTPUT_TOKENS = 12
REASONING_TOKENS = 9
THINKING_OFF = {"role": "system", "content": "detailed thinking off"}
THINKING_ON = {"role": "system", "content": "detailed thinking on"}
QUESTION = {"role": "user", "content": "What is the capital of France? Answer in one word, please."}


def simulator_settings(**overrides) -> SimulatorSettings:
    values = dict(output_tokens=OUTPUT_TOKENS, reasoning_tokens=REASONING_TOKENS)
    values.update(overrides)
    return SimulatorSettings(**values)


@pytest.fixture(scope="module")
def base_url():
    with running_simulator(simulator_settings()) as url:
        yield url


@pytest.fixture
def client(base_url):
    with openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0) as client:
        yield client


@pytest.fixture(scope="module")
def http(base_url):
    with httpx.Client(base_url=base_url) as http:
        yield http


def metric_samples(base_url: str) -> dict[tuple[str, tuple], float]:
    """/metrics as {(sample name, sorted labels): value}."""
    text = httpx.get(f"{base_url}/metrics").text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def metric(samples, name: str, model: str = NEMOTRON, **labels) -> float:
    key = tuple(sorted({"model_name": model, "engine": "0", **labels}.items()))
    return samples[(name, key)]


def wait_for(condition, timeout_seconds: float = 10.0) -> None:
    """Poll until `condition()` holds; fail (not flake) only if it never does."""
    deadline = time.monotonic() + timeout_seconds
    while not condition():
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.01)


# -- endpoints ------------------------------------------------------------------------------


def test_health_is_200_with_an_empty_body(base_url):
    response = httpx.get(f"{base_url}/health")
    assert response.status_code == 200
    assert response.content == b""


def test_models_lists_the_served_model_in_vllms_shape(client):
    models = client.models.list().data
    assert [model.id for model in models] == [NEMOTRON]
    card = models[0].model_dump()
    assert card["owned_by"] == "vllm"
    assert card["max_model_len"] == get_model("nemotron-ultra-253b").max_context
    assert card["root"] == NEMOTRON


def test_unknown_route_gets_vllms_404(base_url):
    response = httpx.get(f"{base_url}/v1/nothing-here")
    assert response.status_code == 404
    assert response.json() == {"detail": "Not Found"}  # vLLM's FastAPI routing error


# -- usage ----------------------------------------------------------------------------------


def test_non_streamed_usage_matches_the_tokenizer_exactly(client):
    messages = [THINKING_OFF, QUESTION]
    response = client.chat.completions.create(model=NEMOTRON, messages=messages)
    assert response.usage.prompt_tokens == count_chat_prompt_tokens(messages)
    assert response.usage.completion_tokens == OUTPUT_TOKENS
    assert response.usage.total_tokens == count_chat_prompt_tokens(messages) + OUTPUT_TOKENS
    assert response.choices[0].finish_reason == "stop"
    assert count_text_tokens(response.choices[0].message.content) == OUTPUT_TOKENS


def test_the_prompt_tokenizer_counts_words_punctuation_and_per_message_overhead():
    # 5 primer + (5 + 3) + (5 + 4): "detailed thinking off"; "Hi, you!" is Hi , you !
    messages = [THINKING_OFF, {"role": "user", "content": "Hi, you!"}]
    assert count_chat_prompt_tokens(messages) == 5 + 8 + 9
    parts = [{"role": "user", "content": [{"type": "text", "text": "Hi, you!"}]}]
    assert count_chat_prompt_tokens(parts) == 5 + 9


def test_max_tokens_cuts_the_answer_with_finish_reason_length(client):
    response = client.chat.completions.create(
        model=NEMOTRON, messages=[THINKING_OFF, QUESTION], max_tokens=5)
    assert response.usage.completion_tokens == 5
    assert response.choices[0].finish_reason == "length"


def test_max_completion_tokens_is_honoured_like_max_tokens(client):
    response = client.chat.completions.create(
        model=NEMOTRON, messages=[THINKING_OFF, QUESTION], max_completion_tokens=3)
    assert response.usage.completion_tokens == 3
    assert response.choices[0].finish_reason == "length"


def test_a_max_tokens_above_the_natural_length_stops_early(client):
    response = client.chat.completions.create(
        model=NEMOTRON, messages=[THINKING_OFF, QUESTION], max_tokens=OUTPUT_TOKENS + 50)
    assert response.usage.completion_tokens == OUTPUT_TOKENS
    assert response.choices[0].finish_reason == "stop"


def test_ignore_eos_generates_exactly_max_tokens(client):
    response = client.chat.completions.create(
        model=NEMOTRON, messages=[THINKING_OFF, QUESTION], max_tokens=40,
        extra_body={"ignore_eos": True})
    assert response.usage.completion_tokens == 40
    assert count_text_tokens(response.choices[0].message.content) == 40


def test_the_same_prompt_gives_the_same_text_and_another_prompt_another(client):
    first = client.chat.completions.create(model=NEMOTRON, messages=[THINKING_OFF, QUESTION])
    again = client.chat.completions.create(model=NEMOTRON, messages=[THINKING_OFF, QUESTION])
    other = client.chat.completions.create(
        model=NEMOTRON, messages=[THINKING_OFF, {"role": "user", "content": "Something else."}])
    assert first.choices[0].message.content == again.choices[0].message.content
    assert first.choices[0].message.content != other.choices[0].message.content


def test_another_seed_gives_another_text(client):
    with running_simulator(simulator_settings(seed=7)) as url:
        with openai.OpenAI(base_url=f"{url}/v1", api_key="unused") as seeded:
            seven = seeded.chat.completions.create(
                model=NEMOTRON, messages=[THINKING_OFF, QUESTION])
    default = client.chat.completions.create(model=NEMOTRON, messages=[THINKING_OFF, QUESTION])
    assert seven.choices[0].message.content != default.choices[0].message.content
    assert seven.usage == default.usage


def test_a_request_without_model_is_served_by_the_default_model(base_url):
    response = httpx.post(f"{base_url}/v1/chat/completions", json={"messages": [QUESTION]})
    assert response.status_code == 200
    assert response.json()["model"] == NEMOTRON


def test_the_callers_request_id_becomes_the_completion_id(base_url):
    response = httpx.post(f"{base_url}/v1/chat/completions", json={"messages": [QUESTION]},
                          headers={"X-Request-Id": "req-42"})
    assert response.json()["id"] == "chatcmpl-req-42"


# -- streaming ------------------------------------------------------------------------------


def test_stream_with_include_usage_reports_the_same_usage_and_text_as_non_streamed(client):
    messages = [THINKING_OFF, QUESTION]
    whole = client.chat.completions.create(model=NEMOTRON, messages=messages, max_tokens=7)
    chunks = list(client.chat.completions.create(
        model=NEMOTRON, messages=messages, max_tokens=7, stream=True,
        stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == whole.choices[0].message.content
    finishing = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices]
    assert finishing[-1] == "length" and set(finishing[:-1]) == {None}
    assert chunks[-1].choices == []
    assert chunks[-1].usage == whole.usage
    assert all(chunk.usage is None for chunk in chunks[:-1])


def test_stream_without_include_usage_carries_no_usage(client):
    chunks = list(client.chat.completions.create(
        model=NEMOTRON, messages=[THINKING_OFF, QUESTION], stream=True))
    assert all(chunk.usage is None for chunk in chunks)
    assert all(chunk.choices for chunk in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_continuous_usage_grows_by_one_per_token_chunk(client):
    messages = [THINKING_OFF, QUESTION]
    chunks = list(client.chat.completions.create(
        model=NEMOTRON, messages=messages, stream=True,
        stream_options={"include_usage": True, "continuous_usage_stats": True}))
    prompt_tokens = count_chat_prompt_tokens(messages)
    counted = [chunk.usage.completion_tokens for chunk in chunks if chunk.choices]
    assert counted == list(range(OUTPUT_TOKENS + 1))  # the role chunk, then one per token
    assert {chunk.usage.prompt_tokens for chunk in chunks} == {prompt_tokens}
    assert all(c.usage.total_tokens == prompt_tokens + c.usage.completion_tokens for c in chunks)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == OUTPUT_TOKENS


def test_continuous_usage_without_include_usage_adds_nothing(client):
    # vLLM only honours continuous_usage_stats together with include_usage.
    chunks = list(client.chat.completions.create(
        model=NEMOTRON, messages=[THINKING_OFF, QUESTION], stream=True,
        stream_options={"continuous_usage_stats": True}))
    assert all(chunk.usage is None for chunk in chunks)


def test_the_stream_is_server_sent_events_ending_in_done(base_url):
    with httpx.stream("POST", f"{base_url}/v1/chat/completions", json={
        "messages": [THINKING_OFF, QUESTION], "max_tokens": 2, "stream": True,
    }) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = response.read().decode()
    events = raw.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    assert all(event.startswith("data: {") for event in events[:-2])
    assert json.loads(events[0][len("data: "):])["object"] == "chat.completion.chunk"


# -- reasoning toggle -----------------------------------------------------------------------


def test_nemotron_thinks_by_default_without_a_system_prompt(client):
    response = client.chat.completions.create(model=NEMOTRON, messages=[QUESTION])
    message = response.choices[0].message
    reasoning, answer = message.model_extra["reasoning"], message.content
    assert "think>" not in answer and count_text_tokens(answer) == OUTPUT_TOKENS
    assert count_text_tokens(reasoning) == REASONING_TOKENS
    thinking = THINK_OVERHEAD_TOKENS + REASONING_TOKENS
    assert response.usage.completion_tokens == OUTPUT_TOKENS + thinking
    assert response.usage.completion_tokens_details.reasoning_tokens == REASONING_TOKENS


def test_detailed_thinking_on_emits_a_think_block(client):
    response = client.chat.completions.create(model=NEMOTRON, messages=[THINKING_ON, QUESTION])
    message = response.choices[0].message
    assert message.model_extra["reasoning"] and "think>" not in message.content


def test_detailed_thinking_off_emits_no_think_block(client):
    response = client.chat.completions.create(model=NEMOTRON, messages=[THINKING_OFF, QUESTION])
    assert "think>" not in response.choices[0].message.content


def test_the_toggle_line_counts_inside_a_longer_system_prompt(client):
    system = {"role": "system", "content": "detailed thinking off\nYou are a terse assistant."}
    response = client.chat.completions.create(model=NEMOTRON, messages=[system, QUESTION])
    assert "think>" not in response.choices[0].message.content


def test_models_without_the_toggle_never_think_and_accept_reasoning_effort():
    llama = "meta-llama/Llama-3.3-70B-Instruct"
    gpt_oss = "openai/gpt-oss-120b"
    settings = simulator_settings(served_model_names=[llama, gpt_oss])
    with running_simulator(settings) as url:
        with openai.OpenAI(base_url=f"{url}/v1", api_key="unused") as client:
            plain = client.chat.completions.create(model=llama, messages=[THINKING_ON, QUESTION])
            effort = client.chat.completions.create(
                model=gpt_oss, messages=[QUESTION], reasoning_effort="high")
    assert "think>" not in plain.choices[0].message.content
    assert "think>" not in effort.choices[0].message.content
    assert effort.usage.prompt_tokens == count_chat_prompt_tokens([QUESTION])


# -- /v1/completions ------------------------------------------------------------------------


def test_text_completions_count_the_prompt_and_stream_usage(client):
    prompt = "Once upon a time, in a land far away,"
    whole = client.completions.create(model=NEMOTRON, prompt=prompt, max_tokens=6)
    assert whole.usage.prompt_tokens == count_completion_prompt_tokens(prompt)
    assert whole.usage.completion_tokens == 6
    chunks = list(client.completions.create(
        model=NEMOTRON, prompt=prompt, max_tokens=6, stream=True,
        stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert chunks[-1].usage == whole.usage


def test_text_completions_take_token_ids(client):
    response = client.completions.create(model=NEMOTRON, prompt=[1, 2, 3, 4], max_tokens=2)
    assert response.usage.prompt_tokens == 4


# -- metrics --------------------------------------------------------------------------------


def test_metrics_counters_increase_by_the_exact_token_counts(client, base_url):
    before = metric_samples(base_url)
    messages = [THINKING_OFF, QUESTION]
    client.chat.completions.create(model=NEMOTRON, messages=messages, max_tokens=4)
    list(client.chat.completions.create(model=NEMOTRON, messages=messages, stream=True))
    after = metric_samples(base_url)

    def grew(name, **labels):
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert grew("vllm:prompt_tokens_total") == 2 * count_chat_prompt_tokens(messages)
    assert grew("vllm:generation_tokens_total") == 4 + OUTPUT_TOKENS
    assert grew("vllm:request_success_total", finished_reason="length") == 1
    assert grew("vllm:request_success_total", finished_reason="stop") == 1
    assert grew("vllm:time_to_first_token_seconds_count") == 2
    assert grew("vllm:e2e_request_latency_seconds_count") == 2
    assert grew("vllm:inter_token_latency_seconds_count") == 3 + OUTPUT_TOKENS - 1
    assert metric(after, "vllm:num_requests_running") == 0
    assert metric(after, "vllm:num_requests_waiting") == 0
    assert metric(after, "vllm:kv_cache_usage_perc") == 0


def test_each_app_has_its_own_metrics(base_url):
    with running_simulator(simulator_settings()) as fresh:
        assert metric(metric_samples(fresh), "vllm:prompt_tokens_total") == 0


# -- errors ---------------------------------------------------------------------------------


def _post(base_url: str, content: bytes | str, path: str = "/v1/chat/completions"):
    return httpx.post(f"{base_url}{path}", content=content,
                      headers={"content-type": "application/json"})


@pytest.mark.parametrize("body, param", [
    # Request validation, as vLLM's FastAPI layer reports it: type "Bad Request", param body.*
    (b"{not json", "body"),
    (b"[1, 2]", "body"),
    (b'{"model": "x"}', "body.messages"),
    (b'{"messages": []}', "body.messages"),
    (b'{"messages": "hello"}', "body.messages"),
    (b'{"messages": [{"content": "no role"}]}', "body.messages.0.role"),
    (b'{"messages": [{"role": "user", "content": 5}]}', "body.messages.0.content"),
    (b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": "many"}', "body.max_tokens"),
    (b'{"messages": [{"role": "user", "content": "x"}], "stream": [true]}', "body.stream"),
    # The engine's own checks: type "BadRequestError", the field as param
    (b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}', "max_tokens"),
    (b'{"messages": [{"role": "user", "content": "x"}], "n": 0}', "n"),
    (b'{"messages": [{"role": "user", "content": "x"}], "stream_options": {}}', "stream_options"),
    (b'{"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}',
     "body.messages.0.content"),
])
def test_bad_chat_requests_get_a_400_in_openai_shape(base_url, body, param):
    response = _post(base_url, body)
    assert response.status_code == 400
    error = response.json()["error"]
    validation = param.startswith("body")
    assert error["type"] == ("Bad Request" if validation else "BadRequestError")
    assert error["code"] == 400 and error["param"] == param and error["message"]


def test_an_unknown_model_gets_vllms_404(client):
    with pytest.raises(openai.NotFoundError) as raised:
        client.chat.completions.create(model="no-such-model", messages=[QUESTION])
    assert raised.value.body["message"] == "The model `no-such-model` does not exist."
    assert raised.value.body["param"] == "model"


def test_bad_completion_requests_get_a_400(base_url):
    assert _post(base_url, b'{"prompt": 5}', "/v1/completions").status_code == 400
    assert _post(base_url, b'{"prompt": ["a", 5]}', "/v1/completions").status_code == 400
    assert _post(base_url, b"{}", "/v1/completions").json()["error"]["param"] == "body.prompt"


def test_context_length_limits_in_vllms_words():
    with running_simulator(simulator_settings(max_model_len=40, output_tokens=100)) as url:
        with openai.OpenAI(base_url=f"{url}/v1", api_key="unused") as client:
            long_prompt = [THINKING_OFF, {"role": "user", "content": "word " * 40}]
            with pytest.raises(openai.BadRequestError) as raised:
                client.chat.completions.create(model=NEMOTRON, messages=long_prompt)
            too_many = [THINKING_OFF, QUESTION]
            with pytest.raises(openai.BadRequestError) as asked_too_much:
                client.chat.completions.create(model=NEMOTRON, messages=too_many, max_tokens=30)
            capped = client.chat.completions.create(model=NEMOTRON, messages=too_many)
    prompt_tokens = count_chat_prompt_tokens(long_prompt)
    assert raised.value.body["message"].startswith(
        "This model's maximum context length is 40 tokens. However, you requested 0 output "
        f"tokens and your prompt contains at least {prompt_tokens} input tokens")
    assert raised.value.body["param"] == "input_tokens"
    assert "you requested 30 output tokens" in asked_too_much.value.body["message"]
    # Without max_tokens, generation stops where the context ends.
    assert capped.usage.total_tokens == 40
    assert capped.choices[0].finish_reason == "length"


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(["messages", "role", "content", "model", "max_tokens",
                                       "stream", "stream_options", "n", "prompt", "type",
                                       "text", "include_usage", "tool_calls", "function"]),
                      children, max_size=5),
    max_leaves=12)
# Near-valid bodies reach the generation path; each field may still be any JSON value.
NEAR_VALID = st.fixed_dictionaries(
    {"messages": st.lists(st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "user", "assistant"]) | JSON_VALUES},
        optional={"content": st.text() | JSON_VALUES, "tool_calls": JSON_VALUES}), max_size=3)},
    optional={"model": st.sampled_from([NEMOTRON, "other"]) | JSON_VALUES,
              "prompt": st.text() | st.lists(st.integers(0, 10), max_size=5) | JSON_VALUES,
              "max_tokens": st.integers(-2, 50) | JSON_VALUES,
              "max_completion_tokens": st.integers(-2, 50) | JSON_VALUES,
              "stream": st.booleans() | JSON_VALUES,
              "stream_options": JSON_VALUES | st.fixed_dictionaries(
                  {}, optional={"include_usage": st.booleans() | JSON_VALUES,
                                "continuous_usage_stats": st.booleans() | JSON_VALUES}),
              "n": st.integers(0, 3) | JSON_VALUES,
              "seed": st.integers() | JSON_VALUES,
              "reasoning_effort": st.sampled_from(["low", "high", "bogus"]) | JSON_VALUES})


@hypothesis_settings(max_examples=300, deadline=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=JSON_VALUES | NEAR_VALID)
def test_no_request_body_gets_a_server_error(http, body):
    for path in ("/v1/chat/completions", "/v1/completions"):
        response = http.post(path, content=json.dumps(body),
                             headers={"content-type": "application/json"})
        assert response.status_code in (200, 400, 404), response.text
        if response.status_code != 200:
            assert set(response.json()["error"]) == {"message", "type", "param", "code"}


# -- scheduling: disconnects and the queue --------------------------------------------------


def test_a_client_disconnect_stops_generation_and_frees_the_slot():
    settings = simulator_settings(inter_token_seconds=0.02, output_tokens=2000)
    with running_simulator(settings) as url:
        with httpx.stream("POST", f"{url}/v1/chat/completions", json={
            "messages": [THINKING_OFF, QUESTION], "stream": True,
        }) as response:
            lines = response.iter_lines()
            for _ in range(3):
                next(line for line in lines if line.startswith("data: "))
            assert metric(metric_samples(url), "vllm:num_requests_running") == 1
        # Leaving the block closes the connection mid-stream.
        wait_for(lambda: metric(metric_samples(url), "vllm:num_requests_running") == 0)
        samples = metric_samples(url)
        assert metric(samples, "vllm:request_success_total", finished_reason="abort") == 1
        assert metric(samples, "vllm:request_success_total", finished_reason="stop") == 0
        assert 3 <= metric(samples, "vllm:generation_tokens_total") < 2000
        generated = metric(samples, "vllm:generation_tokens_total")
        time.sleep(0.1)  # a leaked generator would keep counting tokens
        assert metric(metric_samples(url), "vllm:generation_tokens_total") == generated
        assert metric(samples, "vllm:kv_cache_usage_perc") == 0


def test_a_disconnect_while_waiting_for_a_non_streamed_answer_aborts_it():
    with running_simulator(simulator_settings(ttft_seconds=30)) as url:
        def ask():
            try:
                httpx.post(f"{url}/v1/chat/completions", json={"messages": [QUESTION]},
                           timeout=0.5)
            except httpx.TimeoutException:
                pass  # the client gives up and closes the connection

        asker = threading.Thread(target=ask)
        asker.start()
        asker.join()
        wait_for(lambda: metric(metric_samples(url), "vllm:request_success_total",
                                finished_reason="abort") == 1)
        assert metric(metric_samples(url), "vllm:num_requests_running") == 0


def test_requests_beyond_max_num_seqs_wait_in_the_queue():
    settings = simulator_settings(max_num_seqs=1, inter_token_seconds=0.02, output_tokens=2000)
    with running_simulator(settings) as url:
        with httpx.stream("POST", f"{url}/v1/chat/completions", json={
            "messages": [THINKING_OFF, QUESTION], "stream": True,
        }) as first:
            lines = first.iter_lines()  # keep a reference: dropping it closes the connection
            next(line for line in lines if line.startswith("data: "))
            answers = []
            second = threading.Thread(target=lambda: answers.append(httpx.post(
                f"{url}/v1/chat/completions",
                json={"messages": [THINKING_OFF, QUESTION], "max_tokens": 2}, timeout=30)))
            second.start()
            wait_for(lambda: metric(metric_samples(url), "vllm:num_requests_waiting") == 1)
            assert metric(metric_samples(url), "vllm:num_requests_running") == 1
        second.join(30)
        assert answers[0].status_code == 200
        samples = metric_samples(url)
        assert metric(samples, "vllm:num_requests_waiting") == 0
        assert metric(samples, "vllm:request_queue_time_seconds_count") == 2


def test_prefix_cache_hits_are_reported_as_cached_tokens():
    system = {"role": "system", "content": "detailed thinking off\n" + "You answer briefly. " * 12}
    with running_simulator(simulator_settings(enable_prompt_tokens_details=True)) as url:
        with openai.OpenAI(base_url=f"{url}/v1", api_key="unused") as client:
            first = client.chat.completions.create(model=NEMOTRON, messages=[system, QUESTION])
            second = client.chat.completions.create(
                model=NEMOTRON, messages=[system, {"role": "user", "content": "And Spain?"}])
            samples = metric_samples(url)
    shared = count_chat_prompt_tokens([system])
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    expected = shared - shared % PREFIX_CACHE_BLOCK_TOKENS
    assert expected > 0
    assert second.usage.prompt_tokens_details.cached_tokens == expected
    assert metric(samples, "vllm:prefix_cache_hits_total") == expected


def test_time_to_first_token_and_inter_token_latency_are_simulated():
    settings = simulator_settings(ttft_seconds=0.3, inter_token_seconds=0.05, output_tokens=10)
    with running_simulator(settings) as url:
        with openai.OpenAI(base_url=f"{url}/v1", api_key="unused") as client:
            client.chat.completions.create(model=NEMOTRON, messages=[THINKING_OFF, QUESTION])
        samples = metric_samples(url)
    # Lower bounds only, with margin: a loaded machine may be slower, never faster.
    assert metric(samples, "vllm:time_to_first_token_seconds_count") == 1
    assert metric(samples, "vllm:time_to_first_token_seconds_bucket", le="0.1") == 0
    assert metric(samples, "vllm:inter_token_latency_seconds_count") == 9
    assert metric(samples, "vllm:inter_token_latency_seconds_bucket", le="0.025") == 0


# -- helpers and command line ---------------------------------------------------------------


def test_the_subprocess_helper_serves_the_same_answers(client):
    with simulator_subprocess(simulator_settings()) as url:
        with openai.OpenAI(base_url=f"{url}/v1", api_key="unused") as other:
            remote = other.chat.completions.create(
                model=NEMOTRON, messages=[THINKING_OFF, QUESTION])
    local = client.chat.completions.create(model=NEMOTRON, messages=[THINKING_OFF, QUESTION])
    assert remote.choices[0].message.content == local.choices[0].message.content
    assert remote.usage == local.usage


def test_settings_from_the_deployment_config_follow_its_model():
    from inferplane.config import load

    from tests.conftest import EXAMPLE

    config = load(EXAMPLE)
    settings = SimulatorSettings.from_deployment(config)
    assert settings.served_model_names == [config.served_model_name]
    assert settings.max_model_len == config.max_model_len
    assert settings.kv_cache_capacity_tokens == config.sizing().kv_token_capacity


def test_the_cli_refuses_a_model_it_cannot_place_in_the_catalog():
    from inferplane.cli import app

    result = CliRunner().invoke(app, ["simulator", "--served-model-name", "my-model"])
    assert result.exit_code == 2
    assert "catalog_keys" in result.output
