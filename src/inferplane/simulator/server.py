"""Running the simulator: uvicorn on a socket we bind ourselves, so port 0 works and the
actual address is known before the first request."""

from __future__ import annotations

from collections.abc import Callable

import uvicorn

from inferplane.sockets import bind_socket, socket_url  # noqa: F401 (re-exported)

from inferplane.simulator.app import create_app
from inferplane.simulator.settings import SimulatorSettings


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
