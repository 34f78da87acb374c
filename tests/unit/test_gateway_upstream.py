"""The gateway's upstream HTTP client against real loopback servers that misbehave on purpose."""

from __future__ import annotations

import asyncio

import pytest

from inferplane.gateway.upstream import UpstreamClient, UpstreamError, UpstreamTimeout


async def read_request(reader: asyncio.StreamReader) -> bytes | None:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    body = await reader.readexactly(length) if length else b""
    return head + body


def serve(handler):
    """Run `handler(reader, writer, connection_number)` for each connection; count them."""
    state = {"connections": 0}

    async def on_connect(reader, writer):
        state["connections"] += 1
        try:
            await handler(reader, writer, state["connections"])
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def start():
        server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
        return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"

    return state, start


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


def test_keep_alive_reuses_one_connection_and_sends_the_body():
    seen = []

    async def handler(reader, writer, _):
        while True:
            request = await read_request(reader)
            seen.append(request)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                         b"content-length: 2\r\n\r\n{}")
            await writer.drain()

    state, start = serve(handler)

    async def main():
        server, url = await start()
        client = UpstreamClient(url, 5)
        for _ in range(3):
            response = await client.request("POST", "/v1/x?a=1", [("x-request-id", "r1")],
                                            b'{"model": "m"}')
            assert (response.status, response.content_type) == (200, "application/json")
            assert await response.read() == b"{}"
            response.release()
        client.close()
        server.close()

    run(main())
    assert state["connections"] == 1
    assert seen[0].startswith(b"POST /v1/x?a=1 HTTP/1.1\r\n")
    assert b"x-request-id: r1\r\n" in seen[0] and b"content-length: 14\r\n" in seen[0]
    assert seen[0].endswith(b'\r\n\r\n{"model": "m"}')


def test_chunked_stream_arrives_piece_by_piece():
    async def handler(reader, writer, _):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                     b"transfer-encoding: chunked\r\n\r\n")
        for piece in (b"data: 1\n\n", b"data: 2\n\n"):
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
            await asyncio.sleep(0.05)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        await reader.read()

    _, start = serve(handler)

    async def main():
        server, url = await start()
        client = UpstreamClient(url, 5)
        response = await client.request("POST", "/s", [], b"{}")
        assert response.content_type == "text/event-stream"
        pieces = []
        while data := await response.readany():
            pieces.append(data)
        response.release()
        client.close()
        server.close()
        return pieces

    assert run(main()) == [b"data: 1\n\n", b"data: 2\n\n"]


def test_a_kept_alive_connection_closed_by_the_server_is_retried_once():
    async def handler(reader, writer, number):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()
        if number == 1:
            # The next request arrives as the server gives up on the idle connection: it is
            # closed without an answer (the race a keep-alive timeout leaves open).
            await read_request(reader)

    state, start = serve(handler)

    async def main():
        server, url = await start()
        client = UpstreamClient(url, 5)
        bodies = []
        for _ in range(2):
            response = await client.request("GET", "/", [])
            bodies.append(await response.read())
            response.release()
        client.close()
        server.close()
        return bodies

    assert run(main()) == [b"ok", b"ok"]
    assert state["connections"] == 2


@pytest.mark.parametrize("mode", ["silent", "broken"])
def test_timeouts_and_broken_bodies_raise(mode):
    async def handler(reader, writer, _):
        await read_request(reader)
        if mode == "broken":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
            await writer.drain()
            return
        await asyncio.sleep(5)

    _, start = serve(handler)

    async def main():
        server, url = await start()
        client = UpstreamClient(url, 0.2)
        try:
            if mode == "silent":
                with pytest.raises(UpstreamTimeout):
                    await client.request("POST", "/", [], b"{}")
            else:
                response = await client.request("POST", "/", [], b"{}")
                assert await response.readany() == b"partial"
                with pytest.raises(UpstreamError):
                    await response.readany()
                response.release()
        finally:
            client.close()
            server.close()

    run(main())


def test_the_read_timeout_counts_silence_not_the_length_of_a_stream():
    # Chunks every 0.1 s for about a second pass a 0.3 s timeout; a stall after them does not.
    async def handler(reader, writer, _):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                     b"transfer-encoding: chunked\r\n\r\n")
        for _ in range(10):
            writer.write(b"6\r\ndata: \r\n")
            await writer.drain()
            await asyncio.sleep(0.1)
        await asyncio.sleep(5)  # stalls mid-body

    _, start = serve(handler)

    async def main():
        server, url = await start()
        client = UpstreamClient(url, 0.3)
        try:
            response = await client.request("POST", "/", [], b"{}")
            received = b""
            with pytest.raises(UpstreamTimeout):
                while True:
                    received += await response.readany()
            assert received == b"data: " * 10  # all of it: the 1 s stream was not cut at 0.3 s
            response.release()
        finally:
            client.close()
            server.close()

    run(main())


def test_connection_refused_is_an_upstream_error():
    async def main():
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        with pytest.raises(UpstreamError, match="cannot connect"):
            await UpstreamClient(f"http://127.0.0.1:{port}", 1).request("GET", "/", [])

    run(main())


def test_a_slow_reader_pauses_the_socket_instead_of_buffering_everything():
    total = 8 << 20

    async def handler(reader, writer, _):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % total)
        block = b"x" * 65536
        for _ in range(total // len(block)):
            writer.write(block)
            await writer.drain()

    _, start = serve(handler)

    async def main():
        server, url = await start()
        client = UpstreamClient(url, 5)
        response = await client.request("GET", "/", [])
        await asyncio.sleep(0.5)  # the server keeps sending; we read nothing yet
        buffered = response._buffered
        received = len(await response.read())
        response.release()
        client.close()
        server.close()
        return buffered, received

    buffered, received = run(main())
    assert received == total
    assert buffered < 4 << 20  # paused near 1 MiB, not the whole 8 MiB


def test_only_plain_http_upstreams_are_accepted():
    with pytest.raises(ValueError, match="http://host:port"):
        UpstreamClient("https://vllm:8000", 5)
