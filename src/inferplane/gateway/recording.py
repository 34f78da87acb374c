"""Metering's end of every request: the usage record (committed before the response completes),
the settlement of the key's limits, and the request's metrics and access line. GatewayApp
(app.py) inherits it."""

from __future__ import annotations

import logging
import time
from decimal import Decimal

from inferplane.gateway.errors import GatewayError
from inferplane.gateway.exchange import ANONYMOUS, Exchange
from inferplane.gateway.metering import Usage
from inferplane.ledger.records import UsageRecord, price

log = logging.getLogger("inferplane.gateway")

_ZERO_USAGE = Usage()
_ZERO = Decimal(0)


class Recording:
    """Usage records, settlement and per-request metrics."""

    def _make_record(self, ex: Exchange) -> UsageRecord:
        usage = ex.usage or _ZERO_USAGE
        route = ex.route
        input_price = route.input_price_per_million if route else _ZERO
        output_price = route.output_price_per_million if route else _ZERO
        key = ex.key or ANONYMOUS
        return UsageRecord(
            request_id=ex.request_id, key_id=key.key_id, tenant=key.tenant, model=ex.model,
            endpoint=ex.path, created_at=ex.created_at, prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens, cached_tokens=usage.cached_tokens,
            input_price_per_million=input_price, output_price_per_million=output_price,
            cost=price(usage.prompt_tokens, usage.completion_tokens, input_price, output_price),
            currency=self.settings.currency, status=ex.status, streamed=ex.streamed,
            latency_ms=(time.perf_counter() - ex.started) * 1000.0,
            ttft_ms=None if ex.ttft_seconds is None else ex.ttft_seconds * 1000.0,
            reasoning_tokens=usage.reasoning_tokens,
        )

    async def _record(self, ex: Exchange) -> bool:
        """Commit the usage record of `ex`. False when it was not kept (the response must then
        not complete); True when committed, or queued for retry while the database is down."""
        from inferplane.ledger import LedgerUnavailableError

        record = self._make_record(ex)
        ok = True
        started = time.perf_counter()
        try:
            await self.writer.write(record)
            self.metrics.observe_ledger_write(time.perf_counter() - started)
        except LedgerUnavailableError as error:
            # Still queued and retried by the writer: deliver, but say so.
            self.metrics.ledger_write_failures.inc()
            log.warning("usage record %s not yet committed (queued for retry): %s",
                        ex.request_id, error)
        except Exception as error:
            self.metrics.ledger_write_failures.inc()
            log.error("usage record %s was not kept: %s", ex.request_id, error)
            ok = False
        if ok:
            self._settle(ex, record.cost)
            if ex.route is not None:
                self.metrics.observe_usage(ex.model, record.key_id, record.prompt_tokens,
                                           record.completion_tokens, record.cost,
                                           record.currency)
        return ok

    def _settle(self, ex: Exchange, cost: Decimal) -> None:
        if ex.reservation is not None:
            usage = ex.usage or _ZERO_USAGE
            self.limiter.settle(ex.reservation, usage.total_tokens, cost)

    @staticmethod
    def _unmetered() -> GatewayError:
        error = GatewayError(503, "Usage metering is unavailable; the response was withheld. "
                             "Retry shortly.", type="server_error", code="metering_unavailable",
                             reason="ledger_unavailable", headers=[(b"retry-after", b"5")])
        error.record = False  # type: ignore[attr-defined]
        return error

    def _finish(self, ex: Exchange) -> None:
        if ex.reservation is not None and not ex.reservation.settled:
            # The record was not kept: release the reservation, charge nothing locally.
            self.limiter.settle(ex.reservation, 0, _ZERO)
        elapsed = time.perf_counter() - ex.started
        model = ex.model_label
        key_id = ex.key.key_id if ex.key is not None else "none"
        self.metrics.observe_request(
            model, key_id, ex.status, elapsed if ex.route is not None else None,
            ex.ttft_seconds if ex.streamed else None)
        if self.access_log is not None:
            self.access_log.record(ex.request_id, ex.method, ex.path, ex.status, key_id, model,
                                   elapsed)
