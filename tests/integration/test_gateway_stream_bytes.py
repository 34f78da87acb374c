"""The gateway forwards SSE bytes as vLLM sent them: never re-serialised, only the usage the client
did not ask for cut out (the rules are in gateway/metering.py). A canned upstream streams JSON
formatted as no serialiser here would write it -- spaces after colons and commas, keys out of
order, a \\u escape, the float 1.50 -- in parts that split events, so any re-encoding, reordering
or re-framing of the stream shows up as a byte difference."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from inferplane.gateway.testing import running_data_plane
from inferplane.testing.asgi import read_body, respond, serving

# Each content chunk split where its top-level "usage" member begins: (the chunk up to that
# member, its usage object). Usage is continuous: the running count on every chunk.
CONTENT_CHUNKS = [
    (b'data: {"object": "chat.completion.chunk", "id": "chatcmpl-canned", "created": 1700000000, '
     b'"model": "canned", "choices": [{"index": 0, "delta": {"role": "assistant", '
     b'"content": ""}, "logprobs": null, "finish_reason": null}]',
     b'{"prompt_tokens": 21, "total_tokens": 21, "completion_tokens": 0}'),
    (b'data: {"object": "chat.completion.chunk", "id": "chatcmpl-canned", "created": 1700000000, '
     b'"model": "canned", "choices": [{"index": 0, "delta": {"content": "Caf\\u00e9"}, '
     b'"logprobs": {"content": [{"token": "Caf\\u00e9", "logprob": -1.50, "bytes": '
     b'[67, 97, 102, 195, 169], "top_logprobs": []}]}, "finish_reason": null}]',
     b'{"prompt_tokens": 21, "total_tokens": 22, "completion_tokens": 1}'),
    (b'data: {"object": "chat.completion.chunk", "id": "chatcmpl-canned", "created": 1700000000, '
     b'"model": "canned", "choices": [{"index": 0, "delta": {"content": " au lait"}, '
     b'"logprobs": null, "finish_reason": "stop", "stop_reason": null}]',
     b'{"prompt_tokens": 21, "total_tokens": 24, "completion_tokens": 3}'),
]
FINAL_USAGE_CHUNK = (
    b'data: {"object": "chat.completion.chunk", "id": "chatcmpl-canned", "created": 1700000000, '
    b'"model": "canned", "choices": [], "usage": {"prompt_tokens": 21, "total_tokens": 24, '
    b'"completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": 16}}}\n\n')
DONE = b"data: [DONE]\n\n"
# What vLLM sends when asked for include_usage and continuous_usage_stats.
CANNED = b"".join(chunk + b', "usage": ' + usage + b"}\n\n" for chunk, usage in CONTENT_CHUNKS) \
    + FINAL_USAGE_CHUNK + DONE
# The content chunks as if they never had a usage member.
CONTENT_WITHOUT_USAGE = b"".join(chunk + b"}\n\n" for chunk, _ in CONTENT_CHUNKS)
FINAL_USAGE = (21, 3, 16)  # prompt, completion, cached tokens


def canned_parts() -> list[bytes]:
    """CANNED in the parts the upstream writes: cut inside the \\u escape, between the two
    newlines of a separator, inside a usage object and inside the final chunk's empty choices."""
    cuts = sorted({CANNED.index(b"\\u00e9") + 3, CANNED.index(b"\n\n") + 1,
                   CANNED.index(b'"total_tokens": 22') + 5,
                   CANNED.index(b'"choices": []') + 12, CANNED.index(DONE)})
    return [CANNED[start:end] for start, end in zip([0, *cuts], [*cuts, len(CANNED)])]


class CannedVllm:
    """An upstream that answers every POST with the canned stream, one part per body message
    (a pause between them so that they reach the gateway as separate reads)."""

    def __init__(self) -> None:
        self.stream_options: list[object] = []  # what each request asked vLLM for

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        if scope["method"] == "GET":  # /health: ready
            await respond(send, 200)
            return
        self.stream_options.append(json.loads(await read_body(receive)).get("stream_options"))
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        for part in canned_parts():
            await send({"type": "http.response.body", "body": part, "more_body": True})
            await asyncio.sleep(0.02)
        await send({"type": "http.response.body", "body": b""})


@pytest.fixture(scope="module")
def canned_plane(tmp_path_factory):
    upstream = CannedVllm()
    with serving(upstream) as upstream_url, running_data_plane(
            tmp_path_factory.mktemp("canned"), upstream_url=upstream_url) as plane:
        yield plane, upstream, plane.add_key()[0]


def stream_raw(plane, secret: str, **fields) -> tuple[bytes, str]:
    """The response body exactly as it came off the wire, and its request id."""
    body = {"model": plane.model, "messages": [{"role": "user", "content": "Coffee?"}],
            "stream": True, **fields}
    with httpx.stream("POST", plane.base_url + "/chat/completions", json=body, timeout=30,
                      headers={"Authorization": f"Bearer {secret}"}) as response:
        assert response.status_code == 200
        return b"".join(response.iter_raw()), response.headers["x-request-id"]


def test_the_canned_stream_is_valid_sse_json_split_inside_events():
    parts = canned_parts()
    assert b"".join(parts) == CANNED and len(parts) == 6
    for stream in (CANNED, CONTENT_WITHOUT_USAGE):
        events = stream.removesuffix(b"\n\n").split(b"\n\n")
        chunks = [json.loads(event.removeprefix(b"data: ")) for event in events
                  if event != DONE.strip()]
        assert chunks[1]["choices"][0]["delta"]["content"] == "Caf\u00e9"


@pytest.mark.parametrize("stream_options, expected", [
    pytest.param({"include_usage": True, "continuous_usage_stats": True}, CANNED,
                 id="continuous-usage:unchanged"),
    pytest.param({"include_usage": True}, CONTENT_WITHOUT_USAGE + FINAL_USAGE_CHUNK + DONE,
                 id="include-usage:only-the-final-chunk"),
    pytest.param(None, CONTENT_WITHOUT_USAGE + DONE, id="no-options:no-usage-at-all"),
])
def test_the_client_gets_vllms_bytes_less_only_the_usage_it_did_not_ask_for(
        canned_plane, stream_options, expected):
    plane, upstream, secret = canned_plane
    fields = {} if stream_options is None else {"stream_options": stream_options}
    received, request_id = stream_raw(plane, secret, **fields)
    assert received == expected
    # Whatever the client asked, the gateway asks vLLM for usage on every chunk, to bill it.
    assert upstream.stream_options[-1] == {"include_usage": True, "continuous_usage_stats": True}
    record = plane.record(request_id)
    assert (record.prompt_tokens, record.completion_tokens, record.cached_tokens) == FINAL_USAGE
    assert (record.status, record.streamed) == (200, True)
