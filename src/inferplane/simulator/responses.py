"""Response bodies and server-sent-event chunks in vLLM's shapes, byte for byte where it counts.

Streams are written from per-request templates: the id, model and created time are rendered
once, and each token chunk is a concatenation around the JSON-escaped piece, so a stream costs
a few string operations per token rather than a JSON encoding. Chunks with logprobs (rare, and
larger) are encoded as JSON instead.

A request is a Plan of Generations, one per choice of every prompt (`n`, batched prompts): each
chunk carries one choice, and its continuous usage covers that choice only (its prompt and its
own completion tokens), as vLLM's does; the final usage sums every choice, each prompt once.
Think-block tokens go out as `reasoning` (our Nemotron reasoning parser's split), tool calls and
JSON answers as vLLM with our tool parser sends them (simulator/agentic.py).
"""

from __future__ import annotations

import json
import time
import uuid
import zlib

from inferplane.simulator.engine import Generation, Plan
from inferplane.simulator.protocol import dumps

DONE = b"data: [DONE]\n\n"
_escaped: dict[str, str] = {}
_ALTERNATIVES = (" the", " model", ",", ".")


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


def usage(plan: Plan, completion_tokens: int, details: bool, *, chat: bool = True,
          final_chunk: bool = False) -> dict:
    """vLLM's usage object: of a whole response, or of a stream's final usage chunk (every
    choice, each prompt once)."""
    prompt = plan.prompt_tokens
    body: dict = {"prompt_tokens": prompt, "total_tokens": prompt + completion_tokens,
                  "completion_tokens": completion_tokens}
    if details:
        cached = {"cached_tokens": plan.cached_tokens}
        if chat:
            cached["created_cache_tokens"] = 0
        if not final_chunk:
            cached.setdefault("created_cache_tokens", None)
            cached["multimodal_tokens"] = None
        body["prompt_tokens_details"] = cached
    elif not final_chunk:
        body["prompt_tokens_details"] = None
    if chat and plan.first.model.reasoning_details:
        body["completion_tokens_details"] = {
            "reasoning_tokens": sum(reasoning_tokens(g) for g in plan.generations)}
    elif not final_chunk:
        body["completion_tokens_details"] = None
    return body


def _logprob(piece: str, rank: int = 0) -> float:
    """A stable, made-up log-probability: the sampled token is the likeliest."""
    return -round(0.01 + (zlib.crc32(piece.encode("utf-8", "surrogatepass")) % 997) / 1000
                  + rank, 4)


def _alternatives(piece: str, count: int) -> list[str]:
    """`count` distinct tokens: the sampled one, then its bare form (so a generated " usage"
    puts "usage" among the keys of top_logprobs), then fillers."""
    out = [piece]
    for candidate in (piece.strip(), *_ALTERNATIVES):
        if len(out) >= count:
            break
        if candidate and candidate not in out:
            out.append(candidate)
    return out[:max(count, 1)]


def chat_logprobs(pieces: list[str], top: int) -> dict:
    """vLLM's chat `logprobs`: a content entry per token with its `top` alternatives."""
    return {"content": [{
        "token": piece, "logprob": _logprob(piece), "bytes": list(piece.encode()),
        "top_logprobs": [{"token": alt, "logprob": _logprob(alt, rank),
                          "bytes": list(alt.encode())}
                         for rank, alt in enumerate(_alternatives(piece, top)[:top])],
    } for piece in pieces]}


def completion_logprobs(pieces: list[str], top: int, text_offset: int,
                        prompt_pieces: int = 0) -> dict:
    """vLLM's legacy completions `logprobs` (the first `prompt_pieces` are echoed prompt
    tokens: the very first has no log-probability, as in vLLM)."""
    offsets, token_logprobs, tops = [], [], []
    for position, piece in enumerate(pieces):
        offsets.append(text_offset)
        text_offset += len(piece)
        if position == 0 and prompt_pieces:
            token_logprobs.append(None)
            tops.append(None)
            continue
        token_logprobs.append(_logprob(piece))
        tops.append({alt: _logprob(alt, rank)
                     for rank, alt in enumerate(_alternatives(piece, max(top, 1)))})
    return {"text_offset": offsets, "token_logprobs": token_logprobs, "tokens": list(pieces),
            "top_logprobs": tops}


def _chat_choice(generation: Generation) -> dict:
    agentic = generation.agentic
    if agentic is None:
        reasoning, content, _ = reasoning_split(generation)
        tool_calls: list = []
        finish_reason = generation.finish_reason
    else:
        reasoning = None
        content, tool_calls, finish_reason = (agentic.content, agentic.tool_calls,
                                              agentic.finish_reason)
    if generation.echo:
        content = generation.echo + (content or "")
    message = {"role": "assistant", "content": content, "refusal": None, "annotations": None,
               "audio": None, "function_call": None, "reasoning": reasoning}
    if tool_calls:
        message["tool_calls"] = tool_calls  # vLLM leaves the key out when there are none
    logprobs = None
    if generation.top_logprobs is not None:
        logprobs = chat_logprobs(generation.pieces, generation.top_logprobs)
    return {
        "index": generation.index,
        "message": message,
        "logprobs": logprobs,
        "finish_reason": finish_reason,
        "stop_reason": None,
        "token_ids": None,
        "routed_experts": None,
    }


def _completion_choice(generation: Generation) -> dict:
    logprobs = None
    if generation.top_logprobs is not None:
        pieces = generation.echo_pieces + generation.pieces
        logprobs = completion_logprobs(pieces, generation.top_logprobs, 0,
                                       len(generation.echo_pieces))
    return {
        "index": generation.index,
        "text": generation.echo + "".join(generation.pieces),
        "logprobs": logprobs,
        "finish_reason": generation.finish_reason,
        "stop_reason": None,
        "token_ids": None,
        "prompt_logprobs": None,
        "prompt_token_ids": None,
        "routed_experts": None,
    }


def chat_completion_body(plan: Plan, rid: str, details: bool) -> dict:
    return {
        "id": rid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": plan.first.model.name,
        "choices": [_chat_choice(generation) for generation in plan.generations],
        "usage": usage(plan, plan.completion_tokens, details),
        **_CHAT_EXTRAS,
    }


def completion_body(plan: Plan, rid: str, details: bool) -> dict:
    return {
        "id": rid,
        "object": "text_completion",
        "created": int(time.time()),
        "model": plan.first.model.name,
        "choices": [_completion_choice(generation) for generation in plan.generations],
        "usage": usage(plan, plan.completion_tokens, details, chat=False),
        **_COMPLETION_EXTRAS,
    }


class ChunkWriter:
    """The SSE events of one choice of a stream (chat or text completion), as vLLM emits them.

    Chat streams open with a role chunk per choice (and an echo chunk when `echo` applies);
    every token follows in its own chunk, the last one carrying finish_reason (and the system
    fingerprint when no usage chunk follows). `continuous_usage` puts the choice's running usage
    on every chunk; the final usage chunk of the whole stream is `final_usage(plan)`.
    Think-block tokens go out as `delta.reasoning`; a token that changes no field sends nothing.
    """

    def __init__(self, generation: Generation, rid: str, chat: bool, include_usage: bool,
                 continuous_usage: bool, details: bool) -> None:
        self.generation = generation
        self.chat = chat
        self.include_usage = include_usage
        self.continuous_usage = continuous_usage
        self.details = details
        self.rid = rid
        self.created = int(time.time())
        self.kind = "chat.completion.chunk" if chat else "text_completion"
        self._prefix = (f'data: {{"id":{_escape(rid)},"object":"{self.kind}","created":'
                        f'{self.created},"model":{_escape(generation.model.name)},"choices":[')
        index = generation.index
        self._index = f'{{"index":{index},'
        self._open = (f'{{"index":{index},"delta":{{"content":' if chat
                      else f'{{"index":{index},"text":')
        self._close = "}," if chat else ","
        self._token_tail = ',"token_ids":null}' if chat else \
            ',"prompt_token_ids":null,"token_ids":null}'
        self._reasoning_details = chat and generation.model.reasoning_details
        self._running_reasoning = 0
        self._text_offset = 0

    def _usage_suffix(self, completion_tokens: int, last: bool = False) -> str:
        fingerprint = _FINGERPRINT if last and not self.include_usage else ""
        if not self.continuous_usage:
            return "]" + fingerprint + "}\n\n"
        prompt = self.generation.prompt_tokens
        reasoning = (f',"completion_tokens_details":{{"reasoning_tokens":'
                     f'{self._running_reasoning}}}' if self._reasoning_details else "")
        return (f'],"usage":{{"prompt_tokens":{prompt},"total_tokens":{prompt + completion_tokens},'
                f'"completion_tokens":{completion_tokens}{reasoning}}}{fingerprint}}}\n\n')

    def _continuous_usage(self, completion_tokens: int) -> dict:
        prompt = self.generation.prompt_tokens
        body = {"prompt_tokens": prompt, "total_tokens": prompt + completion_tokens,
                "completion_tokens": completion_tokens}
        if self._reasoning_details:
            body["completion_tokens_details"] = {"reasoning_tokens": self._running_reasoning}
        return body

    def role(self) -> bytes | None:
        if not self.chat:
            return None
        out = (self._prefix + self._index + '"delta":{"role":"assistant","content":""},'
               '"logprobs":null,"finish_reason":null}'
               + self._usage_suffix(0)[:-3] + ',"prompt_token_ids":null,"prompt_text":null}\n\n')
        if self.generation.echo:
            out += (self._prefix + self._open + _escape(self.generation.echo) + self._close
                    + '"logprobs":null,"finish_reason":null' + self._token_tail
                    + self._usage_suffix(0))
        return out.encode()

    def echo_only(self) -> bytes | None:
        """The one chunk of an echo-only completion (max_tokens 0): the prompt, finished."""
        generation = self.generation
        if self.chat or generation.completion_tokens or not generation.echo:
            return None
        choice: dict = {"index": generation.index, "text": generation.echo, "logprobs": None,
                        "finish_reason": generation.finish_reason, "stop_reason": None,
                        "prompt_token_ids": None, "token_ids": None}
        if generation.top_logprobs is not None:
            choice["logprobs"] = completion_logprobs(generation.echo_pieces,
                                                     generation.top_logprobs, 0,
                                                     len(generation.echo_pieces))
        chunk: dict = {"id": self.rid, "object": self.kind, "created": self.created,
                       "model": generation.model.name, "choices": [choice]}
        if self.continuous_usage:
            chunk["usage"] = self._continuous_usage(0)
        if not self.include_usage:
            chunk["system_fingerprint"] = SYSTEM_FINGERPRINT
        return b"data: " + dumps(chunk) + b"\n\n"

    def _finish(self, index: int, finish_reason: str) -> tuple[str, str]:
        last = index + 1 >= self.generation.completion_tokens
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
        if generation.top_logprobs is not None:
            return self._token_with_logprobs(index)
        if self.chat and generation.thinks:
            return self._delta_token(index, stream_deltas(generation)[index],
                                     generation.finish_reason)
        piece = generation.pieces[index]
        if index == 0 and not self.chat:
            piece = generation.echo + piece  # vLLM echoes the prompt with the first token
        tail, suffix = self._finish(index, generation.finish_reason)
        return (self._prefix + self._open + _escape(piece) + self._close + tail
                + suffix).encode()

    def _delta_token(self, index: int, delta: dict | None, finish_reason: str) -> bytes:
        if delta and "reasoning" in delta:
            self._running_reasoning += 1
        last = index + 1 >= self.generation.completion_tokens
        if delta is None and not last:
            return b""  # vLLM sends no chunk for a token that changes no field
        tail, suffix = self._finish(index, finish_reason)
        return (self._prefix + self._index + '"delta":'
                + json.dumps(delta or {}, ensure_ascii=False) + "," + tail + suffix).encode()

    def _agentic_token(self, index: int) -> bytes:
        """Tool-call and JSON streams: the delta vLLM sends for this token, or nothing."""
        agentic = self.generation.agentic
        return self._delta_token(index, agentic.deltas[index], agentic.finish_reason)

    def _token_with_logprobs(self, index: int) -> bytes:
        generation = self.generation
        last = index + 1 >= generation.completion_tokens
        piece = generation.pieces[index]
        if self.chat:
            delta = stream_deltas(generation)[index] if generation.thinks else {"content": piece}
            if delta and "reasoning" in delta:
                self._running_reasoning += 1
            choice: dict = {"index": generation.index, "delta": delta or {},
                            "logprobs": chat_logprobs([piece], generation.top_logprobs)}
        else:
            pieces = [piece]
            echoed = 0
            if index == 0 and generation.echo_pieces:
                pieces = generation.echo_pieces + pieces
                echoed = len(generation.echo_pieces)
            choice = {"index": generation.index, "text": "".join(pieces),
                      "logprobs": completion_logprobs(pieces, generation.top_logprobs,
                                                      self._text_offset, echoed)}
            self._text_offset += len(choice["text"])
        choice["finish_reason"] = generation.finish_reason if last else None
        if last or not self.chat:
            choice["stop_reason"] = None
        if not self.chat:
            choice["prompt_token_ids"] = None
        choice["token_ids"] = None
        chunk: dict = {"id": self.rid, "object": self.kind, "created": self.created,
                       "model": generation.model.name, "choices": [choice]}
        if self.continuous_usage:
            chunk["usage"] = self._continuous_usage(index + 1)
        if last and not self.include_usage:
            chunk["system_fingerprint"] = SYSTEM_FINGERPRINT
        return b"data: " + dumps(chunk) + b"\n\n"

    def final_usage(self, plan: Plan) -> bytes | None:
        if not self.include_usage:
            return None
        body = usage(plan, plan.completion_tokens, self.details, chat=self.chat, final_chunk=True)
        return (self._prefix + '],"usage":' + json.dumps(body, separators=(",", ":"))
                + _FINGERPRINT + "}\n\n").encode()
