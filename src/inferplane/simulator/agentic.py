"""Tool calls and structured outputs, answered as vLLM with our Nemotron plugin answers them.

What the simulator emits, per `tool_choice` (vLLM's serving layer, chat_completion/serving.py):
- `auto` (or unset) with `tools`: the model's own text, `<TOOLCALL>[{"name", "arguments"}]</TOOLCALL>`,
  parsed by the plugin: `content` null, `tool_calls`, finish_reason "tool_calls". The simulator
  calls every tool whose name appears in the last user message (parallel calls), else the first
  tool; after a `role: tool` result it answers in text, so an agent loop ends.
- `required`: vLLM guides decoding to a JSON array `[{"name", "parameters"}]`: `content` "",
  finish_reason "tool_calls".
- a named function: guided decoding to that function's arguments: `content` "", finish_reason
  "stop" (OpenAI's rule for named choices).
- `none`: plain text.
`response_format` json_object / json_schema: the text is a JSON value (valid for the schema).

Streams follow vLLM's: with the plugin (auto), text before <TOOLCALL> as content, then per call
one delta with id, type and name, and one with the whole arguments; tokens that change nothing
send no chunk. Guided `required`/named calls stream their arguments token by token.
The plugin file itself must stay standalone (it is mounted alone into the vLLM image), so the
few lines of parsing it needs are repeated here rather than imported.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from inferplane.simulator.protocol import ClientError

TOOL_CALL_START = "<TOOLCALL>"  # inferplane.nemotron.TOOL_CALL_START (kept import-light)
TOOL_CALL_END = "</TOOLCALL>"
_PIECE = re.compile(r"\s*(?:\w+|[^\w\s])")
_NAME = re.compile(r'"name"\s*:\s*("(?:[^"\\]|\\.)*")')
_DECODER = json.JSONDecoder()
_WORDS = ("alpha", "bravo", "delta", "echo", "lima", "oscar", "sierra", "tango", "paris",
          "berlin", "vienna", "lisbon")


@dataclass
class AgenticOutput:
    """What a request gets instead of free text: the exact text (for token counts) and shapes."""

    text: str
    content: str | None  # message.content of the non-streamed response
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str = "stop"
    # Per generated token: the `delta` object of its chunk, or None for no chunk.
    deltas: list[dict[str, Any] | None] = field(default_factory=list)


def split_pieces(text: str) -> list[str]:
    """Token pieces of `text` for the simulator's tokenizer: one token each, spaces attached."""
    pieces = _PIECE.findall(text)
    trailing = text[len("".join(pieces)):]
    if trailing and pieces:
        pieces[-1] += trailing
    return pieces


def plan_agentic(request: Any, digest: int, tool_parsing: bool = True) -> AgenticOutput | None:
    """The tool call or JSON answer for a chat request, or None when free text is right.

    `tool_parsing` is vLLM's --enable-auto-tool-choice with a parser; without it vLLM refuses
    every tool choice but "none" (and unset), with these messages."""
    tools = _function_tools(request)
    choice = request.tool_choice
    if choice is not None and not tools and choice != "none":
        raise ClientError("When using `tool_choice`, `tools` must be set.", param="tool_choice")
    if not tool_parsing and choice not in (None, "none"):
        if choice == "auto":
            raise ClientError('"auto" tool choice requires --enable-auto-tool-choice and '
                              "--tool-call-parser to be set", param="tool_choice")
        described = (f'function "{(choice.get("function") or {}).get("name")}"'
                     if isinstance(choice, dict) else f'"{choice}"')
        raise ClientError(f"tool_choice={described} requires --tool-call-parser to be set",
                          param="tool_choice")
    if tools and tool_parsing and choice != "none":
        named = _named_choice(choice, tools)
        if named is not None:
            return _guided_named(named, digest)
        if choice == "required":
            return _guided_required(_chosen_tools(request, tools), digest)
        if choice in (None, "auto") and _wants_tool(request):
            return _plugin_auto(_chosen_tools(request, tools), digest)
    return _structured(request, digest)


def _function_tools(request: Any) -> list[dict[str, Any]]:
    tools = []
    for index, tool in enumerate(request.tools or ()):
        function = tool.get("function") if isinstance(tool, dict) else None
        if tool.get("type", "function") != "function" or not isinstance(function, dict) \
                or not isinstance(function.get("name"), str):
            raise ClientError(f"tools[{index}] must be {{\"type\": \"function\", \"function\": "
                              "{\"name\": ..., \"parameters\": {...}}}", param=f"tools.{index}")
        tools.append(function)
    return tools


def _named_choice(choice: Any, tools: list[dict[str, Any]]) -> dict[str, Any] | None:
    if choice is None or isinstance(choice, str):
        if choice not in (None, "auto", "required", "none"):
            raise ClientError(f"tool_choice {choice!r} is not one of: none, auto, required, or "
                              '{"type": "function", "function": {"name": ...}}',
                              param="tool_choice")
        return None
    name = (choice.get("function") or {}).get("name") if isinstance(choice, dict) else None
    for tool in tools:
        if tool["name"] == name:
            return tool
    raise ClientError(f"Tool '{name}' has not been passed in `tools`.", param="tool_choice")


def _wants_tool(request: Any) -> bool:
    """A model calls a tool for a fresh question, and answers once the tool's result is in."""
    return request.messages[-1].role not in ("tool", "assistant")


def _chosen_tools(request: Any, tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    last_user = next((m for m in reversed(request.messages) if m.role == "user"), None)
    text = _plain(last_user.content) if last_user is not None else ""
    mentioned = [tool for tool in tools if tool["name"] in text]
    if request.parallel_tool_calls is False:
        mentioned = mentioned[:1]
    return mentioned or tools[:1]


def _plain(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def _call_id() -> str:
    return f"chatcmpl-tool-{uuid.uuid4().hex}"


def _arguments(tool: dict[str, Any], digest: int) -> dict[str, Any]:
    schema = tool.get("parameters") or {"type": "object", "properties": {}}
    value = instance(schema, digest)
    return value if isinstance(value, dict) else {}


def _plugin_auto(tools: list[dict[str, Any]], digest: int) -> AgenticOutput:
    calls = [{"name": tool["name"], "arguments": _arguments(tool, digest + i)}
             for i, tool in enumerate(tools)]
    text = TOOL_CALL_START + json.dumps(calls, ensure_ascii=False) + TOOL_CALL_END
    pieces = split_pieces(text)
    tool_calls = [{"id": _call_id(), "type": "function",
                   "function": {"name": call["name"],
                                "arguments": json.dumps(call["arguments"], ensure_ascii=False)}}
                  for call in calls]
    # Replay the plugin's streaming over the growing text (see nemotron/tool_parser.py).
    deltas: list[dict[str, Any] | None] = []
    names_sent = arguments_sent = 0
    current = ""
    for piece in pieces:
        current += piece
        out = []
        start = current.find(TOOL_CALL_START)
        if start >= 0:
            body = current[start + len(TOOL_CALL_START):].split(TOOL_CALL_END)[0]
            complete, next_position = _complete_calls(body)
            names = [c["name"] for c in complete]
            match = _NAME.search(body, next_position) if next_position < len(body) else None
            if match:
                names.append(json.loads(match.group(1)))
            while names_sent < len(names):
                call = tool_calls[names_sent]
                out.append({"id": call["id"], "type": "function", "index": names_sent,
                            "function": {"name": names[names_sent], "arguments": ""}})
                names_sent += 1
            while arguments_sent < len(complete):
                out.append({"index": arguments_sent, "function": {
                    "arguments": tool_calls[arguments_sent]["function"]["arguments"]}})
                arguments_sent += 1
        deltas.append({"tool_calls": out} if out else None)
    return AgenticOutput(text, None, tool_calls, "tool_calls", deltas)


def _complete_calls(body: str) -> tuple[list[dict[str, Any]], int]:
    position = body.find("[")
    if position < 0:
        return [], len(body)
    position += 1
    calls = []
    while True:
        while position < len(body) and body[position] in " \t\r\n,":
            position += 1
        if position >= len(body) or body[position] == "]":
            return calls, position
        try:
            value, position = _DECODER.raw_decode(body, position)
        except json.JSONDecodeError:
            return calls, position
        calls.append(value)


def _guided_required(tools: list[dict[str, Any]], digest: int) -> AgenticOutput:
    calls = [{"name": tool["name"], "parameters": _arguments(tool, digest + i)}
             for i, tool in enumerate(tools)]
    text = json.dumps(calls, ensure_ascii=False)
    tool_calls = [{"id": _call_id(), "type": "function",
                   "function": {"name": call["name"],
                                "arguments": json.dumps(call["parameters"], ensure_ascii=False)}}
                  for call in calls]
    pieces = split_pieces(text)
    # vLLM streams a required call's arguments as they are decoded; here: name first, then the
    # arguments token by token, for each call in turn.
    deltas: list[dict[str, Any] | None] = [None] * len(pieces)
    spans = _piece_spans(pieces)
    cursor = 0
    for index, call in enumerate(tool_calls):
        arguments = call["function"]["arguments"]
        start = text.index(arguments, cursor)
        end = cursor = start + len(arguments)
        first = next(i for i, (_, stop) in enumerate(spans) if stop > start)
        deltas[first] = {"tool_calls": [{"id": call["id"], "type": "function", "index": index,
                                         "function": {"name": call["function"]["name"],
                                                      "arguments": ""}}]}
        for i, (a, b) in enumerate(spans):
            if b <= start or a >= end:
                continue
            piece_arguments = text[max(a, start):min(b, end)]
            if i == first:  # vLLM's first chunk of a call: id, name and the arguments so far
                deltas[i]["tool_calls"][-1]["function"]["arguments"] = piece_arguments
                continue
            entry = {"index": index, "function": {"arguments": piece_arguments}}
            if deltas[i] is None:
                deltas[i] = {"tool_calls": [entry]}
            else:
                deltas[i]["tool_calls"].append(entry)
    return AgenticOutput(text, "", tool_calls, "tool_calls", deltas)


def _piece_spans(pieces: list[str]) -> list[tuple[int, int]]:
    spans, at = [], 0
    for piece in pieces:
        spans.append((at, at + len(piece)))
        at += len(piece)
    return spans


def _guided_named(tool: dict[str, Any], digest: int) -> AgenticOutput:
    arguments = json.dumps(_arguments(tool, digest), ensure_ascii=False)
    call = {"id": _call_id(), "type": "function",
            "function": {"name": tool["name"], "arguments": arguments}}
    pieces = split_pieces(arguments)
    deltas: list[dict[str, Any] | None] = [
        {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]} for piece in pieces]
    deltas[0] = {"tool_calls": [{"id": call["id"], "type": "function", "index": 0,
                                 "function": {"name": tool["name"], "arguments": pieces[0]}}]}
    return AgenticOutput(arguments, "", [call], "stop", deltas)


def _structured(request: Any, digest: int) -> AgenticOutput | None:
    response_format = request.response_format
    if not response_format:
        return None
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        text = json.dumps({"answer": _word(digest)}, ensure_ascii=False)
    elif kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise ClientError("response_format.json_schema.schema must be a JSON Schema object",
                              param="response_format")
        text = json.dumps(instance(schema, digest), ensure_ascii=False)
    else:
        raise ClientError(f"response_format type {kind!r} is not one of: text, json_object, "
                          "json_schema", param="response_format")
    deltas = [{"content": piece} for piece in split_pieces(text)]
    return AgenticOutput(text, text, [], "stop", deltas)


def _word(seed: int) -> str:
    return _WORDS[seed % len(_WORDS)]


def instance(schema: Any, seed: int = 0, root: dict[str, Any] | None = None,
             depth: int = 0) -> Any:
    """A deterministic value valid for common JSON Schemas (what guided decoding guarantees).

    Covers type (and lists of types), enum, const, properties/required, items/prefixItems,
    min/max items and lengths, minimum/maximum (exclusive too), multipleOf for integers,
    anyOf/oneOf (first branch), allOf (merged), $ref into $defs/definitions, and the formats
    date, date-time, email, uuid. `pattern` is not solved: a schema needing it gets a plain word.
    """
    root = root if root is not None else schema
    if not isinstance(schema, dict) or depth > 12:
        return None
    if "$ref" in schema:
        return instance(_resolve(schema["$ref"], root), seed, root, depth + 1)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema and schema["enum"]:
        return schema["enum"][seed % len(schema["enum"])]
    for key in ("anyOf", "oneOf"):
        if schema.get(key):
            return instance(schema[key][0], seed, root, depth + 1)
    if schema.get("allOf"):
        merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
        for part in schema["allOf"]:
            part = _resolve(part["$ref"], root) if "$ref" in part else part
            merged.setdefault("properties", {}).update(part.get("properties", {}))
            merged["required"] = [*merged.get("required", []), *part.get("required", [])]
            for k, v in part.items():
                if k not in ("properties", "required"):
                    merged.setdefault(k, v)
        return instance(merged, seed, root, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
    if kind == "object":
        properties = schema.get("properties", {})
        return {name: instance(sub, seed + i, root, depth + 1)
                for i, (name, sub) in enumerate(properties.items())}
    if kind == "array":
        prefix = schema.get("prefixItems") or []
        count = max(schema.get("minItems", 1), len(prefix))
        if "maxItems" in schema:
            count = min(count, schema["maxItems"])
        items = schema.get("items") if isinstance(schema.get("items"), dict) else {}
        return [instance(prefix[i] if i < len(prefix) else items, seed + i, root, depth + 1)
                for i in range(count)]
    if kind == "string":
        return _string(schema, seed)
    if kind == "integer":
        return _integer(schema, seed)
    if kind == "number":
        low = schema.get("minimum", schema.get("exclusiveMinimum", 0))
        high = schema.get("maximum", schema.get("exclusiveMaximum", low + 100))
        return (low + high) / 2 if low != high else low
    if kind == "boolean":
        return seed % 2 == 0
    return None


def _resolve(ref: str, root: dict[str, Any]) -> Any:
    if not ref.startswith("#/"):
        raise ClientError(f"$ref {ref!r}: only local references (#/$defs/...) are supported",
                          param="response_format")
    node: Any = root
    for part in ref[2:].split("/"):
        node = node.get(part.replace("~1", "/").replace("~0", "~")) if isinstance(node, dict) \
            else None
    return node


def _string(schema: dict[str, Any], seed: int) -> str:
    fmt = schema.get("format")
    if fmt == "date":
        value = "2026-12-02"
    elif fmt == "date-time":
        value = "2026-12-02T06:00:00Z"
    elif fmt == "email":
        value = f"{_word(seed)}@example.eu"
    elif fmt == "uuid":
        value = str(uuid.UUID(int=seed & ((1 << 128) - 1)))
    else:
        value = _word(seed)
    minimum, maximum = schema.get("minLength", 0), schema.get("maxLength")
    while len(value) < minimum:
        value += "x"
    if maximum is not None and not fmt:
        value = value[:maximum]
    return value


def _integer(schema: dict[str, Any], seed: int) -> int:
    low = schema.get("minimum")
    if "exclusiveMinimum" in schema:
        low = schema["exclusiveMinimum"] + 1
    high = schema.get("maximum")
    if "exclusiveMaximum" in schema:
        high = schema["exclusiveMaximum"] - 1
    low = int(-(-low // 1)) if low is not None else 0
    high = int(high // 1) if high is not None else low + 100
    step = schema.get("multipleOf", 1)
    value = low + seed % (max(high - low, 0) + 1)
    if isinstance(step, int) and step > 1:
        value = -(-value // step) * step
        if value > high:
            value = -(-low // step) * step
    return value
