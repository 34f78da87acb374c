"""Stand-in servers for tests: any ASGI app on a free loopback port, in a thread of the test's
process (a fake vLLM that fails on cue, records what it got, or streams canned bytes; a fake
model hub), and the two calls every such app makes."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from inferplane.sockets import bind_socket, socket_url


@contextmanager
def serving(asgi_app: Any, log_level: str = "critical") -> Iterator[str]:
    """`asgi_app` on a free loopback port (uvicorn, no lifespan); yields its root URL."""
    server = uvicorn.Server(uvicorn.Config(asgi_app, lifespan="off", log_level=log_level))
    with serving_in_thread(server) as url:
        yield url


@contextmanager
def serving_in_thread(server: uvicorn.Server, host: str = "127.0.0.1", name: str = "stand-in",
                      timeout_seconds: float = 10.0) -> Iterator[str]:
    """Run `server` on a free port of `host` in a daemon thread until the block ends; yields
    its root URL once it accepts connections."""
    sock = bind_socket(host, 0)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=name,
                              daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_seconds
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError(f"the {name} server did not start; see the log above")
        time.sleep(0.005)
    try:
        yield socket_url(sock)
    finally:
        server.should_exit = True
        thread.join(timeout_seconds)
        sock.close()


def dead_loopback_url() -> str:
    """A loopback URL nothing listens on (a port just bound and closed): an upstream that is down."""
    sock = bind_socket("127.0.0.1", 0)
    url = socket_url(sock)
    sock.close()
    return url


async def read_body(receive: Any) -> bytes:
    """The whole request body of an ASGI http request."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


async def respond(send: Any, status: int, body: bytes = b"",
                  headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """A whole response in one body message."""
    await send({"type": "http.response.start", "status": status, "headers": headers or []})
    await send({"type": "http.response.body", "body": body})
