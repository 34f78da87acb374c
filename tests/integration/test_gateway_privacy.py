"""No prompt or completion text is stored or logged -- ever -- and no key material either.

Requests carry a marker in their messages (served, refused by the gateway, refused by vLLM, and
sent with a wrong key); afterwards every log record, everything printed, and every byte of the
ledger's files is searched for the marker, the answers' text and the keys. Each search is also
shown to find what must be there (the access lines, the request ids), so an empty capture or an
unreadable file cannot make the test pass."""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai
import pytest

from inferplane.gateway.testing import DataPlane, running_data_plane

MAX_BODY_BYTES = 16 * 1024
SNIPPET_CHARS = 32


@dataclass
class Traffic:
    """What a run of requests sent and got back: what must not be kept, and the request ids."""

    forbidden: dict[str, str] = field(default_factory=dict)  # what it is -> the text
    recorded_ids: list[str] = field(default_factory=list)  # authenticated: a ledger record each
    unauthenticated_ids: list[str] = field(default_factory=list)  # 401: access line only

    def forbid_key(self, name: str, key: str) -> None:
        self.forbidden[name] = key
        self.forbidden[name + " sha256"] = hashlib.sha256(key.encode()).hexdigest()

    def forbid_answer(self, name: str, content: str) -> None:
        """The answer's tail: long enough to be its own, and plain text (no JSON escapes)."""
        snippet = content[-SNIPPET_CHARS:]
        assert len(snippet) == SNIPPET_CHARS and snippet.isprintable() and '"' not in snippet
        self.forbidden[name] = snippet

    def forbid_stream(self, name: str, pieces: list[str]) -> None:
        """The whole answer, and its longest token as vLLM writes it in a chunk (compact JSON):
        a leak of single chunks holds no long run of the answer."""
        self.forbid_answer(name, "".join(pieces))
        longest = max(pieces, key=len)
        self.forbidden[name + ", a chunk"] = '"content":' + json.dumps(longest)


def messages(marker: str) -> list[dict]:
    return [{"role": "system", "content": f"You are the assistant of {marker}."},
            {"role": "user", "content": f"My name is {marker}; what does a gateway do?"}]


def refused_id(error: openai.APIStatusError, status: int) -> str:
    assert error.status_code == status, error
    return error.response.headers["x-request-id"]


def send_private_traffic(plane: DataPlane, secret: str, marker: str) -> Traffic:
    """Served, refused and unauthenticated requests, each with `marker` in its messages."""
    traffic = Traffic(forbidden={"marker": marker})
    traffic.forbid_key("key", secret)
    client = plane.client(secret)
    for reasoning in (False, True):
        raw = client.chat.completions.with_raw_response.create(
            model=plane.model, messages=messages(marker),
            extra_body={"reasoning": reasoning})
        traffic.recorded_ids.append(raw.headers["x-request-id"])
        traffic.forbid_answer(f"answer, reasoning={reasoning}",
                              raw.parse().choices[0].message.content)
        stream = client.chat.completions.with_raw_response.create(
            model=plane.model, messages=messages(marker), stream=True,
            stream_options={"include_usage": reasoning}, extra_body={"reasoning": reasoning})
        traffic.recorded_ids.append(stream.headers["x-request-id"])
        pieces = [chunk.choices[0].delta.content or ""
                  for chunk in stream.parse() if chunk.choices]
        traffic.forbid_stream(f"streamed answer, reasoning={reasoning}", pieces)

    with pytest.raises(openai.NotFoundError) as unknown:
        client.chat.completions.create(model="no-such-model", messages=messages(marker))
    traffic.recorded_ids.append(refused_id(unknown.value, 404))
    with pytest.raises(openai.BadRequestError) as too_long:  # refused by vLLM, not the gateway
        client.chat.completions.create(model=plane.model, messages=messages(marker),
                                       max_tokens=10**9)
    traffic.recorded_ids.append(refused_id(too_long.value, 400))

    broke, _ = plane.add_key(budget="0")
    traffic.forbid_key("key without budget", broke)
    with pytest.raises(openai.RateLimitError) as over_budget:
        plane.client(broke).chat.completions.create(model=plane.model, messages=messages(marker))
    traffic.recorded_ids.append(refused_id(over_budget.value, 429))

    auth = {"Authorization": f"Bearer {secret}", "Content-Type": "application/json"}
    url = plane.base_url + "/chat/completions"
    oversized = json.dumps({"model": plane.model, "messages": messages(marker * 1000)})
    malformed = json.dumps({"model": plane.model, "messages": messages(marker)})[:-1]
    for body, status in ((oversized, 413), (malformed, 400)):
        response = httpx.post(url, content=body, headers=auth, timeout=30)
        assert response.status_code == status, response.text
        traffic.recorded_ids.append(response.headers["x-request-id"])

    wrong = secret[:-8] + secrets.token_hex(4)  # shaped like a real key
    traffic.forbid_key("wrong key", wrong)
    with pytest.raises(openai.AuthenticationError) as unauthenticated:
        plane.client(wrong).chat.completions.create(model=plane.model, messages=messages(marker))
    traffic.unauthenticated_ids.append(refused_id(unauthenticated.value, 401))
    return traffic


def ledger_bytes(plane: DataPlane) -> bytes:
    """The SQLite ledger's database, WAL and shared-memory files, as raw bytes."""
    database = Path(plane.settings.ledger_url.removeprefix("sqlite:///"))
    files = sorted(database.parent.glob(database.name + "*"))
    assert database in files
    return b"".join(path.read_bytes() for path in files)


CLIENT_LOGGERS = ("openai", "httpx", "httpcore")


def found_in(haystack: str | bytes, traffic: Traffic) -> list[str]:
    """Names of the forbidden strings that occur in `haystack`."""
    if isinstance(haystack, bytes):
        return [name for name, text in traffic.forbidden.items() if text.encode() in haystack]
    return [name for name, text in traffic.forbidden.items() if text in haystack]


def wait_for_key_reload_record(caplog: pytest.LogCaptureFixture) -> None:
    """Wait until the gateway's key watcher logs that it reloaded the keys file, from its own
    thread: the capture then provably sees the gateway's records (and the new key works)."""
    deadline = time.monotonic() + 10
    while not any(record.name == "inferplane.gateway.keys" and "reloaded" in record.getMessage()
                  and record.thread != threading.get_ident() for record in caplog.records):
        assert time.monotonic() < deadline, "the key reload was not logged, or not captured"
        time.sleep(0.05)


def test_nothing_logged_holds_prompt_completion_or_key(tmp_path, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    marker = "privacy-marker-" + secrets.token_hex(8)
    with running_data_plane(tmp_path, max_body_bytes=MAX_BODY_BYTES) as plane:
        assert plane.settings.access_log
        secret, _ = plane.add_key(reload=False)
        wait_for_key_reload_record(caplog)
        traffic = send_private_traffic(plane, secret, marker)
    printed = capfd.readouterr()
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    # The test's own HTTP clients log in this process too; what they log is not the gateway's.
    logged = "\n".join(formatter.format(record) for record in caplog.records
                       if not record.name.startswith(CLIENT_LOGGERS))
    captured = "\n".join([logged, printed.out, printed.err])

    access_lines = [line for line in printed.err.splitlines()
                    if "inferplane.gateway.access" in line]
    for request_id in traffic.recorded_ids + traffic.unauthenticated_ids:
        assert any(request_id in line for line in access_lines), request_id
    assert found_in(captured, traffic) == []


def test_nothing_in_the_ledger_files_holds_prompt_completion_or_key(tmp_path):
    marker = "privacy-marker-" + secrets.token_hex(8)
    with running_data_plane(tmp_path, max_body_bytes=MAX_BODY_BYTES) as plane:
        secret, _ = plane.add_key()
        traffic = send_private_traffic(plane, secret, marker)
        assert len(plane.records()) == len(traffic.recorded_ids)  # all committed by now
        stored = ledger_bytes(plane)
        assert all(request_id.encode() in stored for request_id in traffic.recorded_ids)
        assert found_in(stored, traffic) == []
    stored = ledger_bytes(plane)  # after shutdown: checkpointed into the database file
    assert all(request_id.encode() in stored for request_id in traffic.recorded_ids)
    assert found_in(stored, traffic) == []
