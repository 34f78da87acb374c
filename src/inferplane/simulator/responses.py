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


# vLLM 0.32's OpenAI server writes these (null here) on every response; clients and the gateway
# see the same keys from the simulator (tests/vllm/test_parity.py compares the shapes).
SYSTEM_FINGERPRINT = "vllm-simulator-inferplane"
_CHAT_EXTRAS = {"service_tier": None, "system_fingerprint": SYSTEM_FINGERPRINT,
                "prompt_logprobs": None, "prompt_token_ids": None, "prompt_text": None,
                "kv_transfer_params": None, "ec_transfer_params": None, "metrics": None}
_COMPLETION_EXTRAS = {"service_tier": None, "system_fingerprint": SYSTEM_FINGERPRINT,
                      "kv_transfer_params": None, "ec_transfer_params": None, "metrics": None}
_FINGERPRINT = ',"system_fingerprint":' + json.dumps(SYSTEM_FINGERPRINT)


def reasoning_split(generation: Generation) -> tuple[str | None, str | None, int]:
    """(reasoning, content, reasoning tokens) of a generation, as vLLM with our Nemotron
    reasoning parser splits it: a leading think block goes to `reasoning`."""
    from inferplane.nemotron.reasoning_parser import split_reasoning

    reasoning, content = split_reasoning("".join(generation.pieces))
    return reasoning, content, reasoning_tokens(generation)


def reasoning_tokens(generation: Generation) -> int:
    """Tokens inside the think block (its markers excluded), as vLLM counts them."""
    if not generation.thinks:
        return 0
    return sum(1 for delta in stream_deltas(generation) if delta and "reasoning" in delta)


def stream_deltas(generation: Generation) -> list[dict | None]:
    """Per token, the delta vLLM's streaming reasoning parser sends (None: no chunk)."""
    if generation.deltas is None:
        from inferplane.nemotron.reasoning_parser import stream_view

        deltas: list[dict | None] = []
        text, before = "", ("", "")
        for piece in generation.pieces:
            text += piece
            after = stream_view(text)
            reasoning, content = after[0][len(before[0]):], after[1][len(before[1]):]
            delta = {}
            if reasoning:
                delta["reasoning"] = reasoning
            if content:
                delta["content"] = content
            deltas.append(delta or None)
            before = after
        generation.deltas = deltas
    return generation.deltas


def usage(generation: Generation, completion_tokens: int, details: bool, *, chat: bool = True,
          final_chunk: bool = False) -> dict:
    """vLLM's usage object: of a whole response, or of a stream's final usage chunk."""
    prompt = generation.prompt_tokens
    body: dict = {"prompt_tokens": prompt, "total_tokens": prompt + completion_tokens,
                  "completion_tokens": completion_tokens}
    if details:
        cached = {"cached_tokens": generation.cached_tokens}
        if chat:
            cached["created_cache_tokens"] = 0
        if not final_chunk:
            cached.setdefault("created_cache_tokens", None)
            cached["multimodal_tokens"] = None
        body["prompt_tokens_details"] = cached
    elif not final_chunk:
        body["prompt_tokens_details"] = None
    if chat and generation.model.reasoning_details:
        body["completion_tokens_details"] = {"reasoning_tokens": reasoning_tokens(generation)}
    elif not final_chunk:
        body["completion_tokens_details"] = None
    return body


def chat_completion_body(generation: Generation, rid: str, details: bool) -> dict:
    agentic = generation.agentic
    if agentic is None:
        reasoning, content, _ = reasoning_split(generation)
        tool_calls: list = []
        finish_reason = generation.finish_reason
    else:
        reasoning = None
        content, tool_calls, finish_reason = (agentic.content, agentic.tool_calls,
                                              agentic.finish_reason)
    message = {"role": "assistant", "content": content, "refusal": None, "annotations": None,
               "audio": None, "function_call": None, "reasoning": reasoning}
    if tool_calls:
        message["tool_calls"] = tool_calls  # vLLM leaves the key out when there are none
    return {
        "id": rid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": generation.model.name,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": None,
            "finish_reason": finish_reason,
            "stop_reason": None,
            "token_ids": None,
            "routed_experts": None,
        }],
        "usage": usage(generation, generation.completion_tokens, details),
        **_CHAT_EXTRAS,
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
            "token_ids": None,
            "prompt_logprobs": None,
            "prompt_token_ids": None,
            "routed_experts": None,
        }],
        "usage": usage(generation, generation.completion_tokens, details, chat=False),
        **_COMPLETION_EXTRAS,
    }


class ChunkWriter:
    """The SSE events of one stream (chat or text completion), as vLLM emits them.

    Chat streams open with a role chunk; every token follows in its own chunk, the last one
    carrying finish_reason (and the system fingerprint when no usage chunk follows).
    `continuous_usage` puts the running usage on every chunk; `include_usage` adds a final
    chunk with empty choices and the totals. Think-block tokens go out as `delta.reasoning`.
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
        self._token_tail = ',"token_ids":null}' if chat else \
            ',"prompt_token_ids":null,"token_ids":null}'
        self._reasoning_details = chat and generation.model.reasoning_details
        self._running_reasoning = 0

    def _usage_suffix(self, completion_tokens: int, last: bool = False) -> str:
        fingerprint = _FINGERPRINT if last and not self.include_usage else ""
        if not self.continuous_usage:
            return "]" + fingerprint + "}\n\n"
        prompt = self.generation.prompt_tokens
        reasoning = (f',"completion_tokens_details":{{"reasoning_tokens":'
                     f'{self._running_reasoning}}}' if self._reasoning_details else "")
        return (f'],"usage":{{"prompt_tokens":{prompt},"total_tokens":{prompt + completion_tokens},'
                f'"completion_tokens":{completion_tokens}{reasoning}}}{fingerprint}}}\n\n')

    def role(self) -> bytes | None:
        if not self.chat:
            return None
        return (self._prefix + '{"index":0,"delta":{"role":"assistant","content":""},'
                '"logprobs":null,"finish_reason":null}'
                + self._usage_suffix(0)[:-3] + ',"prompt_token_ids":null,"prompt_text":null}\n\n'
                ).encode()

    def _finish(self, index: int, finish_reason: str) -> tuple[str, str]:
        last = index + 1 == self.generation.completion_tokens
        if not last:
            return ('"logprobs":null,"finish_reason":null' + (
                "" if self.chat else ',"stop_reason":null') + self._token_tail,
                self._usage_suffix(index + 1))
        return (f'"logprobs":null,"finish_reason":"{finish_reason}","stop_reason":null'
                + self._token_tail, self._usage_suffix(index + 1, last=True))

    def token(self, index: int) -> bytes:
        """The chunk of piece `index` (0-based); the last piece carries the finish reason."""
        generation = self.generation
        if generation.agentic is not None:
            return self._agentic_token(index)
        if self.chat and generation.thinks:
            return self._delta_token(index, stream_deltas(generation)[index],
                                     generation.finish_reason)
        tail, suffix = self._finish(index, generation.finish_reason)
        return (self._prefix + self._open + _escape(generation.pieces[index]) + self._close + tail
                + suffix).encode()

    def _delta_token(self, index: int, delta: dict | None, finish_reason: str) -> bytes:
        if delta and "reasoning" in delta:
            self._running_reasoning += 1
        last = index + 1 == self.generation.completion_tokens
        if delta is None and not last:
            return b""  # vLLM sends no chunk for a token that changes no field
        tail, suffix = self._finish(index, finish_reason)
        return (self._prefix + '{"index":0,"delta":' + json.dumps(delta or {}, ensure_ascii=False)
                + "," + tail + suffix).encode()

    def _agentic_token(self, index: int) -> bytes:
        """Tool-call and JSON streams: the delta vLLM sends for this token, or nothing."""
        agentic = self.generation.agentic
        return self._delta_token(index, agentic.deltas[index], agentic.finish_reason)

    def final_usage(self) -> bytes | None:
        if not self.include_usage:
            return None
        body = usage(self.generation, self.generation.completion_tokens, self.details,
                     chat=self.chat, final_chunk=True)
        return (self._prefix + '],"usage":' + json.dumps(body, separators=(",", ":"))
                + _FINGERPRINT + "}\n\n").encode()
