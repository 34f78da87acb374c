"""Tool calling on real vLLM (CPU) with our Nemotron plugin and chat template, through the gateway,
with the official openai client.

For `tool_choice: auto` the server serves the tiny checkpoint trained for about a CPU minute on
Nemotron's reasoning toggle and the chats of `inferplane.nemotron.examples`
(tiny_nemotron.trained_checkpoint): the model itself writes `<TOOLCALL>[...]</TOOLCALL>` and vLLM
runs our parser on it, streamed and not. `required` and named choices come out of vLLM's guided
decoding, on the session's random-weight checkpoint: vLLM's grammar for them (compact JSON, a
"parameters" key) is not the format the trained model learnt, and forced off it, a model this
small wanders until max_tokens.
"""

from __future__ import annotations

import json

import jsonschema
import pytest

from inferplane.nemotron import examples as ex

OFF = ex.REASONING_OFF


# For the guided choices on random weights: an open string lets such a model write until
# max_tokens; an enum keeps the test about our wiring (the grammar still has to hold).
CITY = {"type": "string", "enum": ["Paris", "Rome", "Berlin"]}
GUIDED_TOOLS = [{"type": "function", "function": {
    "name": tool["function"]["name"], "parameters": {
        "type": "object", "properties": {"city": CITY}, "required": ["city"]}}}
    for tool in ex.TOOLS]


def ask(client, plane, messages, tools=ex.TOOLS, **kwargs):
    return client.chat.completions.create(model=plane.model, messages=messages, tools=tools,
                                          temperature=0.0, max_tokens=160, **kwargs)


def folded_stream(client, plane, messages, tools=ex.TOOLS, **kwargs):
    """(calls, content, reasoning, finish_reason) of a streamed answer, deltas folded by index."""
    calls: dict[int, dict] = {}
    content, reasoning, finish = [], [], None
    stream = client.chat.completions.create(model=plane.model, messages=messages,
                                            tools=tools, temperature=0.0, max_tokens=160,
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
    return next(t["function"]["parameters"] for t in GUIDED_TOOLS if t["function"]["name"] == name)


def test_auto_the_model_writes_a_toolcall_and_our_plugin_parses_it(
        trained_client, trained_plane):
    client, plane = trained_client, trained_plane
    raw = client.chat.completions.with_raw_response.create(
        model=plane.model, messages=[OFF, {"role": "user", "content": ex.WEATHER_QUESTION}],
        tools=ex.TOOLS, temperature=0.0, max_tokens=160)
    response = raw.parse()
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls", choice.message
    assert parsed(choice.message.tool_calls) == [ex.WEATHER_CALL]
    assert not choice.message.content  # the <TOOLCALL> text is not left in the content
    assert choice.message.tool_calls[0].id.startswith("chatcmpl-tool-")
    record = plane.wait_for_record(raw.headers["x-request-id"])  # the call's tokens are billed
    assert (record.prompt_tokens, record.completion_tokens) == \
        (response.usage.prompt_tokens, response.usage.completion_tokens)


def test_auto_parallel_calls_streamed_and_not(trained_client, trained_plane):
    client, plane = trained_client, trained_plane
    messages = [OFF, {"role": "user", "content": ex.PARALLEL_QUESTION}]
    whole = ask(client, plane, messages)
    assert parsed(whole.choices[0].message.tool_calls) == ex.PARALLEL_CALLS
    calls, content, _, finish = folded_stream(client, plane, messages)
    assert finish == "tool_calls" and content == ""
    assert [{"name": c["name"], "arguments": c["arguments"]} for c in calls] == ex.PARALLEL_CALLS
    assert all(c["id"] for c in calls) and calls[0]["id"] != calls[1]["id"]


def test_tool_result_round_trip_answers_in_text(trained_client, trained_plane):
    client, plane = trained_client, trained_plane
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
        calls, content, _, finish = folded_stream(client, plane, messages, GUIDED_TOOLS,
                                                  tool_choice="required")
    else:
        choice = ask(client, plane, messages, GUIDED_TOOLS, tool_choice="required").choices[0]
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
        calls, _, _, finish = folded_stream(client, plane, messages, GUIDED_TOOLS, tool_choice=named)
    else:
        choice = ask(client, plane, messages, GUIDED_TOOLS, tool_choice=named).choices[0]
        calls, finish = parsed(choice.message.tool_calls), choice.finish_reason
    assert finish == "stop"  # OpenAI's (and vLLM's) finish reason for a named choice
    assert [call["name"] for call in calls] == ["get_time"]
    jsonschema.validate(calls[0]["arguments"], schema_of("get_time"))


def test_none_leaves_the_models_toolcall_text_unparsed(trained_client, trained_plane):
    """vLLM still renders the tools (as the hosted API does), so the trained model writes its
    call; with `none` the parser must not turn it into tool_calls."""
    response = ask(trained_client, trained_plane,
                   [OFF, {"role": "user", "content": ex.WEATHER_QUESTION}], tool_choice="none")
    choice = response.choices[0]
    assert not choice.message.tool_calls and choice.finish_reason == "stop"
    assert choice.message.content == ex.tool_call_text([ex.WEATHER_CALL])
