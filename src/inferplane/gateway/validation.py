"""Checks on a request body before it costs anything: JSON, and the fields the gateway relies on.

Only what the gateway itself uses is checked here (model, stream flags, token caps); everything
else is vLLM's to validate, and its 400s reach the client in the OpenAI shape.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from inferplane.gateway.errors import GatewayError, invalid_request


def parse_json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, or a 400 naming what is wrong (never the content itself).

    orjson is strict where vLLM is: NaN, Infinity, numbers out of double range, invalid UTF-8
    and lone surrogates are refused here. Integers beyond 64 bits become floats (no parameter
    vLLM takes is that large; vLLM refuses the float as it would have refused the integer)."""
    if not body:
        raise invalid_request("The request body is empty; send a JSON object.", code="invalid_json")
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        reason = str(error)
        if "UTF-8" in reason:
            message = "The request body is not UTF-8 encoded JSON."
        elif reason.startswith("depth limit exceeded") or "recursion" in reason:
            raise invalid_json_depth() from None
        else:
            message = f"The request body is not valid JSON (at character {error.pos})."
        raise invalid_request(message, code="invalid_json") from None
    if not isinstance(payload, dict):
        raise invalid_request("The request body must be a JSON object.", code="invalid_json")
    return payload


def invalid_json_depth() -> GatewayError:
    """400 for a body nested deeper than the gateway reads or writes JSON."""
    return invalid_request("The request body is nested too deeply.", code="invalid_json")


def _optional_bool(payload: dict[str, Any], name: str, param: str | None = None) -> bool | None:
    value = payload.get(name)
    if value is not None and not isinstance(value, bool):
        raise invalid_request(f"'{param or name}' must be true or false.", param=param or name,
                              code="invalid_type")
    return value


def _optional_count(payload: dict[str, Any], name: str, minimum: int) -> int | None:
    value = payload.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid_request(f"'{name}' must be an integer.", param=name, code="invalid_type")
    if value < minimum:
        raise invalid_request(f"'{name}' must be at least {minimum}.", param=name,
                              code="invalid_value")
    return value


@dataclass(frozen=True)
class RequestFields:
    """What the gateway reads from a generation request."""

    model: str
    stream: bool
    include_usage: bool  # the client asked for the final usage chunk
    continuous_usage: bool  # ... and for usage on every chunk
    max_tokens: int | None
    choices: int  # n (or best_of when larger): completions generated per prompt
    n: int  # choices returned per prompt (how vLLM numbers streamed choices)
    prompts: int = 1  # /v1/completions takes a list of prompts: each is generated on its own

    @property
    def generations(self) -> int:
        """Completions generated in all: the admission reservation multiplies by this."""
        return self.choices * self.prompts


def request_fields(payload: dict[str, Any], completions: bool = False) -> RequestFields:
    """Type-check the fields the gateway uses; 400 with the field name on the first problem.
    `completions`: the request is for /v1/completions (prompts, echo-only scoring)."""
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise invalid_request("'model' is required and must be a string.", param="model",
                              code="invalid_type" if model is not None else "missing_required")
    stream = bool(_optional_bool(payload, "stream"))
    options = payload.get("stream_options")
    include_usage = continuous = False
    if options is not None:
        if not isinstance(options, dict):
            raise invalid_request("'stream_options' must be an object.", param="stream_options",
                                  code="invalid_type")
        include_usage = bool(_optional_bool(options, "include_usage",
                                            "stream_options.include_usage"))
        continuous = include_usage and bool(_optional_bool(
            options, "continuous_usage_stats", "stream_options.continuous_usage_stats"))
    # A cap of 0 would reserve nothing while vLLM reads it as "not set" (older versions) or
    # refuses it: refused here, so the reservation always covers what vLLM may generate. The one
    # exception is vLLM's echo-only scoring on /v1/completions (`echo` with `max_tokens: 0`).
    echo_only = completions and payload.get("echo") is True
    max_tokens = _optional_count(payload, "max_completion_tokens", 1)
    if max_tokens is None:
        max_tokens = _optional_count(payload, "max_tokens", 0 if echo_only else 1)
    else:
        _optional_count(payload, "max_tokens", 0 if echo_only else 1)
    n = _optional_count(payload, "n", 1) or 1
    best_of = _optional_count(payload, "best_of", 1) or 1
    return RequestFields(model, stream, include_usage, continuous, max_tokens, max(n, best_of),
                         n, prompt_count(payload.get("prompt")) if completions else 1)


def prompt_count(prompt: Any) -> int:
    """How many prompts a /v1/completions `prompt` holds: a list of strings or of token-id
    lists is a batch (vLLM generates for each); a string or one token-id list is one."""
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
        return len(prompt)
    return 1


# What might be a secret in a path a client typed: our key prefix, or any long unbroken run of
# the characters keys and tokens are made of (ours are 46 characters of base64url after "ip-").
_KEY_LIKE = re.compile(r"ip-[A-Za-z0-9_\-]*|[A-Za-z0-9_\-+/=.~%]{20,}")


def redacted(value: str) -> str:
    """`value` with every run that could be a key replaced: for paths that reach logs or records."""
    return _KEY_LIKE.sub("[redacted]", value)


def shown(value: str, limit: int = 80) -> str:
    """A client-sent name as it may appear in an error message: bounded in length."""
    return value if len(value) <= limit else value[:limit] + "..."


def unknown_model(model: str, served: list[str]) -> GatewayError:
    """404 as OpenAI answers for a model that does not exist."""
    return GatewayError(404, f"The model '{shown(model)}' does not exist. Served here: "
                        f"{', '.join(served)}.", param="model", code="model_not_found",
                        reason="unknown_model")
