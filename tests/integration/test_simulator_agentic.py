"""The agentic API through the gateway on the simulator: tools in every tool_choice mode, streamed
and not, parallel calls, the tool-result round trip, and response_format — with the real openai
client, as `inferplane dev` serves it. The same shapes are checked on real vLLM in tests/vllm/.
"""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from inferplane.gateway.testing import running_data_plane
from inferplane.simulator.agentic import instance
from inferplane.simulator.tokens import count_chat_prompt_tokens

from .test_gateway_dev import dev_server  # noqa: F401 - the `inferplane dev` fixture

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "Local time in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                   "hours_ahead": {"type": "integer",
                                                                   "minimum": 1, "maximum": 5}},
                   "required": ["city", "hours_ahead"]}}}
TOOLS = [WEATHER, TIME]
ASK = [{"role": "user", "content": "What is the weather in Vienna?"}]


@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    with running_data_plane(tmp_path_factory.mktemp("agentic")) as plane:
        key, _ = plane.add_key()
        yield plane, plane.client(key)


def schema_of(name):
    return next(t["function"]["parameters"] for t in TOOLS if t["function"]["name"] == name)


def assert_valid_calls(tool_calls, names):
    assert [call.function.name for call in tool_calls] == names
    for call in tool_calls:
        assert call.type == "function" and call.id.startswith("chatcmpl-tool-")
        jsonschema.validate(json.loads(call.function.arguments), schema_of(call.function.name))
    assert len({call.id for call in tool_calls}) == len(tool_calls)


def collect_stream(client, model, **kwargs):
    """The streamed answer folded the way OpenAI's docs tell clients to fold tool-call deltas."""
    calls: dict[int, dict] = {}
    content, finish, usage = [], None, None
    stream = client.chat.completions.create(model=model, stream=True,
                                            stream_options={"include_usage": True}, **kwargs)
    for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            if choice.delta.content:
                content.append(choice.delta.content)
            for delta in choice.delta.tool_calls or ():
                call = calls.setdefault(delta.index, {"id": None, "name": "", "arguments": ""})
                if delta.id:
                    assert call["id"] is None, "a call's id is sent once"
                    call["id"] = delta.id
                if delta.function and delta.function.name:
                    call["name"] += delta.function.name
                if delta.function and delta.function.arguments:
                    call["arguments"] += delta.function.arguments
    return [calls[i] for i in sorted(calls)], "".join(content), finish, usage


def test_auto_calls_the_tool_and_lists_the_tools_in_the_prompt(plane):
    plane, client = plane
    response = client.chat.completions.create(model=plane.model, messages=ASK, tools=TOOLS)
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert_valid_calls(choice.message.tool_calls, ["get_weather"])
    # prompt tokens include the tools the template renders, and the gateway's toggle message
    toggled = [{"role": "system", "content": "detailed thinking on"}, *ASK]
    assert response.usage.prompt_tokens == count_chat_prompt_tokens(toggled, TOOLS)
    record = plane.wait_for_record(response.id.removeprefix("chatcmpl-"))
    assert record.completion_tokens == response.usage.completion_tokens


def test_auto_makes_parallel_calls_for_every_tool_the_question_names(plane):
    plane, client = plane
    messages = [{"role": "user", "content": "Use get_weather and get_time for Lisbon."}]
    response = client.chat.completions.create(model=plane.model, messages=messages, tools=TOOLS)
    assert_valid_calls(response.choices[0].message.tool_calls, ["get_weather", "get_time"])
    single = client.chat.completions.create(model=plane.model, messages=messages, tools=TOOLS,
                                            parallel_tool_calls=False)
    assert_valid_calls(single.choices[0].message.tool_calls, ["get_weather"])


def test_required_and_named_choices_follow_vllms_guided_shapes(plane):
    plane, client = plane
    required = client.chat.completions.create(model=plane.model, messages=ASK, tools=TOOLS,
                                              tool_choice="required")
    assert required.choices[0].finish_reason == "tool_calls"
    assert required.choices[0].message.content == ""
    assert_valid_calls(required.choices[0].message.tool_calls, ["get_weather"])
    named = client.chat.completions.create(
        model=plane.model, messages=ASK, tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_time"}})
    assert named.choices[0].finish_reason == "stop"  # OpenAI's rule for a named choice
    assert_valid_calls(named.choices[0].message.tool_calls, ["get_time"])


def test_none_answers_in_text(plane):
    plane, client = plane
    response = client.chat.completions.create(model=plane.model, messages=ASK, tools=TOOLS,
                                              tool_choice="none")
    assert response.choices[0].finish_reason == "stop"
    assert not response.choices[0].message.tool_calls
    assert response.choices[0].message.content


@pytest.mark.parametrize("tool_choice,names,finish", [
    ("auto", ["get_weather", "get_time"], "tool_calls"),
    ("required", ["get_weather", "get_time"], "tool_calls"),
    ({"type": "function", "function": {"name": "get_time"}}, ["get_time"], "stop"),
])
def test_streamed_calls_fold_into_the_same_calls_and_are_billed(plane, tool_choice, names,
                                                                 finish):
    plane, client = plane
    messages = [{"role": "user", "content": "get_weather and get_time for Paris, please"}]
    calls, content, finish_reason, usage = collect_stream(
        client, plane.model, messages=messages, tools=TOOLS, tool_choice=tool_choice)
    assert finish_reason == finish and content == ""
    assert [call["name"] for call in calls] == names
    for call in calls:
        assert call["id"].startswith("chatcmpl-tool-")
        jsonschema.validate(json.loads(call["arguments"]), schema_of(call["name"]))
    whole = client.chat.completions.create(model=plane.model, messages=messages, tools=TOOLS,
                                           tool_choice=tool_choice)
    assert usage.completion_tokens == whole.usage.completion_tokens > 0
    assert [json.loads(c["arguments"]) for c in calls] == [
        json.loads(c.function.arguments) for c in whole.choices[0].message.tool_calls]


def test_tool_result_round_trip_ends_in_a_text_answer(plane):
    plane, client = plane
    first = client.chat.completions.create(model=plane.model, messages=ASK, tools=TOOLS)
    call = first.choices[0].message.tool_calls[0]
    messages = [*ASK, first.choices[0].message.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": call.id, "content": '{"celsius": 21}'}]
    second = client.chat.completions.create(model=plane.model, messages=messages, tools=TOOLS)
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content and not second.choices[0].message.tool_calls
    assert second.usage.prompt_tokens > first.usage.prompt_tokens


def test_a_named_tool_that_was_not_sent_is_a_400_naming_tool_choice(plane):
    plane, client = plane
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=plane.model, messages=ASK, tools=TOOLS,
            tool_choice={"type": "function", "function": {"name": "launch_rocket"}})
    assert "launch_rocket" in caught.value.message
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=plane.model, messages=ASK, tool_choice="required")


PERSON = {"type": "object", "additionalProperties": False,
          "required": ["name", "age", "email", "tags", "address", "role", "born"],
          "properties": {
              "name": {"type": "string", "minLength": 12},
              "age": {"type": "integer", "minimum": 18, "exclusiveMaximum": 30, "multipleOf": 4},
              "email": {"type": "string", "format": "email"},
              "born": {"type": "string", "format": "date"},
              "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2,
                       "maxItems": 3},
              "address": {"$ref": "#/$defs/address"},
              "role": {"anyOf": [{"enum": ["admin", "user"]}, {"type": "null"}]},
              "score": {"type": ["number", "null"], "minimum": 0.5, "maximum": 0.75}},
          "$defs": {"address": {"type": "object", "required": ["city"],
                                "properties": {"city": {"type": "string", "maxLength": 5},
                                               "zip": {"const": "1010"}}}}}


@pytest.mark.parametrize("stream", [False, True])
def test_json_schema_answers_validate_against_the_schema(plane, stream):
    plane, client = plane
    kwargs = dict(model=plane.model, messages=[{"role": "user", "content": "Invent a person."}],
                  response_format={"type": "json_schema",
                                   "json_schema": {"name": "person", "schema": PERSON}})
    if stream:
        _, text, finish, _ = collect_stream(client, **kwargs)
    else:
        response = client.chat.completions.create(**kwargs)
        text, finish = response.choices[0].message.content, response.choices[0].finish_reason
    assert finish == "stop"
    jsonschema.validate(json.loads(text), PERSON)


def test_json_object_answers_are_a_json_object(plane):
    plane, client = plane
    response = client.chat.completions.create(
        model=plane.model, messages=[{"role": "user", "content": "Reply in JSON."}],
        response_format={"type": "json_object"})
    assert isinstance(json.loads(response.choices[0].message.content), dict)


@pytest.mark.parametrize("seed", range(6))
def test_schema_instances_are_valid_for_many_seeds(seed):
    jsonschema.validate(instance(PERSON, seed), PERSON)
    for name in ("get_weather", "get_time"):
        jsonschema.validate(instance(schema_of(name), seed), schema_of(name))


def test_without_tool_calling_the_simulator_refuses_tool_choices_as_vllm_does(tmp_path):
    from inferplane.config import examples_dir, load
    from inferplane.simulator import SimulatorSettings

    config = load(examples_dir() / "nemotron-ultra.yaml")
    config.model.tool_calling = False
    settings = SimulatorSettings.from_deployment(config)
    assert settings.enable_auto_tool_choice is False
    with running_data_plane(tmp_path, settings) as plane:
        key, _ = plane.add_key()
        client = plane.client(key)
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model=plane.model, messages=ASK, tools=TOOLS,
                                           tool_choice="auto")
        assert "--enable-auto-tool-choice" in caught.value.message
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model=plane.model, messages=ASK, tools=TOOLS,
                                           tool_choice="required")
        assert '"required" requires --tool-call-parser' in caught.value.message
        unset = client.chat.completions.create(model=plane.model, messages=ASK, tools=TOOLS)
        assert unset.choices[0].finish_reason == "stop" and not unset.choices[0].message.tool_calls


def test_inferplane_dev_answers_a_tools_request_with_tool_calls(dev_server):
    client = openai.OpenAI(base_url=dev_server.printed("Base URL"),
                           api_key=dev_server.printed("API key"), max_retries=0, timeout=30)
    response = client.chat.completions.create(model=dev_server.printed("Model"), messages=ASK,
                                              tools=TOOLS)
    assert response.choices[0].finish_reason == "tool_calls"
    assert_valid_calls(response.choices[0].message.tool_calls, ["get_weather"])
