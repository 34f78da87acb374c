"""Response bodies and server-sent-event chunks in vLLM's shapes, byte for byte where it counts.

Streams are written from per-request templates: the id, model and created time are rendered
once, and each token chunk is a concatenation around the JSON-escaped piece, so a stream costs
a few string operations per token rather than a JSON encoding. Chunks with logprobs (rare, and
larger) are encoded as JSON instead.

A request is a Plan of Generations, one per choice of every prompt (`n`, batched prompts): each
chunk carries one choice, and its continuous usage covers that choice only (its prompt and its
own completion tokens), as vLLM's does; the final usage sums every choice, each prompt once.
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


def usage(plan: Plan, completion_tokens: int, details: bool) -> dict:
    prompt = plan.prompt_tokens
    body = {"prompt_tokens": prompt, "total_tokens": prompt + completion_tokens,
            "completion_tokens": completion_tokens}
    if details:
        body["prompt_tokens_details"] = {"cached_tokens": plan.cached_tokens}
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
    logprobs = None
    if generation.top_logprobs is not None:
        logprobs = chat_logprobs(generation.pieces, generation.top_logprobs)
    return {
        "index": generation.index,
        "message": {"role": "assistant", "content": generation.echo + "".join(generation.pieces),
                    "refusal": None, "tool_calls": [], "reasoning": None},
        "logprobs": logprobs,
        "finish_reason": generation.finish_reason,
        "stop_reason": None,
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
        "prompt_logprobs": None,
    }


def chat_completion_body(plan: Plan, rid: str, details: bool) -> dict:
    return {
        "id": rid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": plan.first.model.name,
        "choices": [_chat_choice(generation) for generation in plan.generations],
        "usage": usage(plan, plan.completion_tokens, details)
        | ({} if details else {"prompt_tokens_details": None}),
    }


def completion_body(plan: Plan, rid: str, details: bool) -> dict:
    return {
        "id": rid,
        "object": "text_completion",
        "created": int(time.time()),
        "model": plan.first.model.name,
        "choices": [_completion_choice(generation) for generation in plan.generations],
        "usage": usage(plan, plan.completion_tokens, details)
        | ({} if details else {"prompt_tokens_details": None}),
    }


class ChunkWriter:
    """The SSE events of one choice of a stream (chat or text completion), as vLLM emits them.

    Chat streams open with a role chunk per choice (and an echo chunk when `echo` applies);
    every token follows in its own chunk, the last one carrying finish_reason.
    `continuous_usage` puts the choice's running usage on every chunk; the final usage chunk of
    the whole stream is `final_usage()`.
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
        self._open = (f'{{"index":{index},"delta":{{"content":' if chat
                      else f'{{"index":{index},"text":')
        self._close = "}," if chat else ","
        self._text_offset = 0

    def _usage_suffix(self, completion_tokens: int) -> str:
        if not self.continuous_usage:
            return "]}\n\n"
        prompt = self.generation.prompt_tokens
        return (f'],"usage":{{"prompt_tokens":{prompt},"total_tokens":{prompt + completion_tokens},'
                f'"completion_tokens":{completion_tokens}}}}}\n\n')

    def role(self) -> bytes | None:
        if not self.chat:
            return None
        out = (self._prefix + f'{{"index":{self.generation.index},"delta":{{"role":"assistant",'
               '"content":""},"logprobs":null,"finish_reason":null}' + self._usage_suffix(0))
        if self.generation.echo:
            out += (self._prefix + self._open + _escape(self.generation.echo) + self._close
                    + '"logprobs":null,"finish_reason":null}' + self._usage_suffix(0))
        return out.encode()

    def echo_only(self) -> bytes | None:
        """The one chunk of an echo-only completion (max_tokens 0): the prompt, finished."""
        generation = self.generation
        if self.chat or generation.completion_tokens or not generation.echo:
            return None
        choice: dict = {"index": generation.index, "text": generation.echo, "logprobs": None,
                        "finish_reason": generation.finish_reason, "stop_reason": None}
        if generation.top_logprobs is not None:
            choice["logprobs"] = completion_logprobs(generation.echo_pieces,
                                                     generation.top_logprobs, 0,
                                                     len(generation.echo_pieces))
        chunk: dict = {"id": self.rid, "object": self.kind, "created": self.created,
                       "model": generation.model.name, "choices": [choice]}
        if self.continuous_usage:
            prompt = generation.prompt_tokens
            chunk["usage"] = {"prompt_tokens": prompt, "total_tokens": prompt,
                              "completion_tokens": 0}
        return b"data: " + dumps(chunk) + b"\n\n"

    def token(self, index: int) -> bytes:
        """The chunk of piece `index` (0-based); the last piece carries the finish reason."""
        generation = self.generation
        last = index + 1 >= generation.completion_tokens
        if generation.top_logprobs is not None:
            return self._token_with_logprobs(index, last)
        piece = generation.pieces[index]
        if index == 0 and not self.chat:
            piece = generation.echo + piece  # vLLM echoes the prompt with the first token
        if not last:
            tail = '"logprobs":null,"finish_reason":null}'
        else:
            tail = (f'"logprobs":null,"finish_reason":"{generation.finish_reason}",'
                    '"stop_reason":null}')
        return (self._prefix + self._open + _escape(piece) + self._close + tail
                + self._usage_suffix(index + 1)).encode()

    def _token_with_logprobs(self, index: int, last: bool) -> bytes:
        generation = self.generation
        piece = generation.pieces[index]
        if self.chat:
            choice: dict = {"index": generation.index, "delta": {"content": piece},
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
        if last:
            choice["stop_reason"] = None
        chunk: dict = {"id": self.rid, "object": self.kind, "created": self.created,
                       "model": generation.model.name, "choices": [choice]}
        if self.continuous_usage:
            prompt = generation.prompt_tokens
            chunk["usage"] = {"prompt_tokens": prompt, "total_tokens": prompt + index + 1,
                              "completion_tokens": index + 1}
        return b"data: " + dumps(chunk) + b"\n\n"

    def final_usage(self, plan: Plan) -> bytes | None:
        if not self.include_usage:
            return None
        body = usage(plan, plan.completion_tokens, self.details)
        return (self._prefix + '],"usage":' + json.dumps(body, separators=(",", ":"))
                + "}\n\n").encode()
