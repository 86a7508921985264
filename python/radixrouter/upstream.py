"""The upstream HTTP client of one router process.

Two implementations behind one small interface (`post`, `get`, `abort`):
- "fast" (default): `radixrouter.httpclient.HttpClient`, a minimal keep-alive HTTP/1.1 client on an
  asyncio protocol;
- "aiohttp": one shared `aiohttp.ClientSession` with a connection pool.
Not httpx: it parses HTTP in pure Python and managed a small fraction of aiohttp's request rate here
(benches/upstream_client.py, docs/bench-router.md). Both clients set TCP_NODELAY on their connections
(asyncio does it for every TCP transport; aiohttp again in ``aiohttp.base_protocol``).
"""

from __future__ import annotations

import asyncio
import logging
import ssl

import aiohttp
import orjson

from radixrouter.httpclient import HttpClient, RequestHeaders, UpstreamError

log = logging.getLogger("radixrouter.upstream")

JSON_HEADERS = RequestHeaders({"Content-Type": "application/json"})

# What counts as a transport failure of a worker (retryable before the first byte).
TRANSPORT_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, OSError, UpstreamError)

CLIENTS = ("fast", "aiohttp")


class Upstream:
    def __init__(self, *, connect_timeout: float, request_timeout: float, client: str = "fast",
                 ca_file: str | None = None):
        if client not in CLIENTS:
            raise ValueError(f"unknown upstream client {client!r}")
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self.kind = client
        # TLS to upstreams is always verified: against the system store (or SSL_CERT_FILE), plus `ca_file`
        self._ssl = ssl.create_default_context()
        if ca_file:
            self._ssl.load_verify_locations(cafile=ca_file)
        self._session: aiohttp.ClientSession | None = None
        self._http: HttpClient | None = None
        self._background: set[asyncio.Task] = set()

    @property
    def http(self) -> HttpClient:
        h = self._http
        if h is None:
            h = self._http = HttpClient(connect_timeout=self.connect_timeout, request_timeout=self.request_timeout,
                                        ssl_context=self._ssl)
        return h

    @property
    def session(self) -> aiohttp.ClientSession:
        s = self._session
        if s is None:
            connector = aiohttp.TCPConnector(
                limit=0,  # no global cap; the router's own concurrency limit applies
                limit_per_host=0,
                keepalive_timeout=60,
                ttl_dns_cache=300,
                ssl=self._ssl,
            )
            s = self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(
                    total=self.request_timeout, sock_connect=self.connect_timeout, connect=None
                ),
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,
                skip_auto_headers=("User-Agent",),
                read_bufsize=2**18,
            )
        return s

    async def close(self) -> None:
        for t in list(self._background):
            t.cancel()
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._http is not None:
            await self._http.close()
            self._http = None

    def post(self, url: str, body: bytes, headers: dict[str, str] | None = None):
        """Awaitable response (`status`, `read()`, `content.readany()`, `release()`, `close()`). Headers given
        as a `RequestHeaders` are encoded once for every request (the fast client)."""
        if self.kind == "fast":
            return self.http.request("POST", url, body, headers or JSON_HEADERS)
        return self.session.post(url, data=body, headers=headers or JSON_HEADERS)

    async def get(self, url: str, timeout: float) -> tuple[int, bytes]:
        if self.kind == "fast":
            resp = await self.http.request("GET", url, timeout=timeout)
            try:
                return resp.status, await resp.read()
            finally:
                resp.release()
        async with self.session.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as r:
            return r.status, await r.read()

    def abort(self, worker_url: str, rid: str) -> None:
        """POST /abort_request in the background (fire and forget, bounded by a short timeout)."""
        self.spawn(self._abort(worker_url, rid))

    async def _abort(self, worker_url: str, rid: str) -> None:
        try:
            body = orjson.dumps({"rid": rid})
            if self.kind == "fast":
                resp = await self.http.request("POST", worker_url + "/abort_request", body, JSON_HEADERS, timeout=5.0)
                try:
                    await resp.read()
                finally:
                    resp.release()
                return
            async with self.session.post(worker_url + "/abort_request", data=body, headers=JSON_HEADERS,
                                         timeout=aiohttp.ClientTimeout(total=5.0)) as r:
                await r.read()
        except TRANSPORT_ERRORS as e:
            log.warning("abort of %s on %s failed: %s", rid, worker_url, e)

    def spawn(self, coro) -> asyncio.Task:
        t = asyncio.get_running_loop().create_task(coro)
        self._background.add(t)
        t.add_done_callback(self._background.discard)
        return t
