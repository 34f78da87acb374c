"""How the gateway's parts are wired together, seen from outside: a ledger directly on PostgreSQL,
the reasoning defaults of keys and deployments, and one error metric per kind of refusal."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal

import httpx
import openai
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from inferplane.catalog import ReasoningStyle, get_model
from inferplane.cli import app as cli_app
from inferplane.gateway.settings import ModelRoute
from inferplane.gateway.testing import deployment_gateway_settings, running_data_plane
from inferplane.simulator import count_chat_prompt_tokens
from inferplane.testing.asgi import dead_loopback_url, read_body, respond, serving
from inferplane.testing.postgres import postgres_server, postgres_url  # noqa: F401

from .openai_errors import assert_openai_error

ON, OFF = "detailed thinking on", "detailed thinking off"
QUESTION = [{"role": "user", "content": "What does a gateway sidecar do, in short?"}]
MAX_BODY_BYTES = 64 * 1024
MILLION = Decimal(1_000_000)


@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    """The shipped example (reasoning on by default) with a small body limit for the 413 case."""
    with running_data_plane(tmp_path_factory.mktemp("plane"),
                            max_body_bytes=MAX_BODY_BYTES) as plane:
        yield plane


def example_route(tmp_path) -> ModelRoute:
    """The shipped example's model route, as the gateway settings derive it."""
    return deployment_gateway_settings(tmp_path, "http://127.0.0.1:9").models[0]


# --- 1. the ledger directly on PostgreSQL ----------------------------------------------------


def cost_of(prompt_tokens: int, completion_tokens: int, route: ModelRoute) -> Decimal:
    """Prices per million tokens, computed here rather than by the code under test."""
    return (Decimal(prompt_tokens) * route.input_price_per_million / MILLION
            + Decimal(completion_tokens) * route.output_price_per_million / MILLION)


@pytest.mark.postgres
def test_a_gateway_on_a_postgres_ledger_records_what_the_client_saw(tmp_path, postgres_url):
    with running_data_plane(tmp_path, ledger_url=postgres_url) as plane:
        secret, entry = plane.add_key(tenant="acme")
        client = plane.client(secret)
        whole = client.chat.completions.with_raw_response.create(
            model=plane.model, messages=QUESTION, max_tokens=12)
        whole_usage = whole.parse().usage
        streamed = client.chat.completions.with_raw_response.create(
            model=plane.model, messages=QUESTION, max_tokens=9, stream=True,
            stream_options={"include_usage": True})
        stream_usage = list(streamed.parse())[-1].usage
        route = plane.settings.models[0]

    seen = {whole.headers["x-request-id"]: (whole_usage, False),
            streamed.headers["x-request-id"]: (stream_usage, True)}
    assert whole_usage.completion_tokens == 12 and stream_usage.completion_tokens == 9
    with psycopg.connect(postgres_url) as connection:  # the table itself, not the ledger's reader
        rows = connection.execute(
            "SELECT request_id, key_id, prompt_tokens, completion_tokens, cost, currency, "
            "streamed, status FROM usage_records").fetchall()
    assert {row[0] for row in rows} == set(seen)
    for request_id, key_id, prompt, completion, cost, currency, was_streamed, status in rows:
        usage, expected_streamed = seen[request_id]
        assert (key_id, status, was_streamed) == (entry.id, 200, expected_streamed)
        assert (prompt, completion) == (usage.prompt_tokens, usage.completion_tokens)
        assert isinstance(cost, Decimal)
        assert cost == cost_of(prompt, completion, route) and currency == "USD"

    result = CliRunner().invoke(cli_app, ["usage", "--ledger", postgres_url, "-o", "json"])
    assert result.exit_code == 0, result.output
    totals = json.loads(result.stdout)["totals"]
    usages = [usage for usage, _ in seen.values()]
    prompt = sum(usage.prompt_tokens for usage in usages)
    completion = sum(usage.completion_tokens for usage in usages)
    assert [(t["currency"], t["requests"], t["prompt_tokens"], t["completion_tokens"])
            for t in totals] == [("USD", 2, prompt, completion)]
    assert Decimal(totals[0]["cost"]) == sum(
        (cost_of(u.prompt_tokens, u.completion_tokens, route) for u in usages), Decimal(0))


# --- 2. reasoning defaults -------------------------------------------------------------------


def ask(plane, secret: str, messages=QUESTION, **kwargs) -> tuple[str, str | None, int]:
    """(x-inferplane-reasoning header, the reply's reasoning field, prompt tokens) of one chat
    completion (vLLM's reasoning parser puts the think block in `message.reasoning`)."""
    raw = plane.client(secret).chat.completions.with_raw_response.create(
        model=plane.model, messages=messages, max_tokens=40, **kwargs)
    reply = raw.parse()
    assert "<think>" not in (reply.choices[0].message.content or "")
    return (raw.headers["x-inferplane-reasoning"],
            (reply.choices[0].message.model_extra or {}).get("reasoning"),
            reply.usage.prompt_tokens)


def assert_reasoning(answer: tuple[str, str, int], on: bool) -> None:
    """The header, the model's output and the system prompt vLLM got all agree on `on`."""
    header, reasoning, prompt_tokens = answer
    assert header == ("on" if on else "off")
    assert bool(reasoning) == on
    toggle = {"role": "system", "content": ON if on else OFF}
    assert prompt_tokens == count_chat_prompt_tokens([toggle, *QUESTION])


def test_a_keys_reasoning_default_applies_when_the_request_says_nothing(plane):
    assert plane.settings.models[0].reasoning_default_on  # so "off" below is the key's doing
    off_key, _ = plane.add_key(reasoning_default=False)
    on_key, _ = plane.add_key(reasoning_default=True)
    no_default_key, _ = plane.add_key()
    assert_reasoning(ask(plane, off_key), on=False)
    assert_reasoning(ask(plane, on_key), on=True)
    assert_reasoning(ask(plane, no_default_key), on=True)


def test_a_request_parameter_overrides_the_keys_default(plane):
    off_key, _ = plane.add_key(reasoning_default=False)
    on_key, _ = plane.add_key(reasoning_default=True)
    assert_reasoning(ask(plane, off_key, reasoning_effort="high"), on=True)
    assert_reasoning(ask(plane, off_key, extra_body={"reasoning": True}), on=True)
    assert_reasoning(ask(plane, on_key, reasoning_effort="low"), on=False)
    assert_reasoning(ask(plane, on_key, extra_body={"reasoning": False}), on=False)


def test_a_deployment_default_of_off_applies_and_the_key_default_wins(tmp_path):
    route = example_route(tmp_path).model_copy(update={"reasoning_default_on": False})
    with running_data_plane(tmp_path, models=[route]) as plane:
        no_default_key, _ = plane.add_key()
        on_key, _ = plane.add_key(reasoning_default=True)
        assert_reasoning(ask(plane, no_default_key), on=False)
        assert_reasoning(ask(plane, on_key), on=True)
        assert_reasoning(ask(plane, no_default_key, reasoning_effort="medium"), on=True)


CANNED_USAGE = {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}


def recording_vllm(received: list[dict]):
    """An upstream that keeps every chat request body it gets and answers a fixed completion."""

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        body = await read_body(receive)
        if scope["path"] != "/v1/chat/completions":  # /health, and /metrics with nothing in it
            await respond(send, 200 if scope["path"] == "/health" else 404)
            return
        request = json.loads(body)
        received.append(request)
        reply = {"id": "chatcmpl-canned", "object": "chat.completion", "created": 0,
                 "model": request["model"], "usage": CANNED_USAGE,
                 "choices": [{"index": 0, "finish_reason": "stop",
                              "message": {"role": "assistant", "content": "Hi there."}}]}
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": json.dumps(reply).encode()})

    return app


def catalog_route(catalog_key: str, served_name: str) -> ModelRoute:
    spec = get_model(catalog_key)
    return ModelRoute(served_name=served_name, catalog_key=catalog_key,
                      reasoning_style=spec.reasoning_style, reasoning_default_on=False,
                      reasoning_prompts=dict(spec.reasoning_prompts),
                      input_price_per_million=spec.input_price_per_million,
                      output_price_per_million=spec.output_price_per_million)


def test_models_without_the_system_prompt_toggle_get_reasoning_effort_untouched(tmp_path):
    received: list[dict] = []
    gpt_oss = catalog_route("gpt-oss-120b", "openai/gpt-oss-120b")
    llama = catalog_route("llama-3.3-70b-instruct", "meta-llama/Llama-3.3-70B-Instruct")
    assert gpt_oss.reasoning_style is ReasoningStyle.REASONING_EFFORT
    assert llama.reasoning_style is ReasoningStyle.NONE
    nemotron = example_route(tmp_path)
    with serving(recording_vllm(received)) as upstream_url, running_data_plane(
            tmp_path, upstream_url=upstream_url, models=[nemotron, gpt_oss, llama]) as plane:
        secret, _ = plane.add_key(reasoning_default=True)  # must not leak into these models
        headers = {"Authorization": f"Bearer {secret}"}
        for route, effort in ((gpt_oss, "low"), (llama, "high"), (nemotron, "low")):
            sent = {"model": route.served_name, "messages": QUESTION, "reasoning_effort": effort}
            response = httpx.post(f"{plane.base_url}/chat/completions", json=sent,
                                  headers=headers, timeout=30)
            assert response.status_code == 200, response.text
            got = received[-1]
            if route is nemotron:  # the contrast: this style is rewritten into a system prompt
                assert "reasoning_effort" not in got
                assert got["messages"] == [{"role": "system", "content": OFF}, *QUESTION]
                assert response.headers["x-inferplane-reasoning"] == "off"
            else:
                assert got == sent
                assert "x-inferplane-reasoning" not in response.headers
                record = plane.record(response.headers["x-request-id"])
                assert (record.model, record.prompt_tokens, record.completion_tokens) == \
                    (route.served_name, 11, 3)
    assert len(received) == 3


# --- 3. one error metric per kind of refusal --------------------------------------------------

ERROR_COUNTERS = ("inferplane_gateway_rejected_requests_total",
                  "inferplane_gateway_upstream_errors_total",
                  "inferplane_gateway_auth_failures_total")


def error_counts(plane) -> dict[tuple[str, str], float]:
    """Every sample of the error counters in /metrics: (metric name, reason) -> value."""
    text = httpx.get(f"{plane.url}/metrics", timeout=10).text
    counts = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in ERROR_COUNTERS:
                counts[(sample.name, sample.labels["reason"])] = sample.value
    return counts


@contextmanager
def counts_exactly_one(plane, name: str, reason: str) -> Iterator[None]:
    """The block raises exactly `name{reason}` by one, and no other error counter at all."""
    before = error_counts(plane)
    yield
    after = error_counts(plane)
    changed = {series: after[series] - before.get(series, 0.0) for series in after
               if after[series] != before.get(series, 0.0)}
    assert changed == {(name, reason): 1.0}


def test_a_body_over_the_limit_is_413_and_counted_once(plane):
    secret, _ = plane.add_key()
    oversized = [{"role": "user", "content": "x" * MAX_BODY_BYTES}]
    with counts_exactly_one(plane, "inferplane_gateway_rejected_requests_total",
                            "body_too_large"):
        with pytest.raises(openai.APIStatusError) as refused:
            plane.client(secret).chat.completions.create(model=plane.model, messages=oversized)
    assert_openai_error(refused.value, 413, "request_too_large")


def test_an_unknown_model_is_404_and_counted_once(plane):
    secret, _ = plane.add_key()
    with counts_exactly_one(plane, "inferplane_gateway_rejected_requests_total", "unknown_model"):
        with pytest.raises(openai.NotFoundError) as refused:
            plane.client(secret).chat.completions.create(model="no-such-model",
                                                         messages=QUESTION)
    assert_openai_error(refused.value, 404, "model_not_found")
    assert refused.value.param == "model"


def test_a_model_the_key_may_not_use_is_403_and_counted_once(plane):
    secret, _ = plane.add_key(models=["some-other-model"])
    with counts_exactly_one(plane, "inferplane_gateway_rejected_requests_total",
                            "model_not_allowed"):
        with pytest.raises(openai.PermissionDeniedError) as refused:
            plane.client(secret).chat.completions.create(model=plane.model, messages=QUESTION)
    assert_openai_error(refused.value, 403, "model_not_allowed")


def test_a_wrong_key_is_401_counted_as_an_auth_failure_and_not_billed(plane):
    with counts_exactly_one(plane, "inferplane_gateway_auth_failures_total", "unknown"):
        with pytest.raises(openai.AuthenticationError) as refused:
            plane.client("ip-" + "x" * 43).chat.completions.create(model=plane.model,
                                                                   messages=QUESTION)
    assert_openai_error(refused.value, 401, "invalid_api_key")
    request_id = refused.value.response.headers["x-request-id"]
    assert request_id not in {record.request_id for record in plane.records()}


def test_an_unreachable_upstream_is_502_and_counted_once(tmp_path):
    with running_data_plane(tmp_path, upstream_url=dead_loopback_url()) as plane:
        secret, _ = plane.add_key()
        with counts_exactly_one(plane, "inferplane_gateway_upstream_errors_total",
                                "upstream_unreachable"):
            with pytest.raises(openai.InternalServerError) as refused:
                plane.client(secret).chat.completions.create(model=plane.model,
                                                             messages=QUESTION)
        assert_openai_error(refused.value, 502, "upstream_unavailable")
