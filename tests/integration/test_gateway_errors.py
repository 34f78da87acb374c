"""Bad input and a bad upstream: each gets a clear OpenAI-shaped error and a metric, and no
request (found by hypothesis either) makes the gateway answer 5xx or fall over."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inferplane.gateway.testing import running_data_plane
from inferplane.testing.asgi import dead_loopback_url, read_body, respond, serving

QUESTION = [{"role": "user", "content": "Hi"}]
MAX_BODY_BYTES = 64 * 1024


@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    with running_data_plane(tmp_path_factory.mktemp("plane"),
                            max_body_bytes=MAX_BODY_BYTES) as plane:
        yield plane


@pytest.fixture(scope="module")
def auth(plane):
    secret, _ = plane.add_key()
    return {"Authorization": f"Bearer {secret}"}


def post(plane, auth, body, path="/chat/completions", **kwargs):
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(plane.base_url + path, content=content,
                      headers={**auth, "Content-Type": "application/json"}, timeout=30, **kwargs)


def openai_error(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if code is not None:
        assert error["code"] == code
    return error


def metric(plane, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    prefix = f"{name}{{{wanted}}}" if labels else name
    for line in httpx.get(f"{plane.url}/metrics").text.splitlines():
        if line.startswith(prefix + " "):
            return float(line.split()[-1])
    return 0.0


@pytest.mark.parametrize("body, code, param", [
    (b"{not json", "invalid_json", None),
    (b"", "invalid_json", None),
    (b"[1, 2]", "invalid_json", None),
    (b'{"model": NaN}', "invalid_json", None),
    (b"\xff\xfe{}", "invalid_json", None),
    (b"[" * 100_00 + b"]" * 100_00, "invalid_json", None),
    ({"messages": QUESTION}, "missing_required", "model"),
    ({"model": 42, "messages": QUESTION}, "invalid_type", "model"),
    ({"model": "M", "messages": QUESTION, "max_tokens": "ten"}, "invalid_type", "max_tokens"),
    ({"model": "M", "messages": QUESTION, "max_tokens": -1}, "invalid_value", "max_tokens"),
    ({"model": "M", "messages": QUESTION, "stream": "yes"}, "invalid_type", "stream"),
    ({"model": "M", "messages": QUESTION, "stream_options": []}, "invalid_type", "stream_options"),
    ({"model": "M", "messages": "Hi"}, "invalid_type", "messages"),
    ({"model": "M", "messages": QUESTION, "reasoning": "on"}, "invalid_type", "reasoning"),
    ({"model": "M", "messages": QUESTION, "reasoning_effort": "max"}, "invalid_value",
     "reasoning_effort"),
])
def test_malformed_requests_are_400_naming_the_problem(plane, auth, body, code, param):
    if isinstance(body, dict) and body.get("model") == "M":
        body = {**body, "model": plane.model}
    before = metric(plane, "inferplane_gateway_rejected_requests_total", reason=code)
    error = openai_error(post(plane, auth, body), 400, code)
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert metric(plane, "inferplane_gateway_rejected_requests_total", reason=code) == before + 1


def test_vllms_own_400_reaches_the_client_in_openai_shape(plane, auth):
    error = openai_error(post(plane, auth, {"model": plane.model, "messages": QUESTION,
                                            "max_tokens": 10**9}), 400)
    assert "maximum context length" in error["message"]


def test_oversized_bodies_are_413_whatever_the_headers_say(plane, auth):
    big = json.dumps({"model": plane.model, "messages": [
        {"role": "user", "content": "x" * MAX_BODY_BYTES}]}).encode()
    openai_error(post(plane, auth, big), 413, "request_too_large")

    def chunks():  # no Content-Length at all: the limit is counted while reading
        for start in range(0, len(big), 4096):
            yield big[start:start + 4096]

    response = httpx.post(plane.base_url + "/chat/completions", content=chunks(),
                          headers={**auth, "Content-Type": "application/json"})
    openai_error(response, 413, "request_too_large")
    assert post(plane, auth, {"model": plane.model, "messages": QUESTION,
                              "max_tokens": 1}).status_code == 200  # still serving


def test_unknown_paths_and_methods(plane, auth):
    openai_error(httpx.get(f"{plane.url}/v2/anything"), 404, "not_found")
    response = httpx.delete(f"{plane.base_url}/models", headers=auth)
    openai_error(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "GET"
    response = httpx.get(f"{plane.base_url}/chat/completions", headers=auth)
    openai_error(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "POST"
    openai_error(httpx.post(f"{plane.base_url}/load_lora_adapter", headers=auth,
                            json={"lora_name": "x", "lora_path": "/tmp"}), 404, "not_found")


@pytest.mark.parametrize("path", [
    "/v1/chat/completions%3F",  # decodes to a path with "?" that vLLM would still serve
    "/v1/completions%3Fecho=1",
    "/v1/chat/completions%23",
    "/v1/%E2%82%AC",  # not Latin-1: must not reach the upstream client's encoder
    "/v1/chat/completions%0D%0AX-Smuggled:%201",  # CR/LF: must not reach the request line
    "/v1/responses",  # served by vLLM, but not meterable (background mode, no continuous usage)
    "/v1/embeddings",
])
def test_paths_the_gateway_does_not_meter_are_404_and_never_forwarded(plane, auth, path):
    before = metric(plane, "inferplane_gateway_rejected_requests_total", reason="unserved_path")
    body = {"model": plane.model, "messages": QUESTION, "stream": True, "max_tokens": 4}
    for method in ("POST", "GET"):
        response = httpx.request(method, plane.url + path, json=body, headers=auth, timeout=30)
        error = openai_error(response, 404, "not_found")
        assert "/v1/chat/completions, /v1/completions, /v1/models" in error["message"]
    assert metric(plane, "inferplane_gateway_rejected_requests_total",
                  reason="unserved_path") == before + 2
    gotten = response.headers["x-request-id"]
    assert not [r for r in plane.records() if r.request_id == gotten]  # GETs are not metered
    posted = httpx.post(plane.url + path, json=body, headers=auth, timeout=30)
    record = plane.record(posted.headers["x-request-id"])
    assert (record.status, record.prompt_tokens, record.completion_tokens) == (404, 0, 0)
    assert not set(record.endpoint) & {"\r", "\n"}


def test_an_encoded_slash_is_served_on_the_canonical_path_and_metered(plane, auth):
    response = post(plane, auth, {"model": plane.model, "messages": QUESTION, "max_tokens": 3},
                    path="/chat%2Fcompletions")
    assert response.status_code == 200, response.text
    record = plane.record(response.headers["x-request-id"])
    assert record.endpoint == "/v1/chat/completions"
    assert (record.prompt_tokens, record.completion_tokens) == \
        (response.json()["usage"]["prompt_tokens"], 3)


def test_health_and_readiness_need_no_key(plane):
    assert httpx.get(f"{plane.url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{plane.url}/readyz").json() == {"status": "ready"}


# --- a bad upstream ------------------------------------------------------------------------


async def broken_vllm(scope, receive, send):
    """An upstream that fails in the ways vLLM can: chosen by the request's max_tokens."""
    if scope["type"] != "http":
        return
    if scope["path"] == "/health":
        await respond(send, 200)
        return
    mode = json.loads(await read_body(receive)).get("max_tokens")
    if mode == 1:  # a crash with a plain-text body
        await send({"type": "http.response.start", "status": 500,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"Internal Server Error"})
    elif mode == 2:  # vLLM's older flat error shape
        await send({"type": "http.response.start", "status": 503,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": json.dumps(
            {"object": "error", "message": "engine dead", "type": "EngineDeadError",
             "param": None, "code": 503}).encode()})
    elif mode == 3:  # a stream that breaks off after one chunk
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        await send({"type": "http.response.body", "more_body": True, "body":
                    b'data: {"choices":[{"delta":{"content":"a"}}],"usage":{"prompt_tokens":3,'
                    b'"total_tokens":4,"completion_tokens":1}}\n\n'})
        raise RuntimeError("simulated crash mid-stream")
    else:  # hang (longer than the gateway's timeout)
        await asyncio.sleep(30)


@pytest.fixture(scope="module")
def broken_plane(tmp_path_factory):
    with serving(broken_vllm) as upstream_url, running_data_plane(
            tmp_path_factory.mktemp("broken"), upstream_url=upstream_url,
            upstream_timeout_seconds=0.5) as plane:
        yield plane, {"Authorization": f"Bearer {plane.add_key()[0]}"}


def test_upstream_5xx_is_passed_through_in_openai_shape(broken_plane):
    plane, auth = broken_plane
    body = {"model": plane.model, "messages": QUESTION}
    error = openai_error(post(plane, auth, {**body, "max_tokens": 1}), 500)
    assert error["type"] == "server_error" and "Internal Server Error" in error["message"]
    error = openai_error(post(plane, auth, {**body, "max_tokens": 2}), 503)
    assert (error["message"], error["type"], error["code"]) == \
        ("engine dead", "EngineDeadError", 503)
    assert metric(plane, "inferplane_gateway_upstream_errors_total", reason="status_5xx") == 2


def test_upstream_timeout_is_504_and_billed_nothing(broken_plane):
    plane, auth = broken_plane
    response = post(plane, auth, {"model": plane.model, "messages": QUESTION, "max_tokens": 4})
    openai_error(response, 504, "upstream_timeout")
    record = plane.record(response.headers["x-request-id"])
    assert (record.status, record.completion_tokens) == (504, 0)
    assert metric(plane, "inferplane_gateway_upstream_errors_total",
                  reason="upstream_timeout") >= 1


def test_a_stream_that_breaks_ends_with_an_error_event_and_is_billed(broken_plane):
    plane, auth = broken_plane
    response = post(plane, auth, {"model": plane.model, "messages": QUESTION, "max_tokens": 3,
                                  "stream": True})
    events = [e for e in response.text.split("\n\n") if e]
    assert "data: [DONE]" not in events
    assert json.loads(events[-1].removeprefix("data: "))["error"]["code"] == \
        "upstream_stream_broken"
    record = plane.record(response.headers["x-request-id"])
    assert (record.status, record.prompt_tokens, record.completion_tokens) == (502, 3, 1)


def test_upstream_down_is_502_and_not_ready(tmp_path):
    with running_data_plane(tmp_path, upstream_url=dead_loopback_url()) as plane:
        secret, _ = plane.add_key()
        response = post(plane, {"Authorization": f"Bearer {secret}"},
                        {"model": plane.model, "messages": QUESTION})
        openai_error(response, 502, "upstream_unavailable")
        ready = httpx.get(f"{plane.url}/readyz")
        assert ready.status_code == 503 and "model server not ready" in ready.json()["problems"]
        assert httpx.get(f"{plane.url}/healthz").status_code == 200  # alive, just not ready


# --- fuzzing -------------------------------------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers(-2**70, 2**70) | \
    st.floats(allow_nan=False) | st.text(max_size=30)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4) |
                           st.dictionaries(st.text(max_size=10), inner, max_size=4),
                           max_leaves=12)
messages = st.lists(st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant", "tool", ""]) | st.text(max_size=5)},
    optional={"content": st.text(max_size=40) | json_values}) | json_values, max_size=4)
fields = {
    "messages": messages, "prompt": st.text(max_size=40) | json_values,
    "stream": st.booleans() | json_values, "max_tokens": st.integers(-5, 40) | json_values,
    "stream_options": st.fixed_dictionaries({}, optional={
        "include_usage": st.booleans() | json_values,
        "continuous_usage_stats": st.booleans() | json_values}) | json_values,
    "reasoning": st.booleans() | json_values,
    "reasoning_effort": st.sampled_from(["none", "low", "high", "HIGH"]) | json_values,
    "n": st.integers(-1, 3) | json_values, "max_completion_tokens": json_values,
}


@st.composite
def request_bodies(draw, model: str) -> bytes:
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=200))
    body = draw(st.fixed_dictionaries({}, optional={"model": st.just(model) | json_values,
                                                    **fields}))
    body.update(draw(st.dictionaries(st.text(max_size=8), json_values, max_size=2)))
    return json.dumps(body).encode()


# h11 (the client) refuses header values with surrounding spaces; the server never sees them.
header_values = st.text(st.characters(min_codepoint=32, max_codepoint=126),
                        max_size=80).map(str.strip)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_requests_never_get_a_5xx(plane, auth, data):
    body = data.draw(request_bodies(plane.model))
    path = data.draw(st.sampled_from(["/chat/completions", "/completions", "/embeddings"]) |
                     st.tuples(st.sampled_from(["/chat/completions", "/completions", "/"]),
                               st.text(max_size=12)).map(lambda p: p[0] + quote(p[1], safe="/")))
    headers = {"Content-Type": "application/json", **auth}
    if data.draw(st.booleans()):
        headers["X-Request-Id"] = data.draw(header_values)
    if data.draw(st.integers(0, 4)) == 0:
        headers["Authorization"] = data.draw(header_values)
    response = httpx.post(plane.base_url + path, content=body, headers=headers, timeout=30)
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert response.headers["x-request-id"]
    if response.status_code == 200:  # served only where metered
        record = plane.record(response.headers["x-request-id"])
        assert record.endpoint in ("/v1/chat/completions", "/v1/completions")


def test_still_healthy_after_the_fuzzing(plane, auth):
    assert httpx.get(f"{plane.url}/healthz").status_code == 200
    assert post(plane, auth, {"model": plane.model, "messages": QUESTION,
                              "max_tokens": 1}).status_code == 200
