"""Per-key limits: requests per minute, tokens per minute and a monthly budget.

Admission reserves the worst case of a request up front (its prompt estimate plus `max_tokens`,
or the model's remaining context when `max_tokens` is absent) and settlement replaces the
reservation by the real usage. So concurrent streams cannot overshoot a limit: only a request
whose worst case is larger than the whole limit is clamped to it, and then it waits for a full
bucket.

RPM and TPM are token buckets (capacity = the per-minute limit, refilled continuously), answered
with 429 + Retry-After. The budget is per UTC calendar month, answered with 429 and code
`insufficient_quota` as OpenAI does (clients already handle it), Retry-After = seconds to the next
month. Limits are per gateway process; the budget's month-to-date spend is read from the ledger at
start and refreshed, so it survives restarts and (with a shared PostgreSQL ledger) sees replicas.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal

from inferplane.gateway.errors import rate_limited
from inferplane.gateway.keys import ApiKey

# A cheap, deliberately high prompt estimate: JSON bytes / 4 (about 4 bytes per token of text).
BYTES_PER_TOKEN_ESTIMATE = 4
_ZERO = Decimal(0)


def estimate_prompt_tokens(body_bytes: int) -> int:
    """Upper-ish estimate of prompt tokens from the request body size."""
    return body_bytes // BYTES_PER_TOKEN_ESTIMATE + 1


def month_of(now_epoch: float) -> str:
    """The UTC calendar month, e.g. '2026-11', that budgets are counted in."""
    return datetime.fromtimestamp(now_epoch, timezone.utc).strftime("%Y-%m")


class _MonthClock:
    """month_of() for the hot path: recomputed only when a month boundary is crossed."""

    def __init__(self) -> None:
        self.start = self.end = 0.0
        self.label = ""

    def __call__(self, now_epoch: float) -> str:
        if not self.start <= now_epoch < self.end:
            moment = datetime.fromtimestamp(now_epoch, timezone.utc)
            start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
            self.start = start.timestamp()
            self.end = self.start + seconds_to_next_month(self.start)
            self.label = start.strftime("%Y-%m")
        return self.label


def seconds_to_next_month(now_epoch: float) -> int:
    now = datetime.fromtimestamp(now_epoch, timezone.utc)
    year, month = (now.year + 1, 1) if now.month == 12 else (now.year, now.month + 1)
    start = datetime(year, month, 1, tzinfo=timezone.utc)
    return max(1, math.ceil((start - now).total_seconds()))


@dataclass
class TokenBucket:
    """Holds up to `capacity` units, refilled at `capacity / 60` per second."""

    capacity: float
    level: float
    updated: float

    @property
    def rate_per_second(self) -> float:
        return self.capacity / 60.0

    def refill(self, now: float) -> None:
        if now > self.updated:
            refill = (now - self.updated) * self.rate_per_second
            self.level = min(self.capacity, self.level + refill)
            self.updated = now

    def seconds_until(self, amount: float) -> float:
        return max(0.0, (amount - self.level) / self.rate_per_second)


def describe_estimate(prompt_tokens: int, completion_cap: int, generations: int,
                      max_tokens_sent: bool, max_model_len: int) -> tuple[str, str]:
    """(what a reservation was made of, what the client can change) for a refusal's message:
    it names max_tokens only when the request sent one."""
    if max_tokens_sent:
        completion, advice = f"max_tokens {completion_cap}", "Send a smaller max_tokens"
    else:
        completion = (f"the {completion_cap} tokens left of the {max_model_len}-token context, "
                      "as no max_tokens was sent")
        advice = "Set max_tokens to what the answer needs"
    choices = f", for each of {generations} choices" if generations > 1 else ""
    return f"a prompt estimate of {prompt_tokens} tokens + {completion}{choices}", advice


def _no_basis() -> tuple[str, str]:
    return "its prompt estimate + completion cap", "Send a smaller max_tokens"


@dataclass
class Reservation:
    """What admission took from a key's limits; hand it back to `settle`."""

    key_id: str
    tokens: int
    cost: Decimal
    month: str
    settled: bool = False


@dataclass
class _KeyState:
    rpm: int | None
    tpm: int | None
    rpm_bucket: TokenBucket | None
    tpm_bucket: TokenBucket | None


@dataclass
class _MonthSpend:
    spent: Decimal = _ZERO
    reserved: Decimal = _ZERO
    since_refresh: Decimal = _ZERO  # settled locally while a ledger refresh was running


@dataclass
class Limiter:
    """Admission and settlement for every key; one instance per gateway process."""

    currency: str = "USD"
    _keys: dict[str, _KeyState] = field(default_factory=dict)
    _spend: dict[tuple[str, str], _MonthSpend] = field(default_factory=dict)
    _month: _MonthClock = field(default_factory=_MonthClock)

    def _state(self, key: ApiKey, now: float) -> _KeyState:
        entry = key.entry
        state = self._keys.get(entry.id)
        if state is None or state.rpm != entry.rpm or state.tpm != entry.tpm:
            # New key, or its limits changed in a reload: start from a full bucket, but never
            # more than the old level, so an edit cannot be used to reset a drained limit.
            def bucket(limit: int | None, old: TokenBucket | None) -> TokenBucket | None:
                if limit is None:
                    return None
                level = float(limit) if old is None else min(float(limit), old.level)
                return TokenBucket(capacity=float(limit), level=level, updated=now)

            state = _KeyState(
                rpm=entry.rpm, tpm=entry.tpm,
                rpm_bucket=bucket(entry.rpm, state.rpm_bucket if state else None),
                tpm_bucket=bucket(entry.tpm, state.tpm_bucket if state else None),
            )
            self._keys[entry.id] = state
        return state

    def _month_spend(self, key_id: str, month: str) -> _MonthSpend:
        spend = self._spend.get((key_id, month))
        if spend is None:
            spend = self._spend[(key_id, month)] = _MonthSpend()
        return spend

    def admit(self, key: ApiKey, reserve_tokens: int, reserve_cost: Decimal,
              now: float, basis: Callable[[], tuple[str, str]] | None = None) -> Reservation:
        """Take one request and its worst-case tokens and cost, or raise a 429 GatewayError.

        All checks run before anything is taken, so a refused request costs the key nothing.
        `basis` says, only when a refusal needs it, what the estimate was made of and what the
        client can change (see `describe_estimate`).
        """
        entry = key.entry
        state = self._state(key, now)
        month = self._month(now)
        tokens_needed = reserve_tokens
        if state.rpm_bucket is not None:
            state.rpm_bucket.refill(now)
            if state.rpm_bucket.level < 1.0:
                raise rate_limited(
                    f"Rate limit reached: {entry.rpm} requests per minute for this API key.",
                    math.ceil(state.rpm_bucket.seconds_until(1.0)),
                    code="rate_limit_exceeded", reason="rpm")
        if state.tpm_bucket is not None:
            state.tpm_bucket.refill(now)
            tokens_needed = min(reserve_tokens, int(state.tpm_bucket.capacity))
            if state.tpm_bucket.level < tokens_needed:
                made_of, advice = (basis or _no_basis)()
                raise rate_limited(
                    f"Rate limit reached: {entry.tpm} tokens per minute for this API key; this "
                    f"request reserves {tokens_needed} tokens ({made_of}). {advice} or retry "
                    "later.",
                    math.ceil(state.tpm_bucket.seconds_until(tokens_needed)),
                    code="rate_limit_exceeded", reason="tpm")
        cost_needed = reserve_cost
        if entry.monthly_budget is not None:
            spend = self._month_spend(entry.id, month)
            remaining = entry.monthly_budget - spend.spent - spend.reserved
            cost_needed = min(reserve_cost, entry.monthly_budget)
            if remaining <= _ZERO or cost_needed > remaining:
                made_of, advice = (basis or _no_basis)()
                raise rate_limited(
                    f"Monthly budget of {entry.monthly_budget} {self.currency} for this API key "
                    f"is used up: {max(remaining, _ZERO):.6f} {self.currency} left, and this "
                    f"request may cost up to {reserve_cost:.6f} {self.currency} ({made_of}). "
                    f"{advice}, or ask for a larger budget.",
                    seconds_to_next_month(now), code="insufficient_quota", reason="budget")
            spend.reserved += cost_needed
        if state.rpm_bucket is not None:
            state.rpm_bucket.level -= 1.0
        if state.tpm_bucket is not None:
            state.tpm_bucket.level -= tokens_needed
        return Reservation(entry.id, tokens_needed if state.tpm_bucket else 0,
                           cost_needed if entry.monthly_budget is not None else _ZERO, month)

    def settle(self, reservation: Reservation, actual_tokens: int, actual_cost: Decimal) -> None:
        """Replace a reservation by what the request really used (at most once)."""
        if reservation.settled:
            return
        reservation.settled = True
        state = self._keys.get(reservation.key_id)
        if state is not None and state.tpm_bucket is not None:
            # May go negative when a response used more than it reserved: the debt throttles
            # the next requests instead of being forgotten.
            bucket = state.tpm_bucket
            bucket.level = min(bucket.capacity, bucket.level + reservation.tokens - actual_tokens)
        spend = self._month_spend(reservation.key_id, reservation.month)
        spend.reserved -= reservation.cost
        spend.spent += actual_cost
        spend.since_refresh += actual_cost

    def begin_spend_refresh(self) -> None:
        """Call before reading month-to-date spend from the ledger."""
        for spend in self._spend.values():
            spend.since_refresh = _ZERO

    def finish_spend_refresh(self, month: str, spent_by_key: dict[str, Decimal]) -> None:
        """Install the ledger's month-to-date spend; costs settled meanwhile are kept on top
        (a record may then count twice until the next refresh: over- not under-counting)."""
        for (key_id, spend_month), spend in self._spend.items():
            if spend_month == month and key_id not in spent_by_key:
                spend.spent = spend.since_refresh
        for key_id, spent in spent_by_key.items():
            spend = self._month_spend(key_id, month)
            spend.spent = spent + spend.since_refresh

    def spent(self, key_id: str, month: str) -> Decimal:
        spend = self._spend.get((key_id, month))
        return spend.spent if spend else _ZERO
