"""A small, fast HTTP/1.1 client for the worker path (asyncio protocol, keep-alive pool per host).

It does only what the router needs from a worker: send one request with a body, read the status and
headers, then read the body whole or piece by piece as it arrives (content-length, chunked, or until
close). Python does little per request (no cookie jar, no redirects, no header objects, no decompression),
which is most of what aiohttp's client costs per request on this path (docs/bench-router.md).

- TCP_NODELAY: asyncio sets it on every TCP transport it creates.
- A connection goes back to the pool only after its response was read to the end with keep-alive; a
  response closed early (client disconnect, error) closes its connection, which is also how an upstream
  learns that the reader went away.
- A reused connection that the server closed while idle fails before any response byte: the request is
  sent once more on a fresh connection (the server cannot have processed it).
- TLS (https://) with certificate verification via the default SSL context.

Errors: `UpstreamError` (an `OSError`) for protocol / connection failures, `asyncio.TimeoutError` for the
connect and total timeouts.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from urllib.parse import urlsplit

__all__ = ["HttpClient", "RequestHeaders", "Response", "UpstreamError"]

_MAX_HEAD = 64 * 1024
_MAX_IDLE_PER_HOST = 512
_PAUSE_AT = 4 * 1024 * 1024

# parser states
_HEAD, _LEN, _CHUNKED, _UNTIL_CLOSE, _DONE = range(5)
_C_SIZE, _C_DATA, _C_CRLF, _C_TRAILER = range(4)
_WS = " \t\n\r\x0b\x0c"  # what bytes.strip() strips (str.strip() would also take latin-1's \x85 and \xa0)


class UpstreamError(OSError):
    """The upstream connection failed or spoke invalid HTTP."""


class RequestHeaders(dict):
    """Request headers that are encoded once, when created: the client writes ``encoded`` as is instead of
    formatting the dict per request. A plain dict to everything else (aiohttp, logging); not to be changed
    after creation."""

    __slots__ = ("encoded",)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.encoded = _encode_headers(self)


def _encode_headers(headers: dict[str, str]) -> bytes:
    return "".join([f"{k}: {v}\r\n" for k, v in headers.items()]).encode("latin-1")


class _Conn(asyncio.Protocol):
    __slots__ = ("key", "transport", "resp", "closed", "reused", "paused")

    def __init__(self, key):
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.resp: Response | None = None
        self.closed = False
        self.reused = False
        self.paused = False

    def connection_made(self, transport):  # type: ignore[override]
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        r = self.resp
        if r is None:  # bytes nobody asked for: the connection is unusable
            self.closed = True
            if self.transport is not None:
                self.transport.abort()
            return
        r._feed(data)

    def eof_received(self):
        r = self.resp
        if r is not None:
            r._eof()
        return False  # close the transport

    def connection_lost(self, exc) -> None:
        self.closed = True
        r = self.resp
        if r is not None:
            r._lost(exc)

    def pause_writing(self) -> None:  # large request bodies: asyncio buffers them, nothing to do
        pass

    def resume_writing(self) -> None:
        pass


def _wake(w: asyncio.Future) -> None:
    if not w.done():
        w.set_result(None)


class Response:
    """One response: `status`, `headers` (lower-case names), `await read()`, `await readany()` (b"" at
    the end), `release()` (back to the pool when complete) and `close()`."""

    __slots__ = ("_client", "_conn", "status", "headers", "_state", "_hbuf", "_remaining", "_cstate", "_cbuf",
                 "_need", "_chunks", "_buffered", "_waiter", "_head_fut", "_error", "_keep_alive", "_timer",
                 "_got_bytes", "_finished")

    def __init__(self, client: HttpClient, conn: _Conn):
        self._client = client
        self._conn = conn
        self.status = 0
        self.headers: dict[str, str] = {}
        self._state = _HEAD
        self._hbuf = b""
        self._remaining = 0
        self._cstate = _C_SIZE
        self._cbuf = b""
        self._need = 0
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._waiter: asyncio.Future | None = None
        self._head_fut: asyncio.Future = client._loop.create_future()
        self._error: BaseException | None = None
        self._keep_alive = True
        self._timer: asyncio.TimerHandle | None = None
        self._got_bytes = False
        self._finished = False

    # aiohttp compatibility: `resp.content.readany()`
    @property
    def content(self) -> Response:
        return self

    # ---------------------------------------------------------------- parsing (called by the protocol)
    def _feed(self, data: bytes) -> None:
        self._got_bytes = True
        try:
            if self._state == _HEAD:
                data = self._feed_head(data)
                if data is None:
                    return
            st = self._state
            if st == _LEN:
                n = len(data)
                if n >= self._remaining:
                    if self._remaining:
                        self._push(data[: self._remaining] if n > self._remaining else data)
                    self._remaining = 0
                    self._done()
                else:
                    self._remaining -= n
                    self._push(data)
            elif st == _CHUNKED:
                self._feed_chunked(data)
            elif st == _UNTIL_CLOSE:
                self._push(data)
            # _DONE: trailing bytes after a complete response are ignored (the connection is not reused)
            elif data:
                self._keep_alive = False
        except UpstreamError as e:
            self._fail(e)

    def _feed_head(self, data: bytes) -> bytes | None:
        buf = self._hbuf + data if self._hbuf else data
        while True:
            i = buf.find(b"\r\n\r\n")
            if i < 0:
                if len(buf) > _MAX_HEAD:
                    raise UpstreamError("upstream response headers too large")
                self._hbuf = buf
                return None
            # one decode for the whole head (latin-1 maps every byte), then str operations per line
            lines = buf[:i].decode("latin-1").split("\r\n")
            buf = buf[i + 4:]
            parts = lines[0].split(" ", 2)
            if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
                raise UpstreamError(f"invalid upstream status line {lines[0][:80].encode('latin-1')!r}")
            try:
                status = int(parts[1])
            except ValueError:
                raise UpstreamError(f"invalid upstream status line {lines[0][:80].encode('latin-1')!r}") from None
            if 100 <= status < 200:  # interim response: skip it
                continue
            break
        self._hbuf = b""
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise UpstreamError("invalid upstream header line")
            headers[name.strip(_WS).lower()] = value.strip(_WS)
        self.status = status
        self.headers = headers
        conn_h = headers.get("connection", "").lower()
        if parts[0] == "HTTP/1.0":
            self._keep_alive = "keep-alive" in conn_h
        elif "close" in conn_h:
            self._keep_alive = False
        te = headers.get("transfer-encoding")
        cl = headers.get("content-length")
        if status in (204, 304):
            self._state = _DONE
        elif te is not None and "chunked" in te.lower():
            self._state = _CHUNKED
        elif cl is not None:
            try:
                self._remaining = int(cl)
            except ValueError:
                raise UpstreamError("invalid upstream Content-Length") from None
            self._state = _LEN if self._remaining else _DONE
        else:
            self._state = _UNTIL_CLOSE
            self._keep_alive = False
        if not self._head_fut.done():
            self._head_fut.set_result(None)
        if self._state == _DONE:
            self._done()
            return None
        return buf

    def _feed_chunked(self, data: bytes) -> None:
        # the common case of a stream, one whole chunk per read (`size CRLF data CRLF`), without any loop
        if self._cstate == _C_SIZE and not self._cbuf:
            i = data.find(b"\r\n", 0, 18)
            if i > 0:
                try:  # (an extension or anything odd in the size line: the general path below)
                    size = int(data[:i], 16)
                except ValueError:
                    size = 0
                end = i + 2 + size
                if size > 0 and len(data) == end + 2 and data[end:] == b"\r\n":
                    self._push(data[i + 2 : end])
                    return
        if self._cbuf:
            data = self._cbuf + data
            self._cbuf = b""
        pos = 0
        n = len(data)
        out = []
        # one pass with a moving offset (no copying of the remaining buffer per chunk); a partial size line or
        # CRLF left at the end waits in _cbuf for the next read
        while pos < n:
            cs = self._cstate
            if cs == _C_DATA:
                take = self._need if self._need < n - pos else n - pos
                out.append(data[pos:pos + take] if take != n else data)
                pos += take
                self._need -= take
                if not self._need:
                    self._cstate = _C_CRLF
            elif cs == _C_CRLF:
                if n - pos < 2:
                    break
                if data[pos:pos + 2] != b"\r\n":
                    raise UpstreamError("invalid chunked encoding from upstream")
                pos += 2
                self._cstate = _C_SIZE
            elif cs == _C_SIZE:
                i = data.find(b"\r\n", pos)
                if i < 0:
                    if n - pos > 4096:
                        raise UpstreamError("invalid chunked encoding from upstream")
                    break
                try:
                    size = int(data[pos:i].split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise UpstreamError("invalid chunk size from upstream") from None
                if size < 0:
                    raise UpstreamError("invalid chunk size from upstream")
                pos = i + 2
                if size:
                    self._need = size
                    self._cstate = _C_DATA
                else:
                    self._cstate = _C_TRAILER
            else:  # trailers, ended by an empty line
                i = data.find(b"\r\n", pos)
                if i < 0:
                    break
                empty = i == pos
                pos = i + 2
                if empty:
                    if pos < n:
                        self._keep_alive = False
                    if out:
                        self._push(out[0] if len(out) == 1 else b"".join(out))
                    self._done()
                    return
        if pos < n:
            self._cbuf = data[pos:]
        if out:
            self._push(out[0] if len(out) == 1 else b"".join(out))

    def _push(self, data: bytes) -> None:
        if not data:
            return
        self._chunks.append(data)
        self._buffered += len(data)
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)
        if self._buffered > _PAUSE_AT and not self._conn.paused and self._conn.transport is not None:
            self._conn.paused = True
            self._conn.transport.pause_reading()

    def _done(self) -> None:
        self._state = _DONE
        self._finished = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _eof(self) -> None:
        if self._state == _UNTIL_CLOSE:
            self._done()
        elif self._state != _DONE:
            self._fail(UpstreamError("upstream closed the connection before the response was complete"))

    def _lost(self, exc) -> None:
        if self._state == _UNTIL_CLOSE and exc is None:
            self._done()
        elif self._state != _DONE and self._error is None:
            self._fail(exc if isinstance(exc, OSError) else UpstreamError(
                f"upstream connection lost{': ' + str(exc) if exc else ''}"))

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
        self._keep_alive = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._head_fut.done():
            self._head_fut.set_exception(exc)
            self._head_fut.exception()  # retrieved: no "never retrieved" warning if nobody awaits it
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)
        t = self._conn.transport
        if t is not None and not self._conn.closed:
            self._conn.closed = True
            t.abort()

    def _timeout(self) -> None:
        self._timer = None
        self._fail(asyncio.TimeoutError())

    # ---------------------------------------------------------------- reading
    def _take(self) -> bytes:
        """Everything buffered, as one bytes; reading from the socket resumes if it was paused."""
        chunks = self._chunks
        data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._buffered = 0
        if self._conn.paused and self._conn.transport is not None:
            self._conn.paused = False
            self._conn.transport.resume_reading()
        return data

    async def readany(self) -> bytes:
        """The bytes received since the last call (waiting for some); b"" once the body is complete."""
        while True:
            if self._chunks:
                return self._take()
            if self._error is not None:
                raise self._error
            if self._state == _DONE:
                return b""
            self._waiter = w = self._client._loop.create_future()
            try:
                await w
            finally:
                self._waiter = None

    async def wait_readable(self, timeout: float) -> bool:
        """Wait at most `timeout` seconds for `readany()` to have something to return (bytes, the end or an
        error) without taking it; whether it has. A timer on the read waiter, no Task."""
        if self._chunks or self._error is not None or self._state == _DONE:
            return True
        self._waiter = w = self._client._loop.create_future()
        timer = self._client._loop.call_later(timeout, _wake, w)
        try:
            await w
        finally:
            timer.cancel()
            self._waiter = None
        return bool(self._chunks) or self._error is not None or self._state == _DONE

    async def read(self) -> bytes:
        if self._state == _DONE and self._error is None:  # all there already (a small answer, one read)
            return self._take()
        parts = []
        while True:
            data = await self.readany()
            if not data:
                return b"".join(parts)
            parts.append(data)

    def release(self) -> None:
        """Done with the response: reuse the connection if the response was complete, else close it."""
        conn = self._conn
        if conn.resp is not self:
            return
        conn.resp = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._finished and self._keep_alive and self._error is None and not conn.closed and not self._chunks:
            if conn.paused and conn.transport is not None:
                conn.paused = False
                conn.transport.resume_reading()
            self._client._put(conn)
        else:
            conn.closed = True
            if conn.transport is not None:
                conn.transport.abort()

    def close(self) -> None:
        """Close the connection at once (an upstream sees its reader go away)."""
        conn = self._conn
        if conn.resp is self:
            conn.resp = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not conn.closed:
            conn.closed = True
            if conn.transport is not None:
                conn.transport.abort()

    async def __aenter__(self) -> Response:
        return self

    async def __aexit__(self, *exc) -> None:
        self.release()


class HttpClient:
    def __init__(self, *, connect_timeout: float = 5.0, request_timeout: float | None = None,
                 ssl_context: ssl.SSLContext | None = None):
        self._loop = asyncio.get_running_loop()
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self._ssl = ssl_context
        self._idle: dict[tuple, list[_Conn]] = {}
        self._targets: dict[str, tuple[tuple, bytes, bytes]] = {}
        self._closed = False

    def _target(self, url: str) -> tuple[tuple, bytes, bytes]:
        t = self._targets.get(url)
        if t is None:
            try:
                u = urlsplit(url)
                if u.scheme not in ("http", "https") or not u.hostname:
                    raise ValueError
                tls = u.scheme == "https"
                port = u.port or (443 if tls else 80)  # ValueError: a port out of range or not a number
                host = u.hostname
                default = (tls and port == 443) or (not tls and port == 80)
                netloc = (f"[{host}]" if ":" in host else host) + ("" if default else f":{port}")
                path = (u.path or "/") + (f"?{u.query}" if u.query else "")
                # UnicodeError (a ValueError): a host name IDNA cannot encode
                t = ((host, port, tls), netloc.encode("idna" if not host.isascii() else "ascii"), path.encode())
            except ValueError:
                raise UpstreamError(f"unsupported upstream URL {url!r}") from None
            if len(self._targets) < 4096:
                self._targets[url] = t
        return t

    def _put(self, conn: _Conn) -> None:
        if self._closed:
            conn.closed = True
            if conn.transport is not None:
                conn.transport.close()
            return
        idle = self._idle.setdefault(conn.key, [])
        if len(idle) < _MAX_IDLE_PER_HOST:
            conn.reused = True
            idle.append(conn)
        elif conn.transport is not None:
            conn.closed = True
            conn.transport.close()

    async def _connect(self, key: tuple) -> _Conn:
        host, port, tls = key
        ctx = None
        if tls:
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            ctx = self._ssl
        _t, conn = await asyncio.wait_for(
            self._loop.create_connection(lambda: _Conn(key), host, port, ssl=ctx,
                                         server_hostname=host if tls else None),
            self.connect_timeout)
        return conn

    async def request(self, method: str, url: str, body: bytes = b"",
                      headers: dict[str, str] | None = None, timeout: float | None = None) -> Response:
        """Send a request; return once the status and headers arrived (the body is read from the Response)."""
        key, netloc, path = self._target(url)
        if headers:
            hdrs = headers.encoded if type(headers) is RequestHeaders else _encode_headers(headers)
        else:
            hdrs = b""
        if body or method in ("POST", "PUT", "PATCH"):
            data = b"%s %s HTTP/1.1\r\nHost: %s\r\n%sContent-Length: %d\r\n\r\n%s" % (
                method.encode(), path, netloc, hdrs, len(body), body)
        else:
            data = b"%s %s HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (method.encode(), path, netloc, hdrs)
        timeout = self.request_timeout if timeout is None else timeout
        for attempt in (0, 1):
            conn = None
            idle = self._idle.get(key)
            while idle:
                c = idle.pop()
                if not c.closed and c.transport is not None and not c.transport.is_closing():
                    conn = c
                    break
            if conn is None:
                conn = await self._connect(key)
            resp = Response(self, conn)
            conn.resp = resp
            if timeout:
                resp._timer = self._loop.call_later(timeout, resp._timeout)
            assert conn.transport is not None
            conn.transport.write(data)
            try:
                await resp._head_fut
            except asyncio.CancelledError:
                resp.close()
                raise
            except OSError as e:
                resp.close()
                if conn.reused and not resp._got_bytes and attempt == 0 and not isinstance(e, TimeoutError):
                    continue  # the server had closed the idle connection: nothing was processed
                raise
            return resp
        raise AssertionError("unreachable")

    async def post(self, url: str, body: bytes, headers: dict[str, str] | None = None) -> Response:
        return await self.request("POST", url, body, headers)

    async def close(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            for c in idle:
                c.closed = True
                if c.transport is not None:
                    c.transport.close()
        self._idle.clear()
