"""Listening sockets we bind ourselves, so that port 0 works and the address is known before
the first request (shared by the gateway, the simulator and test servers)."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable


def bind_socket(host: str, port: int, backlog: int = 4096) -> socket.socket:
    """A listening TCP socket on host:port (port 0: a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


def socket_url(sock: socket.socket) -> str:
    """The http:// root URL of a bound socket (a wildcard address becomes loopback)."""
    host, port = sock.getsockname()[:2]
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def wait_until_ok(url: str, timeout_seconds: float, *, interval_seconds: float = 0.02,
                  alive: Callable[[], bool] | None = None) -> bool:
    """Poll `url` until it answers 200: True; False once `timeout_seconds` pass or `alive()`
    (the serving process still running) turns false."""
    import httpx

    deadline = time.monotonic() + timeout_seconds
    while True:
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return True
        except httpx.TransportError:
            pass
        if (alive is not None and not alive()) or time.monotonic() > deadline:
            return False
        time.sleep(interval_seconds)
