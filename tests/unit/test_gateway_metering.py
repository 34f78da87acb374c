"""Usage extraction and usage stripping on the byte level (the shapes vLLM and OpenAI send)."""

from __future__ import annotations

import json

import pytest

from inferplane.gateway.metering import (
    StreamMeter,
    Usage,
    strip_usage_member,
    usage_from_body,
    usage_from_mapping,
)


def chunk(content: str | None, usage: dict | None | str = "absent", final: bool = False) -> bytes:
    """An SSE event as vLLM writes it (compact JSON, usage last)."""
    body: dict = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
                  "model": "m", "choices": [] if final else
                  [{"index": 0, "delta": {"content": content}, "finish_reason": None}]}
    if usage != "absent":
        body["usage"] = usage
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


def usage_of(prompt: int, completion: int, cached: int | None = None) -> dict:
    usage = {"prompt_tokens": prompt, "total_tokens": prompt + completion,
             "completion_tokens": completion}
    if cached is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
    return usage


def events(data: bytes) -> list[dict | str]:
    out = []
    for event in data.split(b"\n\n"):
        if event:
            payload = event.removeprefix(b"data: ")
            out.append(payload.decode() if payload == b"[DONE]" else json.loads(payload))
    return out


def test_usage_from_body_reads_counts_and_cached_tokens():
    body = json.dumps({"id": "x", "choices": [{"message": {"content": '"usage": {"x": 1}'}}],
                       "usage": usage_of(12, 7, cached=16)}).encode()
    assert usage_from_body(body) == Usage(12, 7, 16)


def test_usage_from_body_without_usage_is_none():
    assert usage_from_body(b'{"id": "x", "choices": []}') is None
    assert usage_from_body(b'{"usage": null}') is None


def test_usage_from_mapping_reads_the_reasoning_tokens_vllms_reasoning_parser_reports():
    usage = {"prompt_tokens": 30, "completion_tokens": 20, "total_tokens": 50,
             "completion_tokens_details": {"reasoning_tokens": 14}}
    assert usage_from_mapping(usage) == Usage(30, 20, 0, 14)
    assert usage_from_mapping({"input_tokens": 3, "output_tokens": 4,
                               "output_tokens_details": {"reasoning_tokens": 2}}) == Usage(3, 4, 0, 2)
    assert usage_from_mapping({"prompt_tokens": 3, "completion_tokens": 4,
                               "completion_tokens_details": None}).reasoning_tokens == 0


def test_usage_from_mapping_accepts_responses_api_names_and_ignores_garbage():
    assert usage_from_mapping({"input_tokens": 3, "output_tokens": 4,
                               "input_tokens_details": {"cached_tokens": 2}}) == Usage(3, 4, 2)
    assert usage_from_mapping({"prompt_tokens": -1, "completion_tokens": True}) == Usage(0, 0, 0)
    assert usage_from_mapping("nope") is None


@pytest.mark.parametrize("usage", [usage_of(5, 1), usage_of(5, 1, cached=0), None])
def test_strip_usage_member_leaves_the_rest_byte_identical(usage):
    with_usage = chunk("hé \"usage\": {", usage)
    without = chunk("hé \"usage\": {")
    assert strip_usage_member(with_usage) == without


def test_strip_usage_member_when_usage_is_the_first_member():
    assert strip_usage_member(b'data: {"usage": {"a": 1}, "id": "x"}') == b'data: {"id": "x"}'


def feed_all(meter: StreamMeter, stream: bytes, piece: int) -> bytes:
    """Feed the stream in `piece`-byte reads, as TCP may split it."""
    out = b"".join(meter.feed(stream[i:i + piece]) for i in range(0, len(stream), piece))
    return out + meter.leftover()


def continuous_stream() -> bytes:
    """A vLLM stream with include_usage + continuous_usage_stats (what the gateway asks for)."""
    return b"".join([chunk("", usage_of(9, 0)), chunk("Hello", usage_of(9, 1)),
                     chunk(" world", usage_of(9, 2)), chunk(None, usage_of(9, 2, cached=0),
                                                            final=True),
                     b"data: [DONE]\n\n"])


@pytest.mark.parametrize("piece", [1, 7, 64, 100_000])
def test_client_that_asked_for_no_usage_gets_none(piece):
    meter = StreamMeter(keep_chunk_usage=False, keep_final_usage=False)
    out = events(feed_all(meter, continuous_stream(), piece))
    assert [e["choices"][0]["delta"]["content"] for e in out] == ["", "Hello", " world"]
    assert all("usage" not in e for e in out)
    assert meter.done_event == b"data: [DONE]\n\n"  # held back for the gateway
    assert meter.usage() == Usage(9, 2, 0)


def test_client_that_asked_for_include_usage_gets_only_the_final_chunk():
    meter = StreamMeter(keep_chunk_usage=False, keep_final_usage=True)
    out = events(feed_all(meter, continuous_stream(), 13))
    assert [("usage" in e) for e in out] == [False, False, False, True]
    assert out[-1]["choices"] == [] and out[-1]["usage"]["completion_tokens"] == 2


def test_client_that_asked_for_continuous_usage_gets_the_stream_unchanged():
    stream = continuous_stream()
    meter = StreamMeter(keep_chunk_usage=True, keep_final_usage=True)
    assert feed_all(meter, stream, 5) + meter.done_event == stream


def test_disconnect_billing_uses_the_last_chunk_seen():
    meter = StreamMeter(keep_chunk_usage=False, keep_final_usage=False)
    meter.feed(chunk("", usage_of(9, 0)) + chunk("a", usage_of(9, 1)) + chunk("b", usage_of(9, 2))
               + chunk("c", usage_of(9, 3))[:20])  # the next chunk is cut off mid-way
    assert meter.usage() == Usage(9, 2, 0)


def test_openai_style_null_usage_is_removed_and_not_taken_as_usage():
    meter = StreamMeter(keep_chunk_usage=False, keep_final_usage=False)
    out = meter.feed(chunk("a", None))
    assert b"usage" not in out
    assert meter.usage() is None


@pytest.mark.parametrize("null", [b'"usage":null', b'"usage": null'])
def test_a_null_usage_after_real_usage_keeps_the_real_one(null):
    """A server writing `"usage": null` (with or without a space) on a later chunk must not make
    the gateway forget what the stream had already generated."""
    meter = StreamMeter(keep_chunk_usage=True, keep_final_usage=True)
    meter.feed(chunk("a", usage_of(9, 1)) +
               chunk("b", None).replace(b'"usage":null', null))
    assert meter.usage() == Usage(9, 1, 0)


@pytest.mark.parametrize("keep_chunk_usage, keep_final_usage", [
    (False, False),  # the client asked for no usage
    (False, True),  # include_usage only
    (True, True),  # include_usage and continuous_usage_stats
])
def test_cached_tokens_of_the_final_usage_chunk_are_metered_whatever_the_client_asked(
        keep_chunk_usage, keep_final_usage):
    """vLLM reports prompt_tokens_details only in the final usage-only chunk (the continuous
    usage of content chunks has none): it must be read even when that chunk is not forwarded."""
    stream = b"".join([chunk("", usage_of(200, 0)), chunk("Hi", usage_of(200, 1)),
                       chunk(None, usage_of(200, 1, cached=176), final=True),
                       b"data: [DONE]\n\n"])
    meter = StreamMeter(keep_chunk_usage=keep_chunk_usage, keep_final_usage=keep_final_usage)
    feed_all(meter, stream, 7)
    assert meter.usage() == Usage(200, 1, 176)


# -- adversarial content: only the top-level `usage` of an event counts (issue 11, item 2) ----


def completion_chunk(index: int, text: str, usage: dict | None = None,
                     top_logprobs: dict | None = None) -> bytes:
    """A /v1/completions SSE event as vLLM writes it, optionally with logprobs."""
    logprobs = None if top_logprobs is None else {
        "text_offset": [0], "token_logprobs": [-0.1], "tokens": [text],
        "top_logprobs": [top_logprobs]}
    body: dict = {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m",
                  "choices": [{"index": index, "text": text, "logprobs": logprobs,
                               "finish_reason": None}]}
    if usage is not None:
        body["usage"] = usage
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


ADVERSARIAL_TEXTS = [
    '"usage":{"prompt_tokens":0,"completion_tokens":0}',  # a forged usage in generated text
    '\\"usage\\": {',  # escaped quotes and a stray brace
    '"usage": null}]}',  # a fake end of the event
    'usage',
]


@pytest.mark.parametrize("text", ADVERSARIAL_TEXTS)
@pytest.mark.parametrize("piece", [1, 5, 4096])
def test_usage_in_generated_text_neither_hides_nor_forges_usage(text, piece):
    """Was: the meter latched onto the first `"usage":` of an event, which generated text can
    hold: it read the forged counts (or nothing) and the stripping cut the wrong bytes."""
    stream = b"".join([chunk(text, usage_of(9, 1)), chunk(text, usage_of(9, 2)),
                       chunk(text + "}", usage_of(9, 3))])
    meter = StreamMeter(keep_chunk_usage=False, keep_final_usage=False)
    out = events(feed_all(meter, stream, piece))
    assert meter.usage() == Usage(9, 3, 0)
    assert [e["choices"][0]["delta"]["content"] for e in out] == [text, text, text + "}"]
    assert all("usage" not in e for e in out)


@pytest.mark.parametrize("piece", [1, 3, 4096])
def test_a_token_named_usage_among_top_logprobs_keys_is_not_usage(piece):
    """Was: `/v1/completions` with logprobs puts token texts as keys of `top_logprobs`; a token
    `usage` made the recorded usage unreadable (billed 0 after a disconnect) and leaked the usage
    the client had not asked for."""
    tops = {"usage": -0.5, " usage": -1.0, '"usage":': -2.0}
    stream = b"".join([completion_chunk(0, " usage", usage_of(4, 1), tops),
                       completion_chunk(0, " usage", usage_of(4, 2), tops)])
    meter = StreamMeter(keep_chunk_usage=False, keep_final_usage=False)
    out = events(feed_all(meter, stream, piece))
    assert meter.usage() == Usage(4, 2, 0)
    assert all("usage" not in e for e in out)
    assert all(e["choices"][0]["logprobs"]["top_logprobs"] == [tops] for e in out)


def test_stripping_keeps_every_other_byte_of_an_adversarial_event():
    with_usage = completion_chunk(0, '"usage":{}', usage_of(4, 1), {"usage": -0.5})
    without = completion_chunk(0, '"usage":{}', None, {"usage": -0.5})
    assert strip_usage_member(with_usage) == without


def test_usage_from_body_ignores_nested_usage_members():
    body = json.dumps({"choices": [{"logprobs": {"top_logprobs": [{"usage": -0.1}]}, "text": "x"}],
                       "usage": usage_of(3, 4), "kv_transfer_params": {"usage": {
                           "prompt_tokens": 0, "completion_tokens": 0}}}).encode()
    assert usage_from_body(body) == Usage(3, 4, 0)


# -- n > 1 and batched prompts: continuous usage is per choice (issue 11, item 3) ------------


def test_a_stream_with_two_choices_cut_short_is_billed_for_both():
    """Was: the meter kept the last chunk's usage, which covers one choice only."""
    meter = StreamMeter(keep_chunk_usage=False, keep_final_usage=False, choices_per_prompt=2)
    for step in range(1, 4):
        meter.feed(completion_chunk(0, "a", usage_of(7, step))
                   + completion_chunk(1, "b", usage_of(7, step)))
    meter.feed(completion_chunk(0, "a", usage_of(7, 4)))
    assert meter.usage() == Usage(7, 7, 0)  # the prompt once, 4 + 3 completion tokens


def test_batched_prompts_are_billed_each_prompt_once_and_every_choice():
    meter = StreamMeter(keep_chunk_usage=True, keep_final_usage=True, choices_per_prompt=2)
    # two prompts (5 and 8 tokens), n=2: choice index = prompt * 2 + choice
    meter.feed(completion_chunk(0, "a", usage_of(5, 1)) + completion_chunk(1, "a", usage_of(5, 2))
               + completion_chunk(2, "a", usage_of(8, 3)) + completion_chunk(3, "a", usage_of(8, 1)))
    assert meter.usage() == Usage(13, 7, 0)


def test_the_final_usage_chunk_wins_over_the_sum():
    meter = StreamMeter(keep_chunk_usage=False, keep_final_usage=False, choices_per_prompt=2)
    meter.feed(completion_chunk(0, "a", usage_of(7, 1)) + completion_chunk(1, "b", usage_of(7, 1))
               + chunk(None, usage_of(7, 2, cached=0), final=True))
    assert meter.usage() == Usage(7, 2, 0)
