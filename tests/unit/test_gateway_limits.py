"""Per-key limits with explicit clocks: reservation, settlement, Retry-After, monthly budgets."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal

import pytest

from inferplane.gateway.errors import GatewayError
from inferplane.gateway.keys import ApiKey, KeyEntry
from inferplane.gateway.limits import Limiter, month_of, seconds_to_next_month

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=timezone.utc).timestamp()


def key(**limits) -> ApiKey:
    entry = KeyEntry(id="key_test1", sha256="a" * 64, tenant="t",
                     created_at=datetime(2026, 1, 1, tzinfo=timezone.utc), **limits)
    return ApiKey(entry=entry, expires_at_epoch=None, allowed_models=frozenset())


def refused(call) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        call()
    return caught.value


def retry_after(error: GatewayError) -> int:
    return int(dict(error.headers)[b"retry-after"])


def test_rpm_refuses_the_request_over_the_limit_with_retry_after():
    limiter, k = Limiter(), key(rpm=2)
    limiter.admit(k, 1, Decimal(0), T0)
    limiter.admit(k, 1, Decimal(0), T0)
    error = refused(lambda: limiter.admit(k, 1, Decimal(0), T0))
    assert (error.status, error.code, error.reason) == (429, "rate_limit_exceeded", "rpm")
    assert retry_after(error) == 30  # one request refills in 60 s / 2
    limiter.admit(k, 1, Decimal(0), T0 + 30)  # and then it is admitted


def test_tpm_reserves_up_front_and_settles_to_real_usage():
    limiter, k = Limiter(), key(tpm=1000)
    first = limiter.admit(k, 600, Decimal(0), T0)
    error = refused(lambda: limiter.admit(k, 600, Decimal(0), T0))  # 400 left < 600 reserved
    assert error.reason == "tpm" and retry_after(error) == 12  # 200 tokens at 1000/60 per s
    limiter.settle(first, 100, Decimal(0))  # used far less than reserved: 900 free again
    limiter.admit(k, 600, Decimal(0), T0)


def test_usage_beyond_the_reservation_is_owed_not_forgotten():
    limiter, k = Limiter(), key(tpm=1000)
    reservation = limiter.admit(k, 100, Decimal(0), T0)
    limiter.settle(reservation, 1600, Decimal(0))  # bucket: 1000 - 100 + 100 - 1600 = -600
    error = refused(lambda: limiter.admit(k, 10, Decimal(0), T0 + 30))  # +500 refilled: -100
    assert error.reason == "tpm"
    limiter.admit(k, 10, Decimal(0), T0 + 37)


def test_a_request_larger_than_the_whole_tpm_waits_for_a_full_bucket():
    limiter, k = Limiter(), key(tpm=1000)
    reservation = limiter.admit(k, 50_000, Decimal(0), T0)  # clamped to 1000
    assert reservation.tokens == 1000
    assert refused(lambda: limiter.admit(k, 50_000, Decimal(0), T0 + 1)).reason == "tpm"


def test_settling_twice_counts_once():
    limiter, k = Limiter(), key(tpm=1000)
    reservation = limiter.admit(k, 500, Decimal(0), T0)
    limiter.settle(reservation, 500, Decimal(0))
    limiter.settle(reservation, 500, Decimal(0))
    limiter.admit(k, 500, Decimal(0), T0)
    assert refused(lambda: limiter.admit(k, 1, Decimal(0), T0)).reason == "tpm"


def test_budget_admits_only_what_fits_and_answers_insufficient_quota():
    limiter, k = Limiter(currency="EUR"), key(monthly_budget=Decimal("1.00"))
    a = limiter.admit(k, 0, Decimal("0.60"), T0)
    error = refused(lambda: limiter.admit(k, 0, Decimal("0.60"), T0))  # 0.40 left
    assert (error.status, error.code, error.type) == (429, "insufficient_quota",
                                                      "insufficient_quota")
    assert retry_after(error) == seconds_to_next_month(T0)
    assert "EUR" in error.message and "max_tokens" in error.message
    limiter.settle(a, 0, Decimal("0.25"))  # real cost: 0.75 left
    limiter.admit(k, 0, Decimal("0.60"), T0)
    assert limiter.spent("key_test1", month_of(T0)) == Decimal("0.25")


def test_budget_resets_with_the_month_and_uses_the_ledgers_spend():
    limiter, k = Limiter(), key(monthly_budget=Decimal("5"))
    limiter.begin_spend_refresh()
    limiter.finish_spend_refresh(month_of(T0), {"key_test1": Decimal("5")})
    assert refused(lambda: limiter.admit(k, 0, Decimal("0.01"), T0)).reason == "budget"
    next_month = datetime(2026, 12, 1, tzinfo=timezone.utc).timestamp()
    limiter.admit(k, 0, Decimal("0.01"), next_month)


def test_refresh_keeps_costs_settled_while_it_ran():
    limiter, k = Limiter(), key(monthly_budget=Decimal("5"))
    reservation = limiter.admit(k, 0, Decimal("1"), T0)
    limiter.begin_spend_refresh()
    limiter.settle(reservation, 0, Decimal("1"))  # committed after the ledger was read
    limiter.finish_spend_refresh(month_of(T0), {"key_test1": Decimal("2")})
    assert limiter.spent("key_test1", month_of(T0)) == Decimal("3")


def test_changed_limits_in_a_reload_do_not_refill_a_drained_bucket():
    limiter = Limiter()
    limiter.admit(key(rpm=1), 1, Decimal(0), T0)
    assert refused(lambda: limiter.admit(key(rpm=5), 1, Decimal(0), T0)).reason == "rpm"


def test_seconds_to_next_month_crosses_the_year():
    moment = datetime(2026, 12, 31, 23, 59, 0, tzinfo=timezone.utc).timestamp()
    assert seconds_to_next_month(moment) == 60
