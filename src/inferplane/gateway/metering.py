"""Usage of a response: read from vLLM's `usage` objects, in whole bodies and in SSE streams.

Streams. The gateway always asks vLLM for `stream_options: {include_usage, continuous_usage_stats}`
so that every chunk carries the running usage and a client that disconnects is still billed for
what was generated. What the client did not ask for is removed again, by editing bytes, never by
re-serialising a chunk:
- asked for neither: the `usage` member is cut out of every chunk and the final usage-only chunk
  (`"choices":[]`) is dropped;
- asked for `include_usage` only: `usage` is cut out of the content chunks, the final one is kept;
- asked for both: chunks pass unchanged.

Only the top-level `usage` member of an event counts: each event is parsed (orjson, about a
microsecond for a token chunk), so a `"usage":` inside generated text, a token `usage` among
`top_logprobs` keys, or any other nesting can neither hide nor forge usage. vLLM's continuous usage
on a chunk covers that chunk's choice only (one prompt's tokens and that choice's completion), so
a stream cut short is billed the sum over choices (prompt tokens once per prompt); the final
usage-only chunk, when it arrives, is vLLM's own total and wins. The `data: [DONE]` event is held
back until the usage record is committed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import orjson

_DATA = b"data: "
_DONE = b"data: [DONE]"
_USAGE_KEY = b'"usage"'
_USAGE_COLON = b'"usage":'  # how vLLM writes the key (compact JSON)
_FIRST_CHOICE = b'"choices":[{"index":'
_CHOICE_INDEX = b'{"index":'
_EMPTY_CHOICES = b'"choices":[]'
_SEPARATOR = b"\n\n"
# An event larger than this without a separator is not SSE as vLLM writes it: pass it on raw.
_MAX_PENDING_BYTES = 4 * 1024 * 1024
# A JSON string (escapes included) or a bracket: enough to walk an object's top level in C.
_JSON_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|[{}\[\]]', re.DOTALL)
_SPACE = b" \t\r\n"


@dataclass(frozen=True)
class Usage:
    """Token counts of one response."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0  # of completion_tokens (vLLM's reasoning parser counts them)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def usage_from_mapping(usage: object) -> Usage | None:
    """A Usage from an OpenAI `usage` object (chat/completions or Responses naming)."""
    if not isinstance(usage, dict):
        return None
    prompt = usage.get("prompt_tokens", usage.get("input_tokens"))
    completion = usage.get("completion_tokens", usage.get("output_tokens"))
    details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    output = usage.get("completion_tokens_details") or usage.get("output_tokens_details")
    reasoning = output.get("reasoning_tokens") if isinstance(output, dict) else None
    return Usage(_count(prompt), _count(completion), _count(cached), _count(reasoning))


def usage_from_body(body: bytes) -> Usage | None:
    """The top-level usage of a whole JSON response (parsed, so nothing nested can pose as it)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return usage_from_mapping(data.get("usage")) if isinstance(data, dict) else None


def _skip_space(data: bytes, index: int) -> int:
    while index < len(data) and data[index] in _SPACE:
        index += 1
    return index


def top_level_member_span(event: bytes, key: bytes = _USAGE_KEY) -> tuple[int, int] | None:
    """(start of the key, end of the value) of the top-level member `key` (quoted, e.g.
    b'"usage"') of the JSON object in `event`; strings and nested values are skipped whole.
    None when there is no such member or its value is neither null nor an object."""
    depth = 0
    key_at = -1
    for match in _JSON_TOKEN.finditer(event):
        start = match.start()
        char = event[start]
        if char == 0x22:  # a string: a key of the top-level object?
            if depth == 1 and key_at < 0 and match.end() - start == len(key) and \
                    event.startswith(key, start):
                colon = _skip_space(event, match.end())
                if colon < len(event) and event[colon] == 0x3A:  # ":"
                    value_at = _skip_space(event, colon + 1)
                    if event.startswith(b"null", value_at):
                        return start, value_at + 4
                    if value_at >= len(event) or event[value_at] != 0x7B:  # "{"
                        return None
                    key_at = start
        elif char in b"{[":
            depth += 1
        else:
            depth -= 1
            if key_at >= 0 and depth == 1:
                return key_at, match.end()
    return None


def strip_usage_member(event: bytes) -> bytes:
    """The event without its top-level `"usage": ...` member (bytes otherwise unchanged)."""
    span = top_level_member_span(event)
    if span is None:
        return event
    key_at, end = span
    before = key_at
    while before > 0 and event[before - 1] in _SPACE:
        before -= 1
    if before > 0 and event[before - 1] == 0x2C:  # ",": usage was not the first member
        return event[:before - 1] + event[end:]
    after = _skip_space(event, end)
    if after < len(event) and event[after] == 0x2C:
        after = _skip_space(event, after + 1)
    return event[:key_at] + event[after:]


class StreamMeter:
    """Splits an SSE byte stream into events, tracks usage per choice, strips what was not asked.

    `choices_per_prompt` is the request's `n`: on /v1/completions with a list of prompts, vLLM
    numbers the choices prompt by prompt (index = prompt * n + choice)."""

    def __init__(self, keep_chunk_usage: bool, keep_final_usage: bool,
                 choices_per_prompt: int = 1) -> None:
        self.keep_chunk_usage = keep_chunk_usage
        self.keep_final_usage = keep_final_usage
        self.choices_per_prompt = max(1, choices_per_prompt)
        self._pending = b""
        # Usage objects as parsed (converted once, at the end): the latest of each choice, and
        # the usage-only final chunk's (vLLM's total).
        self._by_choice: dict[int, dict] = {}
        self._final: dict | None = None
        self.done_event: bytes | None = None  # held back until the record is written
        self.events = 0

    def feed(self, data: bytes) -> bytes:
        """Bytes to forward now for `data` just read from upstream."""
        if self._pending:
            data = self._pending + data
        last = data.rfind(_SEPARATOR)
        if last < 0:
            if len(data) > _MAX_PENDING_BYTES:
                self._pending = b""
                return data
            self._pending = data
            return b""
        complete, self._pending = data[:last], data[last + 2:]
        out = []
        for event in complete.split(_SEPARATOR):
            forwarded = self._event(event)
            if forwarded is not None:
                out.append(forwarded)
                out.append(_SEPARATOR)
        return b"".join(out)

    def _event(self, event: bytes) -> bytes | None:
        if not event:
            return None
        self.events += 1
        if event.startswith(_DONE):
            self.done_event = event + _SEPARATOR
            return None
        if not event.startswith(_DATA) or _USAGE_KEY not in event:
            return event  # no usage member can be in it: no need to parse
        fast = self._fast_event(event)
        return fast if fast is not None else self._parsed_event(event)

    def _fast_event(self, event: bytes) -> bytes | None:
        """vLLM's layout, read without parsing the whole event (the streaming hot path): `usage`
        is the top-level object's last member. The last `"usage":` key (inside a JSON string
        the quotes would be escaped, so it is always a key) is that member exactly when its
        value is one JSON object reaching to the event's closing brace. None: not this layout,
        so the event is parsed instead."""
        key_at = event.rfind(_USAGE_COLON)
        value_at = key_at + len(_USAGE_COLON)
        close = len(event.rstrip(_SPACE)) - 1
        if key_at < 0 or event[value_at:value_at + 1] != b"{" or event[close:close + 1] != b"}":
            return None
        try:  # one object up to the closing brace, or not this layout
            usage = orjson.loads(event[value_at:close])
        except orjson.JSONDecodeError:
            return None
        choices_at = event.find(_FIRST_CHOICE)
        if choices_at >= 0:
            digits_at = choices_at + len(_FIRST_CHOICE)
            try:
                index = int(event[digits_at:event.find(b",", digits_at)])
            except ValueError:
                return None
            if event.count(_CHOICE_INDEX, digits_at, key_at):
                return None  # more than one choice (or tool-call deltas): parse it
            self._by_choice[index] = usage
            final = False
        elif _EMPTY_CHOICES in event:
            self._final = usage
            final = True
        else:
            return None
        if self.keep_chunk_usage:
            return event
        if final:
            return event if self.keep_final_usage else None
        if event[key_at - 1:key_at] != b",":
            return None
        return event[:key_at - 1] + event[close:]

    def _parsed_event(self, event: bytes) -> bytes | None:
        """Any other layout: parse the event and take its top-level `usage`."""
        try:
            chunk = orjson.loads(event[len(_DATA):])
        except orjson.JSONDecodeError:
            return event
        if not isinstance(chunk, dict) or "usage" not in chunk:
            return event
        usage = chunk["usage"]
        choices = chunk.get("choices")
        final = isinstance(choices, list) and not choices
        if isinstance(usage, dict):
            if final:
                self._final = usage
            elif isinstance(choices, list):
                for choice in choices:
                    index = choice.get("index") if isinstance(choice, dict) else None
                    self._by_choice[_count(index)] = usage
            else:
                self._by_choice[0] = usage
        if self.keep_chunk_usage:
            return event
        if final:
            return event if self.keep_final_usage else None
        return strip_usage_member(event)

    def leftover(self) -> bytes:
        """Whatever followed the last complete event (forwarded as is at the end)."""
        rest, self._pending = self._pending, b""
        return rest

    def usage(self) -> Usage | None:
        """vLLM's total when the stream got that far; else the sum of the choices' running usage
        (completion tokens of every choice, prompt tokens once per prompt)."""
        if self._final is not None:
            return usage_from_mapping(self._final)
        if not self._by_choice:
            return None
        prompts: dict[int, Usage] = {}
        completion = reasoning = 0
        for index, mapping in self._by_choice.items():
            usage = usage_from_mapping(mapping) or Usage()
            completion += usage.completion_tokens
            reasoning += usage.reasoning_tokens
            prompts[index // self.choices_per_prompt] = usage
        return Usage(sum(usage.prompt_tokens for usage in prompts.values()), completion,
                     sum(usage.cached_tokens for usage in prompts.values()), reasoning)
