"""The upstream HTTP client: one shared aiohttp session per router process.

aiohttp rather than httpx on the worker path: httpx parses HTTP in pure Python and managed about a tenth
of aiohttp's request rate here (benches/bench_upstream_client.py, docs/bench-router.md). aiohttp sets
TCP_NODELAY on every connection it opens (``aiohttp.base_protocol``), keeps connections alive in a pool,
and is told not to decompress, keep cookies or add headers we do not need.
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import orjson

log = logging.getLogger("radixrouter.upstream")

JSON_HEADERS = {"Content-Type": "application/json"}

# What counts as a transport failure of a worker (retryable before the first byte).
TRANSPORT_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, OSError)


class Upstream:
    def __init__(self, *, connect_timeout: float, request_timeout: float):
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self._session: aiohttp.ClientSession | None = None
        self._background: set[asyncio.Task] = set()

    @property
    def session(self) -> aiohttp.ClientSession:
        s = self._session
        if s is None:
            connector = aiohttp.TCPConnector(
                limit=0,  # no global cap; the router's own concurrency limit applies
                limit_per_host=0,
                keepalive_timeout=60,
                enable_cleanup_closed=False,
                ttl_dns_cache=300,
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
                json_serialize=lambda o: orjson.dumps(o).decode(),
            )
        return s

    async def close(self) -> None:
        for t in list(self._background):
            t.cancel()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def post(self, url: str, body: bytes, headers: dict[str, str] | None = None):
        """A request context (``await`` it for the response); the caller releases or closes the response."""
        return self.session.post(url, data=body, headers=headers or JSON_HEADERS)

    async def get(self, url: str, timeout: float) -> tuple[int, bytes]:
        async with self.session.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            return resp.status, await resp.read()

    def abort(self, worker_url: str, rid: str) -> None:
        """POST /abort_request in the background (fire and forget, bounded by a short timeout)."""
        t = asyncio.get_running_loop().create_task(self._abort(worker_url, rid))
        self._background.add(t)
        t.add_done_callback(self._background.discard)

    async def _abort(self, worker_url: str, rid: str) -> None:
        try:
            async with self.session.post(
                worker_url + "/abort_request",
                data=orjson.dumps({"rid": rid}),
                headers=JSON_HEADERS,
                timeout=aiohttp.ClientTimeout(total=5.0),
            ) as resp:
                await resp.read()
        except TRANSPORT_ERRORS as e:
            log.warning("abort of %s on %s failed: %s", rid, worker_url, e)

    def spawn(self, coro) -> asyncio.Task:
        t = asyncio.get_running_loop().create_task(coro)
        self._background.add(t)
        t.add_done_callback(self._background.discard)
        return t
