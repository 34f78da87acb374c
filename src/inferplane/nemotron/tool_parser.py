"""vLLM tool-parser plugin for Llama-Nemotron: `<TOOLCALL>[{"name": ..., "arguments": {...}}]</TOOLCALL>`.

Loaded by vLLM, not imported by inferplane:
    --enable-auto-tool-choice --tool-parser-plugin <this file>
    --tool-call-parser inferplane_nemotron_json --chat-template <chat_template.jinja>

The format is NVIDIA's for the Llama-Nemotron family (NIM "Function (Tool) Calling" docs; the
Super-49B-v1.5 card's template and NVIDIA's Nemotron-Nano-9B-v2 parser; vLLM PR #42255). vLLM
0.33 registers no parser for it. Our own code, written against the `ToolParser` interface of
vLLM 0.32/0.33 (`vllm/tool_parsers/abstract_tool_parser.py`; it is kept stable for plugins).

`auto` is parsed here. `required` and named tool choices are handled by vLLM itself (guided
decoding to a JSON array of calls) because `supports_required_and_named` stays True.
Streaming sends, per call, one delta with id, type and name as soon as the name is complete,
then one delta with the whole arguments once that call's JSON object is closed: argument
deltas are therefore always valid prefixes of the final JSON, which partial re-serialisation
cannot promise (a partial number "1." or an escape cut in two).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import regex as re

try:  # vLLM >= 0.2x layout (0.32.0 CPU build, 0.33.0)
    from vllm.entrypoints.generate.base.protocol import (
        DeltaFunctionCall,
        DeltaMessage,
        DeltaToolCall,
        ExtractedToolCallInformation,
        FunctionCall,
        ToolCall,
    )
except ImportError:  # older layout, kept so a pinned-older image still loads the plugin
    from vllm.entrypoints.openai.protocol import (  # type: ignore[no-redef]
        DeltaFunctionCall,
        DeltaMessage,
        DeltaToolCall,
        ExtractedToolCallInformation,
        FunctionCall,
        ToolCall,
    )
from vllm.tool_parsers.abstract_tool_parser import ToolParser, ToolParserManager

try:
    from vllm.renderers.chat_utils import make_tool_call_id
except ImportError:  # pragma: no cover - older layout
    from vllm.entrypoints.chat_utils import make_tool_call_id  # type: ignore[no-redef]

PARSER_NAME = "inferplane_nemotron_json"  # inferplane.nemotron.TOOL_PARSER_NAME
START = "<TOOLCALL>"
END = "</TOOLCALL>"
_NAME = re.compile(r'"name"\s*:\s*("(?:[^"\\]|\\.)*")')
_DECODER = json.JSONDecoder()


def _arguments_text(call: dict[str, Any]) -> str:
    """Arguments as the JSON text OpenAI clients expect (the model may emit an object or a string)."""
    arguments = call.get("arguments", call.get("parameters", {}))
    if isinstance(arguments, str):
        return arguments
    return json.dumps(arguments, ensure_ascii=False)


def _complete_calls(body: str) -> tuple[list[dict[str, Any]], int, bool]:
    """The call objects fully present in `body` (text after <TOOLCALL>), where the next starts,
    and whether the array is closed. Raises ValueError when the text is not a call array."""
    position = len(body) - len(body.lstrip())
    if position == len(body):
        return [], position, False
    if body[position] != "[":
        raise ValueError("tool call body is not a JSON array")
    position += 1
    calls: list[dict[str, Any]] = []
    while True:
        while position < len(body) and body[position] in " \t\r\n,":
            position += 1
        if position == len(body):
            return calls, position, False
        if body[position] == "]":
            return calls, position + 1, True
        try:
            value, end = _DECODER.raw_decode(body, position)
        except json.JSONDecodeError:
            return calls, position, False  # this call is still being generated
        if not isinstance(value, dict) or not isinstance(value.get("name"), str):
            raise ValueError("a tool call must be an object with a string 'name'")
        calls.append(value)
        position = end


def _partial_tag_length(text: str, tag: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `tag` (held back)."""
    for length in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-length:]):
            return length
    return 0


@ToolParserManager.register_module(PARSER_NAME)
class NemotronToolParser(ToolParser):
    """Parses Llama-Nemotron's `<TOOLCALL>[...]</TOOLCALL>` tool calls, whole and streamed."""

    def __init__(self, tokenizer: Any, tools: Any = None):
        super().__init__(tokenizer, tools)
        self._content_sent = 0  # characters of text before <TOOLCALL> already sent as content
        self._names_sent = 0
        self._arguments_sent = 0
        self._after_end_sent = 0  # characters after </TOOLCALL> already sent as content
        self._not_a_call = False

    def adjust_request(self, request: Any) -> Any:
        request = super().adjust_request(request)
        # If the tokenizer made the markers special tokens, decoding would drop them and the
        # parser would see bare JSON: keep special tokens in the text of tool requests.
        if getattr(request, "tools", None) and request.tool_choice != "none" \
                and self._marker_is_special():
            request.skip_special_tokens = False
        return request

    def _marker_is_special(self) -> bool:
        """True when <TOOLCALL> is one token that decoding with skip_special_tokens drops."""
        token_id = self.vocab.get(START)
        if token_id is None:
            return False  # plain text to the tokenizer (several tokens): always kept
        return self.model_tokenizer.decode([token_id], skip_special_tokens=True) == ""

    def extract_tool_calls(self, model_output: str, request: Any) -> ExtractedToolCallInformation:
        start = model_output.find(START)
        if start < 0:
            return ExtractedToolCallInformation(tools_called=False, tool_calls=[],
                                                content=model_output)
        body = model_output[start + len(START):]
        end = body.find(END)
        after = ""
        if end >= 0:
            body, after = body[:end], body[end + len(END):]
        try:
            calls, _, _ = _complete_calls(body)
        except ValueError:
            calls = []
        if not calls:
            return ExtractedToolCallInformation(tools_called=False, tool_calls=[],
                                                content=model_output)
        self.prev_tool_call_arr = [
            {"name": call["name"], "arguments": call.get("arguments", call.get("parameters", {}))}
            for call in calls
        ]
        content = (model_output[:start] + after).strip() or None
        return ExtractedToolCallInformation(
            tools_called=True,
            tool_calls=[ToolCall(type="function", function=FunctionCall(
                name=call["name"], arguments=_arguments_text(call))) for call in calls],
            content=content,
        )

    def extract_tool_calls_streaming(
        self,
        previous_text: str,
        current_text: str,
        delta_text: str,
        previous_token_ids: Sequence[int],
        current_token_ids: Sequence[int],
        delta_token_ids: Sequence[int],
        request: Any,
    ) -> DeltaMessage | None:
        start = current_text.find(START)
        if self._not_a_call:  # <TOOLCALL> was not followed by a call array: it is all text
            return self._content_up_to(current_text, len(current_text))
        if start < 0:
            # Plain text so far; hold back a possible "<TOOL" at the end until it is decided.
            safe = len(current_text) - _partial_tag_length(current_text, START)
            return self._content_up_to(current_text, safe)

        before = self._content_up_to(current_text, start)
        body = current_text[start + len(START):]
        end = body.find(END)
        if end >= 0:
            after_text, body = body[end + len(END):], body[:end]
        else:
            after_text = None
        try:
            calls, next_position, _ = _complete_calls(body)
        except ValueError:
            if self._names_sent:  # calls already went out: keep them, drop the rest
                return before
            self._not_a_call = True  # as extract_tool_calls would: the text stays content
            return self._content_up_to(current_text, len(current_text))
        deltas: list[DeltaToolCall] = []
        # The call being generated: announce its name once the name string is complete.
        pending_name = None
        if next_position < len(body):
            match = _NAME.search(body, next_position)
            if match:
                pending_name = json.loads(match.group(1))
        names = [call["name"] for call in calls] + ([pending_name] if pending_name else [])
        while self._names_sent < len(names):
            index = self._names_sent
            deltas.append(DeltaToolCall(index=index, id=make_tool_call_id(), type="function",
                                        function=DeltaFunctionCall(name=names[index],
                                                                   arguments="")))
            self.prev_tool_call_arr.append({"name": names[index], "arguments": ""})
            self.streamed_args_for_tool.append("")
            self._names_sent += 1
        while self._arguments_sent < len(calls):
            index = self._arguments_sent
            arguments = _arguments_text(calls[index])
            deltas.append(DeltaToolCall(index=index,
                                        function=DeltaFunctionCall(arguments=arguments)))
            self.prev_tool_call_arr[index]["arguments"] = arguments
            self.streamed_args_for_tool[index] = arguments
            self._arguments_sent += 1
        self.current_tool_id = self._names_sent - 1
        self.current_tool_name_sent = self._names_sent > 0

        content = before.content if before else None
        if after_text is not None and len(after_text) > self._after_end_sent:
            content = (content or "") + after_text[self._after_end_sent:]
            self._after_end_sent = len(after_text)
        if not deltas and content is None:
            return None
        if content is None:  # unset, not null: the chunk's delta then holds only tool_calls
            return DeltaMessage(tool_calls=deltas)
        return DeltaMessage(content=content, tool_calls=deltas)

    def _content_up_to(self, text: str, stop: int) -> DeltaMessage | None:
        """Content not yet sent, up to `stop` (where a tool call starts or may start)."""
        if stop <= self._content_sent:
            return None
        piece = text[self._content_sent:stop]
        self._content_sent = stop
        return DeltaMessage(content=piece)
