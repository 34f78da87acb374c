"""Bearer-key authentication: which key (and so which tenant and limits) a request belongs to.

The client gets one message for every failure, so that it cannot probe which keys exist;
the precise reason (missing, malformed, unknown, expired, revoked) goes to the metric label.
"""

from __future__ import annotations

from inferplane.gateway.errors import GatewayError, invalid_api_key
from inferplane.gateway.keys import ApiKey, KeyStore
from inferplane.gateway.validation import shown

_BEARER = b"bearer "
# Longer than any key we issue; anything bigger is not worth hashing.
_MAX_KEY_BYTES = 256


def authenticate(authorization: bytes | None, store: KeyStore, now_epoch: float) -> ApiKey:
    """The key named by an `Authorization: Bearer <key>` header, or a 401 GatewayError."""
    if not authorization:
        raise invalid_api_key(
            "Missing API key: send it as 'Authorization: Bearer <key>'.", reason="missing")
    if authorization[:7].lower() != _BEARER:
        raise invalid_api_key(
            "Malformed Authorization header: use 'Authorization: Bearer <key>'.",
            reason="malformed")
    token = authorization[7:].strip()
    if not token or len(token) > _MAX_KEY_BYTES:
        raise invalid_api_key("Incorrect API key provided.", reason="malformed")
    try:
        text = token.decode("ascii")
    except UnicodeDecodeError:
        raise invalid_api_key("Incorrect API key provided.", reason="malformed") from None
    key = store.lookup(text)
    if key is None:
        raise invalid_api_key("Incorrect API key provided.", reason="unknown")
    if key.entry.revoked:
        raise invalid_api_key("This API key has been revoked.", reason="revoked")
    if key.expires_at_epoch is not None and now_epoch >= key.expires_at_epoch:
        raise invalid_api_key("This API key has expired.", reason="expired")
    return key


def check_model_allowed(key: ApiKey, model: str) -> None:
    """403 when the key may not use `model` (the model exists: 404 is for unknown models)."""
    if not key.allows_model(model):
        raise GatewayError(
            403, f"This API key may not use the model '{shown(model)}'. Allowed: "
            f"{', '.join(sorted(key.allowed_models))}.",
            param="model", code="model_not_allowed", reason="model_not_allowed")
