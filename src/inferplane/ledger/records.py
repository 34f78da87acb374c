"""The usage record: what metering writes for every response and the ledger keeps.

No prompt or completion text ever appears here; only counts, prices and timings.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal


@dataclass(frozen=True)
class UsageRecord:
    """One response's usage; `request_id` is the idempotency key in every ledger."""

    request_id: str
    key_id: str
    tenant: str
    model: str  # the served model name the client asked for
    endpoint: str  # e.g. /v1/chat/completions
    created_at: datetime  # UTC, when the request arrived
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    input_price_per_million: Decimal
    output_price_per_million: Decimal
    cost: Decimal  # in `currency`, exact (Decimal), from the prices above
    currency: str
    status: int  # HTTP status sent to the client (499 = client went away mid-stream)
    streamed: bool
    latency_ms: float
    ttft_ms: float | None  # time to first token; None when no token was produced
    # Of completion_tokens, those inside the think block (vLLM's reasoning parser counts them;
    # 0 when it does not report them). Billed as output tokens: already in completion_tokens.
    reasoning_tokens: int = 0


def price(prompt_tokens: int, completion_tokens: int, input_per_million: Decimal,
          output_per_million: Decimal) -> Decimal:
    """Exact cost of a response: tokens x price per million, no rounding."""
    return (Decimal(prompt_tokens) * input_per_million
            + Decimal(completion_tokens) * output_per_million) / Decimal(1_000_000)
