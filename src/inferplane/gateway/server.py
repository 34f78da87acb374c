"""Running the gateway: uvicorn (uvloop + httptools when installed) on a socket we bind ourselves,
so that port 0 works and the address is known before the first request."""

from __future__ import annotations

import logging
from collections.abc import Callable

import uvicorn

from inferplane.sockets import bind_socket, socket_url  # noqa: F401 (re-exported)

from inferplane.gateway.app import GatewayApp
from inferplane.gateway.http_limits import RequestLimits, bounded_protocol
from inferplane.gateway.settings import GatewaySettings

# Longer than the proxy's idle upstream connections live, so that the proxy, not the gateway,
# closes them and no request is ever sent on a connection being closed: GKE's load balancers keep
# backend connections up to 600 s (https://cloud.google.com/load-balancing/docs/https#timeouts_and_retries),
# Envoy Gateway 60 s (our BackendTrafficPolicy), an nginx Ingress 60 s.
KEEP_ALIVE_SECONDS = 620
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def gateway_server(app: GatewayApp | Callable, *, log_level: str = "info",
                   graceful_shutdown_seconds: float | None = None,
                   limits: RequestLimits | None = None) -> uvicorn.Server:
    """A uvicorn server for `app` (the gateway, or any ASGI app served the same way, as
    bench/floor_proxy.py does). Its own access log is off: the gateway writes one line per
    request without the query string or any header (see app.py). Request heads and bodies are
    bounded in size and time by `limits` (the gateway's settings by default)."""
    if limits is None:
        settings = getattr(app, "settings", None)
        limits = RequestLimits() if not isinstance(settings, GatewaySettings) else RequestLimits(
            settings.max_header_bytes, settings.header_timeout_seconds,
            settings.body_timeout_seconds)
    config = uvicorn.Config(
        app,
        loop="auto",
        http=bounded_protocol(limits),
        h11_max_incomplete_event_size=limits.max_header_bytes,
        lifespan="on",
        access_log=False,
        log_level=log_level,
        log_config=None,
        server_header=False,
        proxy_headers=False,  # the client address is not used: skip X-Forwarded-For parsing
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        # None: wait for in-flight streams; the pod's terminationGracePeriodSeconds bounds it.
        timeout_graceful_shutdown=graceful_shutdown_seconds,
        backlog=4096,
    )
    return uvicorn.Server(config)


def configure_logging(level: str = "info") -> None:
    """One plain format for the gateway and uvicorn; nothing is logged from request bodies
    (access lines are written by gateway.access_log, in the same format)."""
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT)


def serve(settings: GatewaySettings, *, host: str | None = None, port: int | None = None,
          log_level: str = "info", on_ready: Callable[[str], None] | None = None) -> None:
    """Serve until SIGINT/SIGTERM; in-flight requests finish and queued records are committed."""
    configure_logging(log_level)
    if logging.getLevelName(log_level.upper()) > logging.INFO:
        settings = settings.model_copy(update={"access_log": False})  # access lines are INFO
    sock = bind_socket(host or settings.listen_host, settings.listen_port if port is None else port)
    server = gateway_server(GatewayApp(settings), log_level=log_level)
    if on_ready is not None:
        on_ready(socket_url(sock))
    server.run(sockets=[sock])
    if not server.started:
        raise SystemExit(1)  # startup failed (logged): a non-zero exit restarts the container
