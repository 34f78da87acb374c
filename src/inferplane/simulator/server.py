"""Running the simulator: uvicorn on a socket we bind ourselves, so port 0 works and the
actual address is known before the first request."""

from __future__ import annotations

import socket
from collections.abc import Callable

import uvicorn

from inferplane.simulator.app import create_app
from inferplane.simulator.settings import SimulatorSettings


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def socket_url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def uvicorn_server(settings: SimulatorSettings, log_level: str = "warning") -> uvicorn.Server:
    """A uvicorn server for the app; uvloop and httptools when installed (uvicorn's "auto")."""
    config = uvicorn.Config(
        create_app(settings),
        loop="auto",
        http="auto",
        lifespan="off",
        access_log=False,  # request lines are not needed, and prompts never reach logs anyway
        log_level=log_level,
        timeout_graceful_shutdown=2,
    )
    return uvicorn.Server(config)


def serve(settings: SimulatorSettings, host: str = "127.0.0.1", port: int = 8000, *,
          on_ready: Callable[[str], None] | None = None, log_level: str = "warning") -> None:
    """Serve until interrupted; `on_ready(url)` is called once the socket listens."""
    sock = bind_socket(host, port)
    server = uvicorn_server(settings, log_level)
    if on_ready is not None:
        on_ready(socket_url(sock))
    server.run(sockets=[sock])
