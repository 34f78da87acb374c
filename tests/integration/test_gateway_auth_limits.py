"""Every auth and limit refusal through the real gateway, with the openai client's own errors,
and keys reloaded from the file without a restart."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import httpx
import openai
import pytest

from inferplane.gateway.keys import load_keys_file, revoke_key, save_keys_file
from inferplane.gateway.testing import running_data_plane

from .openai_errors import assert_openai_error

QUESTION = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    with running_data_plane(tmp_path_factory.mktemp("plane")) as plane:
        yield plane


def ask(plane, secret, **kwargs):
    return plane.client(secret).chat.completions.create(
        model=kwargs.pop("model", plane.model), messages=QUESTION, **kwargs)


@pytest.mark.parametrize("secret", ["ip-not-a-real-key", "x" * 2000])
def test_wrong_key_is_401(plane, secret):
    with pytest.raises(openai.AuthenticationError) as caught:
        ask(plane, secret)
    error = assert_openai_error(caught.value, 401, "invalid_api_key")
    assert error["type"] == "invalid_request_error"
    assert secret[:10] not in error["message"]  # keys are never echoed


def test_no_authorization_header_is_401_with_www_authenticate(plane):
    response = httpx.post(f"{plane.base_url}/chat/completions",
                          json={"model": plane.model, "messages": QUESTION})
    assert response.status_code == 401 and response.headers["www-authenticate"].startswith("Bearer")
    assert response.json()["error"]["code"] == "invalid_api_key"


def test_expired_and_revoked_keys_are_401(plane):
    expired, _ = plane.add_key(expires_at=datetime.now(timezone.utc) - timedelta(seconds=1))
    with pytest.raises(openai.AuthenticationError, match="Invalid API key"):
        ask(plane, expired)
    secret, entry = plane.add_key()
    ask(plane, secret, max_tokens=1)
    keys_file = load_keys_file(plane.keys_path)
    revoke_key(keys_file, entry.id)
    save_keys_file(plane.keys_path, keys_file)
    plane.app.keys.reload_if_changed()
    with pytest.raises(openai.AuthenticationError, match="Invalid API key"):
        ask(plane, secret)


def test_model_not_allowed_is_403_and_unknown_model_is_404(plane):
    secret, _ = plane.add_key(models=["another-model"])
    with pytest.raises(openai.PermissionDeniedError) as caught:
        ask(plane, secret)
    assert_openai_error(caught.value, 403, "model_not_allowed")
    open_key, _ = plane.add_key()
    with pytest.raises(openai.NotFoundError) as caught:
        ask(plane, open_key, model="gpt-4o")
    assert_openai_error(caught.value, 404, "model_not_found")["param"] == "model"


def test_rpm_limit_is_429_with_retry_after(plane):
    secret, entry = plane.add_key(rpm=2)
    ask(plane, secret, max_tokens=1)
    ask(plane, secret, max_tokens=1)
    with pytest.raises(openai.RateLimitError) as caught:
        ask(plane, secret, max_tokens=1)
    assert_openai_error(caught.value, 429, "rate_limit_exceeded")
    assert int(caught.value.response.headers["retry-after"]) >= 1
    refused = plane.record(caught.value.response.headers["x-request-id"])
    assert (refused.status, refused.prompt_tokens, refused.cost) == (429, 0, Decimal(0))


def test_tpm_limit_refuses_a_reservation_that_does_not_fit(plane):
    secret, _ = plane.add_key(tpm=1000)
    first = ask(plane, secret, reasoning_effort="none")  # no max_tokens: reserves the whole 1000
    used = first.usage.total_tokens
    assert 0 < used < 100  # settled to the real usage: ~1000 - used tokens free again
    ask(plane, secret, max_tokens=10, reasoning_effort="none")
    with pytest.raises(openai.RateLimitError) as caught:
        ask(plane, secret, max_tokens=990)  # prompt estimate + 990 > what is left
    assert_openai_error(caught.value, 429, "rate_limit_exceeded")
    assert "tokens per minute" in caught.value.message
    assert int(caught.value.response.headers["retry-after"]) >= 1


def test_budget_is_429_insufficient_quota_and_survives_a_restart(tmp_path):
    with running_data_plane(tmp_path) as plane:
        # Each answer of 16 tokens at 1.80/M plus ~20 prompt tokens at 0.60/M costs ~0.00004.
        secret, entry = plane.add_key(budget=Decimal("0.0001"))
        spent = Decimal(0)
        with pytest.raises(openai.RateLimitError) as caught:
            for _ in range(10):
                ask(plane, secret, max_tokens=16, reasoning_effort="none")
                spent = sum(r.cost for r in plane.records() if r.key_id == entry.id)
        error = assert_openai_error(caught.value, 429, "insufficient_quota")
        assert error["type"] == "insufficient_quota"
        assert int(caught.value.response.headers["retry-after"]) >= 1
        assert Decimal(0) < spent <= Decimal("0.0001")
    with running_data_plane(tmp_path) as restarted:  # same ledger and keys file
        with pytest.raises(openai.RateLimitError, match="budget"):
            ask(restarted, secret, max_tokens=16, reasoning_effort="none")


def test_alone_on_sqlite_the_spend_settled_in_memory_is_the_ledgers_and_is_not_reread(tmp_path):
    """A gateway alone on its SQLite ledger reads the month once, at startup, and then keeps it
    by settling every committed cost: that sum must be exactly the ledger's, whatever the mix of
    answers (whole, streamed, legacy completions, refused by vLLM or by the gateway)."""
    with running_data_plane(tmp_path) as plane:
        secret, entry = plane.add_key(budget=Decimal("100"))
        client = plane.client(secret)
        ask(plane, secret, max_tokens=7)
        ask(plane, secret, max_tokens=5, reasoning_effort="none")
        list(client.chat.completions.create(model=plane.model, messages=QUESTION, stream=True,
                                            max_tokens=9))
        client.completions.create(model=plane.model, prompt="Say something.", max_tokens=4)
        with pytest.raises(openai.BadRequestError):  # vLLM's own 400: billed nothing
            ask(plane, secret, max_tokens=200_000)  # over the context, within the budget
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="no-such-model", messages=QUESTION)
        month = datetime.now(timezone.utc).strftime("%Y-%m")
        in_memory = plane.app.limiter.spent(entry.id, month)
        tasks = [task.get_coro().__name__ for task in plane.app._tasks]
    in_ledger = sum(r.cost for r in plane.records() if r.key_id == entry.id)
    assert in_ledger > 0 and in_memory == in_ledger
    assert "_refresh_spend_forever" not in tasks
    assert "_watch_keys" in tasks  # the list is the app's background work


def test_a_new_key_works_without_a_restart(plane):
    secret, _ = plane.add_key(reload=False)  # only the file changes; the watcher must see it
    deadline = time.monotonic() + 15
    while True:
        try:
            ask(plane, secret, max_tokens=1)
            break
        except openai.AuthenticationError:
            assert time.monotonic() < deadline, "the gateway never loaded the new key"
            time.sleep(0.2)


def test_auth_failures_are_counted_by_reason(plane):
    before = httpx.get(f"{plane.url}/metrics").text
    with pytest.raises(openai.AuthenticationError):
        ask(plane, "ip-unknown")
    after = httpx.get(f"{plane.url}/metrics").text

    def value(text: str) -> float:
        for line in text.splitlines():
            if line.startswith('inferplane_gateway_auth_failures_total{reason="unknown"}'):
                return float(line.split()[-1])
        return 0.0

    assert value(after) == value(before) + 1


def test_a_refusal_says_what_the_estimate_was_made_of(plane):
    # Was: "(prompt + max_tokens)" when no max_tokens was sent, and the whole budget quoted as
    # the request's estimate.
    secret, _ = plane.add_key(budget=Decimal("0.001"))
    ask(plane, secret, max_tokens=16, reasoning_effort="none")  # some of the budget is spent
    with pytest.raises(openai.RateLimitError) as caught:
        ask(plane, secret)  # no max_tokens: the rest of the 131072-token context at 1.80/M
    message = caught.value.body["message"] if isinstance(caught.value.body, dict) else caught.value.message
    assert "as no max_tokens was sent" in message and "131072-token context" in message
    assert "Set max_tokens" in message and "(prompt + max_tokens)" not in message
    quoted = Decimal(message.split("may cost up to ")[1].split(" ")[0])
    assert quoted > Decimal("0.2")  # ~131k tokens at 1.80/M, not the 0.001 budget
    with pytest.raises(openai.RateLimitError) as caught:
        ask(plane, secret, max_tokens=5000, n=2)
    message = caught.value.body["message"] if isinstance(caught.value.body, dict) else caught.value.message
    assert "max_tokens 5000, for each of 2 choices" in message and "Send a smaller max_tokens" in message
