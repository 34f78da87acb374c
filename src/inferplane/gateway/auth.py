"""Bearer-key authentication: which key (and so which tenant and limits) a request belongs to.

The client gets one message for every failure, so that it cannot probe which keys exist;
the precise reason (missing, malformed, unknown, expired, revoked) goes to the metric label and,
for a key that exists, its id to the server log.
"""

from __future__ import annotations

import logging

from inferplane.gateway.errors import GatewayError, invalid_api_key
from inferplane.gateway.keys import ApiKey, KeyStore
from inferplane.gateway.validation import shown

log = logging.getLogger("inferplane.gateway.auth")
_BEARER = b"bearer "
# Longer than any key we issue; anything bigger is not worth hashing.
_MAX_KEY_BYTES = 256


# The one message of every 401: a client must not learn whether a key exists, has expired or
# was revoked (the reason goes to the auth-failure metric, the key id to the server log).
INVALID_KEY_MESSAGE = ("Invalid API key: send a valid, current key as "
                       "'Authorization: Bearer <key>'.")


def authenticate(authorization: bytes | None, store: KeyStore, now_epoch: float) -> ApiKey:
    """The key named by an `Authorization: Bearer <key>` header, or a 401 GatewayError."""
    if not authorization:
        raise invalid_api_key(INVALID_KEY_MESSAGE, reason="missing")
    if authorization[:7].lower() != _BEARER:
        raise invalid_api_key(INVALID_KEY_MESSAGE, reason="malformed")
    token = authorization[7:].strip()
    if not token or len(token) > _MAX_KEY_BYTES:
        raise invalid_api_key(INVALID_KEY_MESSAGE, reason="malformed")
    try:
        text = token.decode("ascii")
    except UnicodeDecodeError:
        raise invalid_api_key(INVALID_KEY_MESSAGE, reason="malformed") from None
    key = store.lookup(text)
    if key is None:
        raise invalid_api_key(INVALID_KEY_MESSAGE, reason="unknown")
    if key.entry.revoked:
        log.info("refused revoked key %s", key.key_id)
        raise invalid_api_key(INVALID_KEY_MESSAGE, reason="revoked")
    if key.expires_at_epoch is not None and now_epoch >= key.expires_at_epoch:
        log.info("refused expired key %s", key.key_id)
        raise invalid_api_key(INVALID_KEY_MESSAGE, reason="expired")
    return key


def check_model_allowed(key: ApiKey, model: str) -> None:
    """403 when the key may not use `model` (the model exists: 404 is for unknown models)."""
    if not key.allows_model(model):
        raise GatewayError(
            403, f"This API key may not use the model '{shown(model)}'. Allowed: "
            f"{', '.join(sorted(key.allowed_models))}.",
            param="model", code="model_not_allowed", reason="model_not_allowed")
