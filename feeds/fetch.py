"""Pulling a list from an agency's URL: conditional GET, timeouts, a size cap, retries.

Owns one download: ``If-None-Match``/``If-Modified-Since`` from the last good fetch (a 304 costs
no body), a connect, read and total timeout, a byte cap checked against ``Content-Length`` and
again while streaming (a server that lies about the length is cut off at the cap), and retries
with exponential backoff for what may pass (network errors, timeouts, 5xx, 408, 429), never for
what will not (other 4xx, an oversize body). The checksum or signature file beside the list is
fetched after the list, under the same rules. Parsing is the caller's business.

Must not import SQL or resolver code.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp

from config.errors import BetblockError
from config.settings import SourceSettings

USER_AGENT = "betblock/0.1 (+feeds)"
CONTROL_MAX_BYTES = 1 << 20  # a checksum or signature file is a few hundred bytes


class FetchError(BetblockError):
    """The download failed; the source keeps its last good list."""


class _Retry(FetchError):
    """A failure worth another attempt."""


@dataclass(frozen=True, slots=True)
class Fetched:
    """One poll's result. ``body`` is None when the server said 304 Not Modified."""

    body: bytes | None
    etag: str | None
    last_modified: str | None
    control: bytes | None = None
    attempts: int = 1


Sleep = Callable[[float], Awaitable[None]]


async def fetch(
    session: aiohttp.ClientSession,
    source: SourceSettings,
    *,
    etag: str | None = None,
    last_modified: str | None = None,
    sleep: Sleep = asyncio.sleep,
) -> Fetched:
    """Download ``source.url`` (and its ``control_url`` when the list changed)."""
    headers = {"User-Agent": USER_AGENT}
    if etag:
        headers["If-None-Match"] = etag
    if last_modified:
        headers["If-Modified-Since"] = last_modified
    status, body, new_etag, new_lm, attempts = await _with_retries(
        session, source, source.url, headers, source.max_bytes, sleep
    )
    if status == 304:
        return Fetched(None, etag, last_modified, attempts=attempts)
    control = None
    if source.control_url:
        _s, control, _e, _l, more = await _with_retries(
            session, source, source.control_url, {"User-Agent": USER_AGENT}, CONTROL_MAX_BYTES, sleep
        )
        attempts += more
    return Fetched(body, new_etag, new_lm, control, attempts)


async def _with_retries(
    session: aiohttp.ClientSession,
    source: SourceSettings,
    url: str,
    headers: dict[str, str],
    cap: int,
    sleep: Sleep,
) -> tuple[int, bytes, str | None, str | None, int]:
    timeout = aiohttp.ClientTimeout(
        total=source.timeout, connect=source.connect_timeout, sock_read=source.read_timeout
    )
    last: Exception | None = None
    for attempt in range(source.retries + 1):
        if attempt:
            await sleep(source.retry_backoff * 2 ** (attempt - 1))
        try:
            status, body, etag, lm = await _get(session, url, headers, cap, timeout)
            return status, body, etag, lm, attempt + 1
        except _Retry as exc:
            last = exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            last = FetchError(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
    assert last is not None
    raise FetchError(f"{url}: {last} (after {source.retries + 1} attempts)")


async def _get(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str], cap: int, timeout: aiohttp.ClientTimeout
) -> tuple[int, bytes, str | None, str | None]:
    async with session.get(url, headers=headers, timeout=timeout, allow_redirects=True) as resp:
        if resp.status == 304:
            return 304, b"", resp.headers.get("ETag"), resp.headers.get("Last-Modified")
        if resp.status >= 500 or resp.status in (408, 429):
            raise _Retry(f"HTTP {resp.status}")
        if resp.status != 200:
            raise FetchError(f"{url}: HTTP {resp.status}")
        if resp.content_length is not None and resp.content_length > cap:
            raise FetchError(f"{url}: body of {resp.content_length} bytes is over the cap of {cap}")
        buf = bytearray()
        async for chunk in resp.content.iter_chunked(1 << 16):
            buf += chunk
            if len(buf) > cap:
                raise FetchError(f"{url}: body is over the cap of {cap} bytes")
        return 200, bytes(buf), resp.headers.get("ETag"), resp.headers.get("Last-Modified")
