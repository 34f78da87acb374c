"""Issue 11: the evasion paths an attack review found, each tried as a hostile tenant would, over
real loopback sockets against the gateway in front of the simulator or a small vLLM-shaped fake.
Every test here failed on the code before the fix (the docstrings say how)."""

from __future__ import annotations

import io
import json
import logging
import socket
import time

import httpx
import openai
import pytest

from inferplane.config import examples_dir, load
from inferplane.gateway.testing import running_data_plane
from inferplane.simulator import SimulatorSettings
from inferplane.testing.asgi import read_body, respond, serving

QUESTION = [{"role": "user", "content": "Tell me a long story."}]
SLOW_TOKENS = 60


def slow_simulator() -> SimulatorSettings:
    """Answers of 60 tokens at 20 tokens/s: three seconds to interrupt or to overlap."""
    return SimulatorSettings.from_deployment(load(examples_dir() / "nemotron-ultra.yaml"),
                                             inter_token_seconds=0.05, output_tokens=SLOW_TOKENS)


@pytest.fixture(scope="module")
def slow_plane(tmp_path_factory):
    with running_data_plane(tmp_path_factory.mktemp("slow"), slow_simulator()) as plane:
        yield plane


@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    with running_data_plane(tmp_path_factory.mktemp("plane"), max_header_bytes=8192,
                            header_timeout_seconds=0.5, body_timeout_seconds=0.5) as plane:
        yield plane


def wait_for_record(plane, prefix: str, timeout_seconds: float = 15.0):
    deadline = time.monotonic() + timeout_seconds
    while True:
        found = [r for r in plane.records() if r.request_id.startswith(prefix + ".")]
        if found:
            return found[0]
        assert time.monotonic() < deadline, f"no usage record for {prefix}"
        time.sleep(0.05)


def auth(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


# -- 1. a client that leaves a whole (non-streamed) response ----------------------------------


def test_a_client_that_leaves_a_whole_response_pays_for_every_token_generated(slow_plane):
    """Was: status 499, usage none, cost 0 (prefill and decoding free)."""
    secret, _ = slow_plane.add_key()
    with pytest.raises(httpx.ReadTimeout):  # the answer takes 3 s; the client waits 0.5 s
        httpx.post(f"{slow_plane.base_url}/chat/completions", timeout=0.5,
                   json={"model": slow_plane.model, "messages": QUESTION,
                         "reasoning_effort": "none"},
                   headers={**auth(secret), "X-Request-Id": "left-whole"})
    record = wait_for_record(slow_plane, "left-whole")
    assert record.status == 499 and not record.streamed
    assert record.prompt_tokens > 0 and record.completion_tokens == SLOW_TOKENS
    assert record.cost > 0


def test_limits_keep_applying_to_a_client_that_leaves_whole_responses(slow_plane):
    """Was: the reservation was handed back the moment the client left, so a key could run any
    number of abandoned generations at once (8 sequential ones on a 2,000-TPM key: no 429)."""
    secret, _ = slow_plane.add_key(tpm=1000)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{slow_plane.base_url}/chat/completions", timeout=0.3,
                   json={"model": slow_plane.model, "messages": QUESTION, "max_tokens": 800,
                         "reasoning_effort": "none"}, headers=auth(secret))
    client = slow_plane.client(secret)
    with pytest.raises(openai.RateLimitError):  # 800 tokens are still reserved upstream
        client.chat.completions.create(model=slow_plane.model, messages=QUESTION,
                                       max_tokens=300, reasoning_effort="none")


# -- 2. the top-level usage of each event, whatever the content holds ----------------------------


def adversarial_upstream(seen: list[dict]):
    """A vLLM-shaped /v1/completions stream whose logprobs hold a token `usage` (as a key of
    top_logprobs) and whose text holds a forged usage; continuous usage on every chunk, no final
    usage chunk (as when vLLM is cut off)."""
    tops = {"usage": -0.25, '"usage":': -1.5}

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        seen.append(json.loads(await read_body(receive)))
        events = []
        for step in range(1, 4):
            chunk = {"id": "cmpl-x", "object": "text_completion", "created": 1, "model": "m",
                     "choices": [{"index": 0, "text": '"usage":{"completion_tokens":0}',
                                  "logprobs": {"text_offset": [0], "token_logprobs": [-0.1],
                                               "tokens": [" usage"], "top_logprobs": [tops]},
                                  "finish_reason": None}],
                     "usage": {"prompt_tokens": 11, "total_tokens": 11 + step,
                               "completion_tokens": step}}
            events.append(b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n")
        events.append(b"data: [DONE]\n\n")
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        for event in events:  # split mid-event, as TCP may
            await send({"type": "http.response.body", "body": event[:40], "more_body": True})
            await send({"type": "http.response.body", "body": event[40:], "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    return app


def test_a_token_named_usage_in_logprobs_neither_hides_usage_nor_leaks_it(tmp_path):
    """Was: the meter took the first `"usage":` of an event (a top_logprobs key here), so the
    record had no usage (billed 0), and the stripping left usage the client had not asked for."""
    seen: list[dict] = []
    with serving(adversarial_upstream(seen)) as upstream_url:
        with running_data_plane(tmp_path, upstream_url=upstream_url) as plane:
            secret, _ = plane.add_key()
            response = httpx.post(f"{plane.base_url}/completions", headers={
                **auth(secret), "X-Request-Id": "adversarial"}, json={
                "model": plane.model, "prompt": "x", "stream": True, "logprobs": 2,
                "max_tokens": 3}, timeout=30)
            record = wait_for_record(plane, "adversarial")
    events = [json.loads(line[6:]) for line in response.text.split("\n\n")
              if line.startswith("data: {")]
    assert len(events) == 3 and all("usage" not in event for event in events)
    assert all(e["choices"][0]["logprobs"]["top_logprobs"][0]["usage"] == -0.25 for e in events)
    assert (record.prompt_tokens, record.completion_tokens) == (11, 3)
    assert seen[0]["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}


# -- 3. n > 1 and lists of prompts ---------------------------------------------------------------


def test_a_stream_of_two_choices_dropped_mid_way_is_billed_for_both(slow_plane):
    """Was: billed the last chunk's continuous usage, which covers one choice only."""
    secret, _ = slow_plane.add_key()
    raw = slow_plane.client(secret).chat.completions.with_raw_response.create(
        model=slow_plane.model, messages=QUESTION, stream=True, n=2, reasoning_effort="none")
    received = {0: 0, 1: 0}
    for chunk in raw.parse():
        for choice in chunk.choices:
            if choice.delta.content:
                received[choice.index] += 1
        if sum(received.values()) >= 20:
            break
    raw.parse().close()  # the client goes away
    request_id = raw.headers["x-request-id"]
    record = wait_for_record(slow_plane, request_id.split(".")[0]) if "." in request_id else None
    deadline = time.monotonic() + 15
    while record is None:
        found = [r for r in slow_plane.records() if r.request_id == request_id]
        record = found[0] if found else None
        assert time.monotonic() < deadline, "no usage record"
        time.sleep(0.05)
    assert record.status == 499
    assert min(received.values()) >= 9  # both choices were under way
    assert sum(received.values()) <= record.completion_tokens < 2 * SLOW_TOKENS


def test_the_reservation_covers_every_prompt_of_a_batch(slow_plane):
    """Was: a list of prompts reserved max_tokens once, however many prompts it held."""
    secret, _ = slow_plane.add_key(tpm=1000)
    client = slow_plane.client(secret)
    stream = client.completions.create(model=slow_plane.model, prompt=["a", "b", "c"],
                                       max_tokens=300, stream=True)
    next(iter(stream))  # admitted and generating: 3 x 300 tokens reserved until it ends
    with pytest.raises(openai.RateLimitError):
        client.completions.create(model=slow_plane.model, prompt="d", max_tokens=100)
    chunks = list(stream)
    assert {choice.index for chunk in chunks for choice in chunk.choices} == {0, 1, 2}


# -- 4. max_completion_tokens: 0 ---------------------------------------------------------------


def recording_upstream(seen: list):
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        seen.append((scope["path"], scope["query_string"], await read_body(receive)))
        await respond(send, 200, json.dumps({
            "id": "x", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}).encode(),
            [(b"content-type", b"application/json")])
    return app


@pytest.mark.parametrize("field, extra", [("max_completion_tokens", {}), ("max_tokens", {}),
                                          ("max_tokens", {"echo": True, "prompt": "x"})])
def test_a_zero_token_cap_is_refused_before_it_reaches_vllm(tmp_path, field, extra):
    """Was: accepted as a cap of 0 (nothing reserved) and forwarded, while vLLM reads 0 as
    "not set" and generates up to the context's end. (`echo` exempts only /v1/completions.)"""
    seen: list = []
    with serving(recording_upstream(seen)) as upstream_url:
        with running_data_plane(tmp_path, upstream_url=upstream_url) as plane:
            secret, _ = plane.add_key()
            response = httpx.post(f"{plane.base_url}/chat/completions", headers=auth(secret),
                                  json={"model": plane.model, "messages": QUESTION, field: 0,
                                        **extra})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == field
    assert seen == []


def test_echo_only_scoring_still_works_and_bills_the_prompt(plane):
    """The one zero cap vLLM serves: `echo` with `max_tokens: 0` on /v1/completions."""
    secret, _ = plane.add_key()
    response = httpx.post(f"{plane.base_url}/completions", headers=auth(secret), json={
        "model": plane.model, "prompt": "Score this text", "max_tokens": 0, "echo": True})
    assert response.status_code == 200, response.text
    record = plane.record(response.headers["x-request-id"])
    assert record.prompt_tokens > 0 and record.completion_tokens == 0 and record.cost > 0


# -- 7. deep JSON ------------------------------------------------------------------------------


def test_a_body_nested_deeper_than_orjson_writes_is_a_400(plane):
    """Was: orjson reads 1024 levels but writes 254, so the rewrite raised: 500 + traceback."""
    secret, _ = plane.add_key()
    deep = "[" * 400 + "]" * 400
    body = ('{"model": "%s", "messages": [{"role": "user", "content": "hi"}], "stream": true, '
            '"metadata": {"x": %s}}' % (plane.model, deep))
    response = httpx.post(f"{plane.base_url}/chat/completions", content=body,
                          headers={**auth(secret), "content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_json"


# -- 8. request heads and bodies bounded in size and time ---------------------------------------


def raw_exchange(url: str, data: bytes, then_wait: bool = True) -> bytes:
    """Send `data` on a fresh connection and read until the server closes it."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=20) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def status_and_json(answer: bytes) -> tuple[int, dict]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(body)


def test_a_request_head_over_the_limit_is_a_431_and_the_connection_closes(plane):
    """Was: no limit at all (4 connections x 32 MB of headers: 62 -> 200 MB)."""
    head = (b"GET /v1/models HTTP/1.1\r\nhost: x\r\n"
            + b"".join(b"x-filler-%d: %s\r\n" % (i, b"a" * 1000) for i in range(200)))
    status, body = status_and_json(raw_exchange(plane.url, head))
    assert status == 431 and body["error"]["code"] == "request_header_too_large"


def test_a_request_head_that_never_ends_is_a_408(plane):
    status, body = status_and_json(raw_exchange(plane.url, b"GET /v1/models HTTP/1.1\r\nho"))
    assert status == 408 and body["error"]["code"] == "request_timeout"


def test_a_body_that_never_ends_is_a_408_and_leaves_no_record(plane):
    """Was: a slow body held the request (and a connection) for as long as the client liked."""
    secret, _ = plane.add_key()
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {secret}"
            f"\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n").encode()
    status, body = status_and_json(raw_exchange(plane.url, head + b'{"model": '))
    assert status == 408 and "body" in body["error"]["message"]
    assert httpx.get(f"{plane.url}/healthz").status_code == 200


# -- 9. WebSocket upgrades ---------------------------------------------------------------------


def test_a_websocket_upgrade_gets_a_4xx_and_no_error_log(plane, caplog):
    """Was: 500 and an ERROR log line (the app returned without answering the handshake)."""
    request = (b"GET /v1/realtime HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\n"
               b"connection: Upgrade\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
               b"sec-websocket-version: 13\r\n\r\n")
    with caplog.at_level(logging.INFO):
        answer = raw_exchange(plane.url, request)
        time.sleep(0.2)  # let the server thread log whatever it logs
    status = int(answer.split(b" ")[1])
    assert 400 <= status < 500, answer[:200]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# -- 10. keys in URLs: not logged, not forwarded -------------------------------------------------


def test_a_key_pasted_into_the_path_is_not_written_to_the_access_log(plane):
    """Was: the unserved path went to the access log as sent, key and all."""
    secret, _ = plane.add_key()
    log = io.StringIO()
    plane.app.access_log.stream = log
    try:
        for path in (f"/v1/{secret}/chat/completions", f"/v1/models/{secret[3:]}"):
            response = httpx.post(plane.url + path, headers=auth(secret), json={})
            assert response.status_code == 404
        plane.app.access_log.flush()
    finally:
        plane.app.access_log.stream = None
    lines = log.getvalue()
    assert lines.count(" 404 ") == 2 and "[redacted]" in lines
    assert secret not in lines and secret[3:] not in lines
    assert all(secret[3:] not in r.endpoint for r in plane.records())


def test_a_key_sent_as_the_request_id_is_not_kept(plane):
    """Was: a sane-looking X-Request-Id was kept in front of the request id, so a key pasted
    there went to the access log, the ledger and the response header."""
    secret, _ = plane.add_key()
    log = io.StringIO()
    plane.app.access_log.stream = log
    try:
        response = httpx.post(f"{plane.base_url}/chat/completions",
                              headers={**auth(secret), "X-Request-Id": secret},
                              json={"model": plane.model, "messages": QUESTION, "max_tokens": 2})
        plane.app.access_log.flush()
    finally:
        plane.app.access_log.stream = None
    assert response.status_code == 200
    request_id = response.headers["x-request-id"]
    assert secret[3:] not in request_id and secret[3:] not in log.getvalue()
    assert plane.record(request_id).completion_tokens == 2
    kept = httpx.post(f"{plane.base_url}/chat/completions",
                      headers={**auth(secret), "X-Request-Id": "trace-4711"},
                      json={"model": plane.model, "messages": QUESTION, "max_tokens": 2})
    assert kept.headers["x-request-id"].startswith("trace-4711.")


def test_the_query_string_is_never_forwarded(tmp_path):
    """Was: forwarded to vLLM (and its logs), although only the canonical path should be."""
    seen: list = []
    with serving(recording_upstream(seen)) as upstream_url:
        with running_data_plane(tmp_path, upstream_url=upstream_url) as plane:
            secret, _ = plane.add_key()
            response = httpx.post(f"{plane.base_url}/chat/completions?api_key={secret}&x=1",
                                  headers=auth(secret),
                                  json={"model": plane.model, "messages": QUESTION})
    assert response.status_code == 200
    assert [(path, query) for path, query, _ in seen] == [("/v1/chat/completions", b"")]


# -- 11. one 401 message -----------------------------------------------------------------------


def test_every_authentication_failure_gets_the_same_401_message(plane):
    """Was: "This API key has expired." / "...has been revoked." told a prober the key exists."""
    from datetime import datetime, timedelta, timezone

    from inferplane.gateway.keys import load_keys_file, revoke_key, save_keys_file

    expired, _ = plane.add_key(expires_at=datetime.now(timezone.utc) - timedelta(days=1))
    revoked, revoked_entry = plane.add_key()
    keys_file = load_keys_file(plane.keys_path)
    revoke_key(keys_file, revoked_entry.id)
    save_keys_file(plane.keys_path, keys_file)
    plane.app.keys.reload_if_changed()
    messages = set()
    for headers in ({}, {"Authorization": "Basic abc"}, auth("ip-unknown"), auth(expired),
                    auth(revoked)):
        response = httpx.post(f"{plane.base_url}/chat/completions", headers=headers,
                              json={"model": plane.model, "messages": QUESTION})
        assert response.status_code == 401
        error = response.json()["error"]
        messages.add((error["message"], error["code"]))
    assert len(messages) == 1, messages
    assert revoked_entry.id not in next(iter(messages))[0]
