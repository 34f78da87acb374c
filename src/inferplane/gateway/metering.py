"""Usage of a response: read from vLLM's `usage` objects, in whole bodies and in SSE streams.

Streams. The gateway always asks vLLM for `stream_options: {include_usage, continuous_usage_stats}`
so that every chunk carries the running usage and a client that disconnects is still billed for
what was generated. What the client did not ask for is removed again, by editing bytes, never by
re-serialising a chunk:
- asked for neither: the `usage` member is cut out of every chunk and the final usage-only chunk
  (`"choices":[]`) is dropped;
- asked for `include_usage` only: `usage` is cut out of the content chunks, the final one is kept;
- asked for both: chunks pass unchanged.
Only the last chunk's usage is ever parsed (when the stream ends), so the per-chunk cost is a
substring search. The `data: [DONE]` event is held back until the usage record is committed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import orjson

_USAGE = b'"usage":'
_DONE = b"data: [DONE]"
_EMPTY_CHOICES = re.compile(rb'"choices":\s*\[\s*\]')
_EMPTY_CHOICES_COMPACT = b'"choices":[]'  # how vLLM writes it
_SEPARATOR = b"\n\n"
# An event larger than this without a separator is not SSE as vLLM writes it: pass it on raw.
_MAX_PENDING_BYTES = 4 * 1024 * 1024


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


def _value_end(data: bytes, start: int) -> int:
    """End offset of the `usage` value (null or an object) starting at `start`; -1 if not."""
    n = len(data)
    while start < n and data[start] in b" \t\r\n":
        start += 1
    if data.startswith(b"null", start):
        return start + 4
    if start >= n or data[start] != 0x7B:  # "{"
        return -1
    # vLLM's usage holds numbers and objects of numbers, no strings with braces: match braces
    # with bytes.find (C speed) rather than a byte-by-byte loop.
    depth, index = 1, start + 1
    while True:
        close = data.find(b"}", index)
        if close < 0:
            return -1
        opening = data.find(b"{", index, close)
        if opening < 0:
            depth -= 1
            if depth == 0:
                return close + 1
            index = close + 1
        else:
            depth += 1
            index = opening + 1


def _parse_usage_at(data: bytes, key_at: int) -> Usage | None:
    start = key_at + len(_USAGE)
    end = _value_end(data, start)
    if end < 0:
        return None
    try:
        return usage_from_mapping(orjson.loads(data[start:end]))
    except ValueError:
        return None


def usage_from_body(body: bytes) -> Usage | None:
    """The usage of a whole JSON response (vLLM puts `usage` last, so search from the end)."""
    key_at = body.rfind(_USAGE)
    if key_at < 0:
        return None
    return _parse_usage_at(body, key_at)


def strip_usage_member(event: bytes) -> bytes:
    """The event without its top-level `"usage": ...` member (bytes otherwise unchanged)."""
    key_at = event.find(_USAGE)
    if key_at < 0:
        return event
    end = _value_end(event, key_at + len(_USAGE))
    if end < 0:
        return event
    before = key_at
    while before > 0 and event[before - 1] in b" \t\r\n":
        before -= 1
    if before > 0 and event[before - 1] == 0x2C:  # ",": usage was not the first member
        return event[:before - 1] + event[end:]
    after = end
    while after < len(event) and event[after] in b" \t\r\n":
        after += 1
    if after < len(event) and event[after] == 0x2C:
        after += 1
        while after < len(event) and event[after] in b" \t\r\n":
            after += 1
    return event[:key_at] + event[after:]


class StreamMeter:
    """Splits an SSE byte stream into events, tracks the latest usage, strips what was not asked."""

    def __init__(self, keep_chunk_usage: bool, keep_final_usage: bool) -> None:
        self.keep_chunk_usage = keep_chunk_usage
        self.keep_final_usage = keep_final_usage
        self._pending = b""
        self._last_usage_event: bytes | None = None
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
        key_at = event.find(_USAGE)
        if key_at < 0:
            return event
        value_at = key_at + len(_USAGE)
        if not (event.startswith(b"null", value_at) or event.startswith(b" null", value_at)):
            self._last_usage_event = event  # `"usage": null` must not hide the last real one
        if self.keep_chunk_usage:
            return event
        if _EMPTY_CHOICES_COMPACT in event or (b'"choices": ' in event
                                                and _EMPTY_CHOICES.search(event)):
            return event if self.keep_final_usage else None
        return strip_usage_member(event)

    def leftover(self) -> bytes:
        """Whatever followed the last complete event (forwarded as is at the end)."""
        rest, self._pending = self._pending, b""
        return rest

    def usage(self) -> Usage | None:
        """The usage in the last chunk that had one (parsed only now)."""
        if self._last_usage_event is None:
            return None
        return _parse_usage_at(self._last_usage_event, self._last_usage_event.find(_USAGE))
