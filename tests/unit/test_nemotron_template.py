"""Our Nemotron chat template, rendered the way transformers renders it (immutable sandbox)."""

from __future__ import annotations

import json

import pytest
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from inferplane.nemotron import CHAT_TEMPLATE_PATH
from inferplane.nemotron.examples import TOOLS, round_trip_messages


@pytest.fixture(scope="module")
def template():
    # transformers' settings: trim_blocks, lstrip_blocks, loopcontrols, a tojson filter.
    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                extensions=[loopcontrols])
    environment.filters["tojson"] = lambda value: json.dumps(value, ensure_ascii=False)
    compiled = environment.from_string(CHAT_TEMPLATE_PATH.read_text())

    def render(messages, tools=None):
        return compiled.render(messages=messages, tools=tools, bos_token="<|begin_of_text|>",
                               add_generation_prompt=True)
    return render


def between(text, start, end):
    return text.split(start, 1)[1].split(end, 1)[0]


def test_reasoning_is_on_without_a_system_prompt_and_a_toggle_is_kept(template):
    header = "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
    assert template([{"role": "user", "content": "hi"}]).startswith(
        header + "detailed thinking on<|eot_id|>")
    off = template([{"role": "system", "content": "detailed thinking off"},
                    {"role": "user", "content": "hi"}])
    assert off.startswith(header + "detailed thinking off<|eot_id|>")
    assert off.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert off.count("<|start_header_id|>system") == 1


def test_tools_are_listed_as_json_with_nulls_dropped(template):
    sent = [{"type": "function", "function": {**TOOLS[0]["function"], "strict": None}},
            {"type": "function", "function": {"name": "ping", "description": None,
                                              "parameters": None}}]
    listed = json.loads(between(template([{"role": "user", "content": "hi"}], sent),
                                "<AVAILABLE_TOOLS>", "</AVAILABLE_TOOLS>"))
    assert listed == [TOOLS[0], {"type": "function", "function": {
        "name": "ping", "parameters": {"type": "object", "properties": {}}}}]
    assert "<AVAILABLE_TOOLS>" not in template([{"role": "user", "content": "hi"}])


def test_assistant_tool_calls_and_grouped_tool_results_round_trip(template):
    messages = round_trip_messages()
    messages[2]["tool_calls"].append({"id": "b", "type": "function", "function": {
        "name": "get_time", "arguments": {"city": "Paris"}}})  # arguments as vLLM passes a dict
    messages.append({"role": "tool", "tool_call_id": "b", "content": '"10:00"'})
    text = template(messages, TOOLS)
    turn = text.split("<|start_header_id|>assistant<|end_header_id|>\n\n", 1)[1]
    calls = json.loads(between(turn, "<TOOLCALL>", "</TOOLCALL>"))
    assert calls == [{"name": "get_weather", "arguments": {"city": "Paris"}},
                     {"name": "get_time", "arguments": {"city": "Paris"}}]
    results = between(text, "<|start_header_id|>user<|end_header_id|>\n\n<TOOL_RESPONSE>",
                      "</TOOL_RESPONSE><|eot_id|>")
    assert json.loads(results) == [{"celsius": 21}, "10:00"]
    assert text.count("<TOOL_RESPONSE>") == 1  # both results in one turn


def test_earlier_reasoning_is_not_fed_back(template):
    text = template([{"role": "user", "content": "q"},
                     {"role": "assistant", "content": "<think>\nsecret plan\n</think>\n\nAnswer."},
                     {"role": "user", "content": "again"}])
    assert "secret plan" not in text and "Answer.<|eot_id|>" in text
