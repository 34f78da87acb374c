"""Errors the gateway answers itself, in the OpenAI error shape clients already parse.

Every refusal is a `GatewayError`: the HTTP status, the OpenAI fields, extra headers (Retry-After)
and a short `reason` that becomes the label of the error metric. Nothing here ever echoes a key or
request content back.
"""

from __future__ import annotations

import json


class GatewayError(Exception):
    """A request the gateway answers with an OpenAI-shaped error instead of forwarding it."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, reason: str | None = None,
                 headers: list[tuple[bytes, bytes]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.reason = reason or code or "error"
        self.headers = headers or []

    def body(self) -> bytes:
        return error_body(self.message, type=self.type, param=self.param, code=self.code)


def error_body(message: str, *, type: str, param: str | None = None,
               code: str | int | None = None) -> bytes:
    """`{"error": {"message", "type", "param", "code"}}` as JSON bytes."""
    return json.dumps({"error": {"message": message, "type": type, "param": param, "code": code}},
                      ensure_ascii=False).encode()


def invalid_request(message: str, *, param: str | None = None, code: str = "invalid_request",
                    status: int = 400) -> GatewayError:
    """400 for a body the gateway can tell is wrong before the model sees it."""
    return GatewayError(status, message, param=param, code=code)


def invalid_api_key(message: str, reason: str) -> GatewayError:
    """401: missing, unknown, expired or revoked key (the reason is for metrics)."""
    return GatewayError(401, message, code="invalid_api_key", reason=reason,
                        headers=[(b"www-authenticate", b'Bearer realm="inferplane"')])


def rate_limited(message: str, retry_after_seconds: int, *, code: str, reason: str) -> GatewayError:
    """429 with Retry-After (whole seconds, at least 1)."""
    retry = max(1, int(retry_after_seconds))
    return GatewayError(429, message, type="rate_limit_error" if code != "insufficient_quota"
                        else "insufficient_quota", code=code, reason=reason,
                        headers=[(b"retry-after", str(retry).encode())])


def upstream_error(status: int, message: str, *, code: str, reason: str) -> GatewayError:
    """502/504 when vLLM cannot be reached or does not answer in time."""
    return GatewayError(status, message, type="server_error", code=code, reason=reason)
