"""Reading a file a message links to: bounded, never followed elsewhere (no redirects)."""

from __future__ import annotations

import httpx

from relay.errors import UpstreamError


class TooLarge(Exception):
    """A download past its limit."""


async def fetch(http: httpx.AsyncClient, url: str, limit: int, headers: dict[str, str], service: str) -> bytes:
    """GET `url` reading at most `limit` bytes (TooLarge past it); UpstreamError on refusal."""
    try:
        async with http.stream("GET", url, headers=headers, follow_redirects=False) as response:
            if response.status_code >= 300:
                raise UpstreamError(service, "download", f"HTTP {response.status_code}")
            chunks, size = [], 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > limit:
                    raise TooLarge(url)
                chunks.append(chunk)
            return b"".join(chunks)
    except httpx.TransportError as exc:
        raise UpstreamError(service, "download", type(exc).__name__) from exc
