"""What every refusal the `openai` client raises must carry: OpenAI's error JSON and a request id."""

from __future__ import annotations

import openai


def assert_openai_error(error: openai.APIStatusError, status: int, code: str) -> dict:
    """`{"error": {message, type, param, code}}` with `code` and a message; returns the error."""
    assert error.status_code == status
    body = error.response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == code and body["error"]["message"]
    assert error.response.headers["x-request-id"]
    return body["error"]
