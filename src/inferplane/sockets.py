"""Listening sockets we bind ourselves, so that port 0 works and the address is known before
the first request (shared by the gateway, the simulator and test servers)."""

from __future__ import annotations

import socket


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
