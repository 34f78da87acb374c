"""The floor of bench/gateway.py: the cheapest proxy on the gateway's own stack.

uvicorn (uvloop + httptools, configured as the gateway's server) and the gateway's upstream
client, with no auth, no limits, no reasoning toggle, no metering and no ledger: a request is
read, sent to the upstream and its answer relayed (whole with Content-Length, or streamed).
What it costs is what any gateway on this stack pays before doing its job, so on a machine where
the load generator, the upstream and the proxy share the cores, its throughput relative to
direct bounds the gateway's from above.

    python bench/floor_proxy.py http://127.0.0.1:PORT   # prints "listening on URL"
"""

from __future__ import annotations

import sys

from inferplane.gateway.server import gateway_server
from inferplane.gateway.upstream import UpstreamClient
from inferplane.sockets import bind_socket, socket_url


def floor_app(upstream_url: str):
    client = UpstreamClient(upstream_url, 600.0)

    async def app(scope: dict, receive, send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    client.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        headers = [(name.decode(), value.decode("latin-1")) for name, value in scope["headers"]
                   if name in (b"content-type", b"accept")]
        response = await client.request(scope["method"], scope["path"], headers,
                                        b"".join(chunks))
        try:
            content_type = response.header(b"content-type", b"application/json")
            if content_type.startswith(b"text/event-stream"):
                await send({"type": "http.response.start", "status": response.status,
                            "headers": [(b"content-type", content_type)]})
                while data := await response.readany():
                    await send({"type": "http.response.body", "body": data, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            else:
                data = await response.read()
                await send({"type": "http.response.start", "status": response.status,
                            "headers": [(b"content-type", content_type),
                                        (b"content-length", str(len(data)).encode())]})
                await send({"type": "http.response.body", "body": data})
        finally:
            response.release()

    return app


def main() -> None:
    sock = bind_socket("127.0.0.1", 0)
    print(f"listening on {socket_url(sock)}", flush=True)
    gateway_server(floor_app(sys.argv[1]), log_level="warning").run(sockets=[sock])


if __name__ == "__main__":
    main()
