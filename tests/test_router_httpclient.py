"""The router's upstream HTTP/1.1 client against scripted servers on 127.0.0.1 (raw bytes, any framing)."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from radixrouter.httpclient import HttpClient, RequestHeaders, UpstreamError


class Scripted:
    """A TCP server whose handler gets (reader, writer) per connection; counts connections."""

    def __init__(self, handler):
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.base_events.Server | None = None
        self.closed_by_client = asyncio.Event()

    async def __aenter__(self):
        async def on_conn(reader, writer):
            self.connections += 1
            try:
                await self.handler(self, reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        self.server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc):
        self.server.close()
        await self.server.wait_closed()

    async def read_request(self, reader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        n = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                n = int(line.split(b":")[1])
        body = await reader.readexactly(n) if n else b""
        self.requests.append(head + body)
        return body


def run(coro):
    return asyncio.run(coro)


def test_content_length_and_keepalive_reuse():
    async def handler(srv, reader, writer):
        while True:
            body = await srv.read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(body), body))
            await writer.drain()

    async def main():
        async with Scripted(handler) as srv:
            c = HttpClient()
            for i in range(5):
                r = await c.post(srv.url + "/generate", b'{"i":%d}' % i, {"Content-Type": "application/json"})
                assert r.status == 200 and r.headers["content-type"] == "application/json"
                assert await r.read() == b'{"i":%d}' % i
                r.release()
            assert srv.connections == 1
            assert srv.requests[0].startswith(b"POST /generate HTTP/1.1\r\nHost: 127.0.0.1:")
            await c.close()

    run(main())


def test_request_bytes_with_plain_and_pre_encoded_headers():
    """A RequestHeaders (encoded once, when created) puts the same bytes on the wire as the same dict."""
    async def handler(srv, reader, writer):
        while True:
            await srv.read_request(reader)
            writer.write(b"HTTP/1.1 204 No Content\r\nX-A:  spaced\t\r\n\r\n")
            await writer.drain()

    async def main():
        h = {"Content-Type": "application/json", "Authorization": "Bearer k\xe9y"}
        async with Scripted(handler) as srv:
            c = HttpClient()
            for headers in (h, RequestHeaders(h)):
                r = await c.post(srv.url + "/v1/x", b"{}", headers)
                assert r.status == 204 and r.headers == {"x-a": "spaced"} and await r.read() == b""
                r.release()
            r = await c.request("GET", srv.url + "/health")
            r.release()
            host = srv.url.removeprefix("http://").encode()
            want = (b"POST /v1/x HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                    b"Authorization: Bearer k\xe9y\r\nContent-Length: 2\r\n\r\n{}" % host)
            assert srv.requests == [want, want, b"GET /health HTTP/1.1\r\nHost: %s\r\n\r\n" % host]
            assert srv.connections == 1
            await c.close()

    run(main())


CHUNKED = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
           b"7\r\ndata: a\r\n2;ext=1\r\n\n\n\r\n10\r\ndata: [DONE]\n\n\n\n\r\n0\r\nx-trailer: 1\r\n\r\n")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=len(CHUNKED) - 1), max_size=8, unique=True))
def test_chunked_body_under_any_split(cuts):
    cuts = sorted(cuts)

    async def handler(srv, reader, writer):
        while True:
            await srv.read_request(reader)
            prev = 0
            for cut in [*cuts, len(CHUNKED)]:
                writer.write(CHUNKED[prev:cut])
                await writer.drain()
                await asyncio.sleep(0)
                prev = cut

    async def main():
        async with Scripted(handler) as srv:
            c = HttpClient()
            for _ in range(2):
                r = await c.request("GET", srv.url + "/s")
                assert r.status == 200
                got = b""
                while True:
                    piece = await r.content.readany()
                    if not piece:
                        break
                    got += piece
                assert got == b"data: a\n\ndata: [DONE]\n\n\n\n"
                r.release()
            assert srv.connections == 1  # the connection was reused after a complete chunked body
            await c.close()

    run(main())


def test_until_close_interim_and_no_body_statuses():
    async def handler(srv, reader, writer):
        await srv.read_request(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 200 OK\r\n\r\nall of it")
        await writer.drain()
        writer.close()

    async def main():
        async with Scripted(handler) as srv:
            c = HttpClient()
            r = await c.request("GET", srv.url + "/")
            assert r.status == 200 and await r.read() == b"all of it"
            r.release()
            await c.close()

    run(main())


def test_stale_idle_connection_is_replaced():
    async def handler(srv, reader, writer):
        await srv.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()
        # keep-alive promised, but the server drops the connection once idle

    async def main():
        async with Scripted(handler) as srv:
            c = HttpClient()
            for _ in range(3):
                r = await c.post(srv.url + "/x", b"{}")
                assert await r.read() == b"ok"
                r.release()
                await asyncio.sleep(0.05)
            assert srv.connections == 3
            await c.close()

    run(main())


def test_errors_connection_refused_truncated_and_timeout():
    async def truncated(srv, reader, writer):
        await srv.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nshort")
        await writer.drain()
        writer.close()

    async def silent(srv, reader, writer):
        await srv.read_request(reader)
        await asyncio.sleep(5)

    async def garbage(srv, reader, writer):
        await srv.read_request(reader)
        writer.write(b"SPDY/9 nope\r\n\r\n")
        await writer.drain()

    async def main():
        c = HttpClient(connect_timeout=2)
        async with Scripted(truncated) as srv:
            url = srv.url
            r = await c.post(url + "/x", b"{}")
            with pytest.raises(UpstreamError):
                await r.read()
            r.close()
        with pytest.raises(OSError):
            await c.post(url + "/x", b"{}")  # nobody listens any more
        async with Scripted(silent) as srv:
            with pytest.raises(asyncio.TimeoutError):
                await c.request("POST", srv.url + "/x", b"{}", timeout=0.2)
        async with Scripted(garbage) as srv:
            with pytest.raises(UpstreamError):
                await c.post(srv.url + "/x", b"{}")
        # URLs the client cannot use are its own error, not a ValueError/UnicodeError from the URL parsing
        for bad_url in ("ftp://h/x", "http:///x", "http://h:99999/x", "http://h:port/x", "http://a..b\u00e9/x"):
            with pytest.raises(UpstreamError, match="unsupported upstream URL"):
                await c.post(bad_url, b"{}")
        await c.close()

    run(main())


def test_close_mid_body_closes_the_upstream_connection():
    async def handler(srv, reader, writer):
        await srv.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await writer.drain()
        # wait for the client to go away (EOF on our side)
        assert await reader.read() == b""
        srv.closed_by_client.set()

    async def main():
        async with Scripted(handler) as srv:
            c = HttpClient()
            r = await c.request("GET", srv.url + "/")
            assert await r.readany() == b"first"
            r.close()
            await asyncio.wait_for(srv.closed_by_client.wait(), 5)
            await c.close()

    run(main())


def test_large_body_with_flow_control_then_reuse():
    big = bytes(range(256)) * (40 * 1024)  # 10 MiB: reading pauses past the buffer limit and resumes

    async def handler(srv, reader, writer):
        while True:
            await srv.read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(big))
            for i in range(0, len(big), 1 << 20):
                writer.write(big[i:i + (1 << 20)])
                await writer.drain()

    async def main():
        async with Scripted(handler) as srv:
            c = HttpClient()
            for _ in range(2):
                r = await c.request("GET", srv.url + "/big")
                await asyncio.sleep(0.2)  # let the server fill the buffers while nobody reads
                got = []
                while True:
                    piece = await r.readany()
                    if not piece:
                        break
                    got.append(piece)
                assert b"".join(got) == big
                r.release()
            assert srv.connections == 1
            await c.close()

    run(main())


def test_wait_readable_times_out_then_sees_data_and_the_end():
    """wait_readable: False after the timeout while nothing came (nothing consumed), True once bytes, the end
    of the body or an error is there; readany() then returns them."""
    release = asyncio.Event()

    async def handler(srv, reader, writer):
        await srv.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        await writer.drain()
        await release.wait()
        writer.write(b"5\r\nhello\r\n0\r\n\r\n")
        await writer.drain()

    async def main():
        async with Scripted(handler) as srv:
            client = HttpClient()
            resp = await client.post(srv.url + "/x", b"{}")
            t0 = asyncio.get_running_loop().time()
            assert await resp.wait_readable(0.05) is False
            assert asyncio.get_running_loop().time() - t0 >= 0.04
            release.set()
            assert await resp.wait_readable(5) is True
            assert await resp.readany() == b"hello"
            assert await resp.wait_readable(5) is True  # the end
            assert await resp.readany() == b""
            resp.release()
            await client.close()

    run(main())


def test_wait_readable_reports_a_lost_connection():
    async def handler(srv, reader, writer):
        await srv.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        await writer.drain()
        writer.transport.abort()

    async def main():
        async with Scripted(handler) as srv:
            client = HttpClient()
            resp = await client.post(srv.url + "/x", b"{}")
            assert await resp.wait_readable(5) is True
            assert await resp.readany() == b"partial"
            assert await resp.wait_readable(5) is True
            with pytest.raises(UpstreamError):
                await resp.readany()
            resp.close()
            await client.close()

    run(main())
