"""Response bodies and server-sent-event chunks in vLLM's shapes, byte for byte where it counts.

Streams are written from per-request templates: the id, model and created time are rendered
once, and each token chunk is a concatenation around the JSON-escaped piece, so a stream costs
a few string operations per token rather than a JSON encoding.
"""

from __future__ import annotations

import json
import time
import uuid

from inferplane.simulator.engine import Generation

DONE = b"data: [DONE]\n\n"
_escaped: dict[str, str] = {}


def _escape(piece: str) -> str:
    escaped = _escaped.get(piece)
    if escaped is None:
        escaped = json.dumps(piece, ensure_ascii=False)
        if len(_escaped) < 65536:
            _escaped[piece] = escaped
    return escaped


def request_id(prefix: str, header_value: str | None) -> str:
    """vLLM's ids: the caller's X-Request-Id when it sends one, else a random one."""
    return f"{prefix}-{header_value or uuid.uuid4().hex}"


def usage(generation: Generation, completion_tokens: int, details: bool) -> dict:
    prompt = generation.prompt_tokens
    body = {"prompt_tokens": prompt, "total_tokens": prompt + completion_tokens,
            "completion_tokens": completion_tokens}
    if details:
        body["prompt_tokens_details"] = {"cached_tokens": generation.cached_tokens}
    return body


def chat_completion_body(generation: Generation, rid: str, details: bool) -> dict:
    agentic = generation.agentic
    if agentic is None:
        content, tool_calls = "".join(generation.pieces), []
        finish_reason = generation.finish_reason
    else:
        content, tool_calls, finish_reason = (agentic.content, agentic.tool_calls,
                                              agentic.finish_reason)
    return {
        "id": rid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": generation.model.name,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content,
                        "refusal": None, "tool_calls": tool_calls, "reasoning": None},
            "logprobs": None,
            "finish_reason": finish_reason,
            "stop_reason": None,
        }],
        "usage": usage(generation, generation.completion_tokens, details)
        | ({} if details else {"prompt_tokens_details": None}),
    }


def completion_body(generation: Generation, rid: str, details: bool) -> dict:
    return {
        "id": rid,
        "object": "text_completion",
        "created": int(time.time()),
        "model": generation.model.name,
        "choices": [{
            "index": 0,
            "text": "".join(generation.pieces),
            "logprobs": None,
            "finish_reason": generation.finish_reason,
            "stop_reason": None,
            "prompt_logprobs": None,
        }],
        "usage": usage(generation, generation.completion_tokens, details)
        | ({} if details else {"prompt_tokens_details": None}),
    }


class ChunkWriter:
    """The SSE events of one stream (chat or text completion), as vLLM emits them.

    Chat streams open with a role chunk; every token follows in its own chunk, the last one
    carrying finish_reason. `continuous_usage` puts the running usage on every chunk;
    `include_usage` adds a final chunk with empty choices and the totals.
    """

    def __init__(self, generation: Generation, rid: str, chat: bool, include_usage: bool,
                 continuous_usage: bool, details: bool) -> None:
        self.generation = generation
        self.chat = chat
        self.include_usage = include_usage
        self.continuous_usage = continuous_usage
        self.details = details
        kind = "chat.completion.chunk" if chat else "text_completion"
        self._prefix = (f'data: {{"id":{_escape(rid)},"object":"{kind}","created":'
                        f'{int(time.time())},"model":{_escape(generation.model.name)},"choices":[')
        self._open = '{"index":0,"delta":{"content":' if chat else '{"index":0,"text":'
        self._close = "}," if chat else ","

    def _usage_suffix(self, completion_tokens: int) -> str:
        if not self.continuous_usage:
            return "]}\n\n"
        prompt = self.generation.prompt_tokens
        return (f'],"usage":{{"prompt_tokens":{prompt},"total_tokens":{prompt + completion_tokens},'
                f'"completion_tokens":{completion_tokens}}}}}\n\n')

    def role(self) -> bytes | None:
        if not self.chat:
            return None
        return (self._prefix + '{"index":0,"delta":{"role":"assistant","content":""},'
                '"logprobs":null,"finish_reason":null}' + self._usage_suffix(0)).encode()

    def token(self, index: int) -> bytes:
        """The chunk of piece `index` (0-based); the last piece carries the finish reason."""
        generation = self.generation
        if generation.agentic is not None:
            return self._agentic_token(index)
        if index + 1 < generation.completion_tokens:
            tail = '"logprobs":null,"finish_reason":null}'
        else:
            tail = (f'"logprobs":null,"finish_reason":"{generation.finish_reason}",'
                    '"stop_reason":null}')
        return (self._prefix + self._open + _escape(generation.pieces[index]) + self._close + tail
                + self._usage_suffix(index + 1)).encode()

    def _agentic_token(self, index: int) -> bytes:
        """Tool-call and JSON streams: the delta vLLM sends for this token, or nothing."""
        agentic = self.generation.agentic
        delta = agentic.deltas[index]
        last = index + 1 == self.generation.completion_tokens
        if delta is None and not last:
            return b""  # vLLM sends no chunk for a token that changes no field
        if last:
            tail = f'"logprobs":null,"finish_reason":"{agentic.finish_reason}","stop_reason":null}}'
        else:
            tail = '"logprobs":null,"finish_reason":null}'
        return (self._prefix + '{"index":0,"delta":' + json.dumps(delta or {}, ensure_ascii=False)
                + "," + tail + self._usage_suffix(index + 1)).encode()

    def final_usage(self) -> bytes | None:
        if not self.include_usage:
            return None
        body = usage(self.generation, self.generation.completion_tokens, self.details)
        return (self._prefix + '],"usage":' + json.dumps(body, separators=(",", ":"))
                + "}\n\n").encode()
