"""Tool calling on real vLLM (CPU) with our Nemotron plugin and chat template, through the gateway,
with the official openai client.

The server here serves the tiny checkpoint trained for a few CPU minutes on the chats of
`inferplane.nemotron.examples` (nemotron/training.py), so for `tool_choice: auto` the model
itself writes `<TOOLCALL>[...]</TOOLCALL>` and vLLM runs our parser on it — streamed and not.
`required` and named choices come out of vLLM's guided decoding.
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from inferplane.engines import vllm_cpu
from inferplane.gateway.keys import KeysFile, save_keys_file
from inferplane.gateway.testing import DataPlane, deployment_gateway_settings, running_gateway
from inferplane.nemotron import examples as ex
from inferplane.nemotron.training import tool_trained_checkpoint

from .conftest import _require_venv

OFF = ex.REASONING_OFF
# A model this small wanders inside guided JSON (whitespace is always allowed) until
# max_tokens; a real one does not. Compact JSON keeps the test about our wiring.
# The tiny model has not learnt to write the arguments yet (after 150+250 steps it writes
# '<TOOLCALL>[{"name": "get_weather", "arguments": "arguments...'): strict, so these fail loudly
# once it does and the marker must go.
NOT_YET_LEARNT = pytest.mark.xfail(strict=True, reason="tiny model writes <TOOLCALL> and the "
                                   "name but not yet the arguments (training schedule)")
COMPACT_JSON = ["--structured-outputs-config",
                '{"backend": "xgrammar", "disable_any_whitespace": true}']


@pytest.fixture(scope="module")
def tools_server(tmp_path_factory):
    """Real vLLM with production's Nemotron flags on the tool-trained tiny checkpoint."""
    _require_venv()
    checkpoint = tool_trained_checkpoint()
    log_path = tmp_path_factory.mktemp("vllm-tools-log") / "vllm.log"
    server = vllm_cpu.start(checkpoint, extra_args=vllm_cpu.deployment_vllm_args() + COMPACT_JSON,
                            log_path=log_path)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def plane(tools_server, tmp_path_factory) -> DataPlane:
    tmp_path = tmp_path_factory.mktemp("gateway-tools-on-vllm")
    settings = deployment_gateway_settings(tmp_path, tools_server.url)
    save_keys_file(Path(settings.keys_file), KeysFile())
    with running_gateway(settings) as (url, app):
        yield DataPlane(url, tools_server.url, app, settings, Path(settings.keys_file))


@pytest.fixture(scope="module")
def client(plane):
    secret, _ = plane.add_key()
    return plane.client(secret, timeout=300.0)


def ask(client, plane, messages, **kwargs):
    return client.chat.completions.create(model=plane.model, messages=messages, tools=ex.TOOLS,
                                          temperature=0.0, max_tokens=160, **kwargs)


def folded_stream(client, plane, messages, **kwargs):
    """(calls, content, reasoning, finish_reason) of a streamed answer, deltas folded by index."""
    calls: dict[int, dict] = {}
    content, reasoning, finish = [], [], None
    stream = client.chat.completions.create(model=plane.model, messages=messages,
                                            tools=ex.TOOLS, temperature=0.0, max_tokens=160,
                                            stream=True, **kwargs)
    for chunk in stream:
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            content.append(choice.delta.content or "")
            reasoning.append(getattr(choice.delta, "reasoning", None) or "")
            for delta in choice.delta.tool_calls or ():
                call = calls.setdefault(delta.index, {"id": None, "name": "", "arguments": ""})
                call["id"] = call["id"] or delta.id
                if delta.function:
                    call["name"] += delta.function.name or ""
                    call["arguments"] += delta.function.arguments or ""
    folded = [{"name": calls[i]["name"], "arguments": json.loads(calls[i]["arguments"]),
               "id": calls[i]["id"]} for i in sorted(calls)]
    return folded, "".join(content), "".join(reasoning), finish


def parsed(tool_calls):
    return [{"name": call.function.name, "arguments": json.loads(call.function.arguments)}
            for call in tool_calls]


def schema_of(name):
    return next(t["function"]["parameters"] for t in ex.TOOLS if t["function"]["name"] == name)


@NOT_YET_LEARNT
def test_auto_the_model_writes_a_toolcall_and_our_plugin_parses_it(client, plane):
    response = ask(client, plane, [OFF, {"role": "user", "content": ex.WEATHER_QUESTION}])
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls", choice.message
    assert parsed(choice.message.tool_calls) == [ex.WEATHER_CALL]
    assert not choice.message.content  # the <TOOLCALL> text is not left in the content
    assert choice.message.tool_calls[0].id.startswith("chatcmpl-tool-")


@NOT_YET_LEARNT
def test_auto_parallel_calls_streamed_and_not(client, plane):
    messages = [OFF, {"role": "user", "content": ex.PARALLEL_QUESTION}]
    whole = ask(client, plane, messages)
    assert parsed(whole.choices[0].message.tool_calls) == ex.PARALLEL_CALLS
    calls, content, _, finish = folded_stream(client, plane, messages)
    assert finish == "tool_calls" and content == ""
    assert [{"name": c["name"], "arguments": c["arguments"]} for c in calls] == ex.PARALLEL_CALLS
    assert all(c["id"] for c in calls) and calls[0]["id"] != calls[1]["id"]


@NOT_YET_LEARNT
def test_tool_result_round_trip_answers_in_text(client, plane):
    first = ask(client, plane, [OFF, {"role": "user", "content": ex.WEATHER_QUESTION}])
    call = first.choices[0].message.tool_calls[0]
    messages = [OFF, {"role": "user", "content": ex.WEATHER_QUESTION},
                first.choices[0].message.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": call.id, "content": ex.TOOL_RESULT}]
    second = ask(client, plane, messages)
    assert second.choices[0].finish_reason == "stop"
    assert not second.choices[0].message.tool_calls
    assert second.choices[0].message.content == ex.ANSWER_AFTER_RESULT


@pytest.mark.parametrize("stream", [False, True])
def test_required_gives_valid_calls_through_guided_decoding(client, plane, stream):
    messages = [OFF, {"role": "user", "content": ex.WEATHER_QUESTION}]
    if stream:
        calls, content, _, finish = folded_stream(client, plane, messages, tool_choice="required")
    else:
        choice = ask(client, plane, messages, tool_choice="required").choices[0]
        calls, content, finish = parsed(choice.message.tool_calls), choice.message.content, \
            choice.finish_reason
    assert finish == "tool_calls" and calls and not content
    for call in calls:
        jsonschema.validate(call["arguments"], schema_of(call["name"]))


@pytest.mark.parametrize("stream", [False, True])
def test_named_choice_calls_that_function_with_valid_arguments(client, plane, stream):
    messages = [OFF, {"role": "user", "content": ex.WEATHER_QUESTION}]
    named = {"type": "function", "function": {"name": "get_time"}}
    if stream:
        calls, _, _, finish = folded_stream(client, plane, messages, tool_choice=named)
    else:
        choice = ask(client, plane, messages, tool_choice=named).choices[0]
        calls, finish = parsed(choice.message.tool_calls), choice.finish_reason
    assert finish == "stop"  # OpenAI's (and vLLM's) finish reason for a named choice
    assert [call["name"] for call in calls] == ["get_time"]
    jsonschema.validate(calls[0]["arguments"], schema_of("get_time"))


def test_none_never_parses_tool_calls(client, plane):
    response = ask(client, plane, [OFF, {"role": "user", "content": ex.WEATHER_QUESTION}],
                   tool_choice="none")
    assert not response.choices[0].message.tool_calls
    assert response.choices[0].finish_reason in ("stop", "length")
