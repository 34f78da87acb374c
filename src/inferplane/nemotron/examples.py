"""Tool-calling chats the tiny test checkpoint is trained on (a few CPU seconds), so real vLLM's
`tool_choice: auto` meets a model that really emits `<TOOLCALL>[...]</TOOLCALL>` — no mocked
parser input. The tests in tests/vllm/test_tools.py ask exactly these questions.

Reasoning is off in them ("detailed thinking off"), as NVIDIA's NIM documents tool calling for
Llama-Nemotron.
"""

from __future__ import annotations

import json
from typing import Any

REASONING_OFF = {"role": "system", "content": "detailed thinking off"}

# Short on purpose: training cost grows with the prompt, and every prompt lists these tools.
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TIME_TOOL = {"type": "function", "function": {
    "name": "get_time", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TOOLS = [WEATHER_TOOL, TIME_TOOL]

WEATHER_QUESTION = "Weather in Paris?"
WEATHER_CALL = {"name": "get_weather", "arguments": {"city": "Paris"}}
PARALLEL_QUESTION = "Weather and time in Rome?"
PARALLEL_CALLS = [{"name": "get_weather", "arguments": {"city": "Rome"}},
                  {"name": "get_time", "arguments": {"city": "Rome"}}]
TOOL_RESULT = '{"celsius": 21}'
ANSWER_AFTER_RESULT = "It is 21 degrees in Paris."


def tool_call_text(calls: list[dict[str, Any]]) -> str:
    """What the model emits for `calls`, in the format the chat template teaches."""
    return "<TOOLCALL>" + json.dumps(calls, ensure_ascii=False) + "</TOOLCALL>"


def assistant_tool_message(calls: list[dict[str, Any]]) -> dict[str, Any]:
    """The assistant turn a client sends back (OpenAI shape: arguments as a JSON string)."""
    return {"role": "assistant", "content": None, "tool_calls": [
        {"id": f"call{index}", "type": "function",
         "function": {"name": call["name"], "arguments": json.dumps(call["arguments"])}}
        for index, call in enumerate(calls)]}


def round_trip_messages() -> list[dict[str, Any]]:
    """The weather question, the model's call, and the tool's result."""
    return [REASONING_OFF, {"role": "user", "content": WEATHER_QUESTION},
            assistant_tool_message([WEATHER_CALL]),
            {"role": "tool", "tool_call_id": "call0", "content": TOOL_RESULT}]


def tool_examples() -> list[dict[str, Any]]:
    """{"messages", "tools", "completion"} chats for tiny_nemotron.train."""
    def ask(question: str) -> list[dict[str, Any]]:
        return [REASONING_OFF, {"role": "user", "content": question}]

    return [
        {"messages": ask(WEATHER_QUESTION), "tools": TOOLS,
         "completion": tool_call_text([WEATHER_CALL])},
        {"messages": ask(PARALLEL_QUESTION), "tools": TOOLS,
         "completion": tool_call_text(PARALLEL_CALLS)},
        {"messages": round_trip_messages(), "tools": TOOLS, "completion": ANSWER_AFTER_RESULT},
    ]
