"""The GitHub REST client: the only module that talks to GitHub (reactions; the agent's answers).

The base URL is a setting (GitHub Enterprise: https://HOST/api/v3). Failures become
UpstreamError with the HTTP status.
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import quote

import httpx

from relay import __version__
from relay.downloads import fetch
from relay.errors import UpstreamError
from relay.settings import Settings
from relay.sources.github import valid_repository

Reaction = Literal["eyes", "rocket", "confused", "+1", "-1", "laugh", "heart", "hooray"]


class GitHubApi:
    def __init__(self, token: str, *, base_url: str = "https://api.github.com", timeout: float = 10.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._transport = transport
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), timeout=timeout, transport=transport,
            headers={"Authorization": f"Bearer {token}", "Accept": "application/vnd.github+json",
                     "X-GitHub-Api-Version": "2022-11-28", "User-Agent": f"relay/{__version__}"})

    @classmethod
    def from_settings(cls, settings: Settings) -> GitHubApi | None:
        if not settings.github_token:
            return None
        return cls(settings.github_token, base_url=settings.github_api_url)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def react(self, repository: str, comment_id: int, api: str, content: Reaction) -> None:
        """React to an issue comment (api="issues") or a pull-request review comment ("pulls")."""
        await self._post(f"{_repo(repository, 'reactions')}/{api}/comments/{int(comment_id)}/reactions",
                         "reactions", {"content": content})

    async def comment(self, repository: str, number: int, body: str) -> int:
        """A new comment on an issue or pull request's conversation; its id."""
        path = f"{_repo(repository, 'comments')}/issues/{int(number)}/comments"
        return _id(await self._send("POST", path, "comments", {"body": body}))

    async def reply_to_review_comment(self, repository: str, number: int, comment_id: int, body: str) -> int:
        """A reply in the review thread of a pull-request review comment; its id."""
        path = f"{_repo(repository, 'replies')}/pulls/{int(number)}/comments/{int(comment_id)}/replies"
        return _id(await self._send("POST", path, "replies", {"body": body}))

    async def edit_comment(self, repository: str, api: str, comment_id: int, body: str) -> None:
        """Replace the body of an issue comment (api="issues") or a review comment ("pulls")."""
        await self._send("PATCH", f"{_repo(repository, 'edit')}/{api}/comments/{int(comment_id)}", "edit",
                         {"body": body})

    def may_download(self, url: str) -> bool:
        """Attachments are read only from github.com or the host the API is at (GitHub Enterprise,
        or a stand-in in tests), without the token (attachment links are not API resources)."""
        api_host = str(self._http.base_url).split("/api/v3")[0].rstrip("/") + "/"
        return url.startswith("https://github.com/") or url.startswith(api_host)

    async def download(self, url: str, limit: int) -> bytes:
        """An attachment's bytes; TooLarge past `limit`; UpstreamError when GitHub refuses."""
        if not self.may_download(url):
            raise UpstreamError("github", "download", "not a GitHub attachment URL")
        async with httpx.AsyncClient(timeout=self._http.timeout, transport=self._transport) as plain:
            return await fetch(plain, url, limit, {"User-Agent": f"relay/{__version__}"}, "github")

    async def _post(self, path: str, method: str, payload: dict[str, str]) -> None:
        await self._send("POST", path, method, payload)

    async def _send(self, verb: str, path: str, method: str, payload: dict[str, str]) -> object:
        try:
            response = await self._http.request(verb, path, json=payload)
        except httpx.TransportError as exc:
            raise UpstreamError("github", method, type(exc).__name__) from exc
        if response.status_code >= 300:
            raise UpstreamError("github", method, f"HTTP {response.status_code}")
        try:
            return response.json()
        except ValueError:
            return None


def _id(data: object) -> int:
    """The `id` of what GitHub created (0 when its answer has none)."""
    value = data.get("id") if isinstance(data, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _repo(repository: str, method: str) -> str:
    """/repos/OWNER/NAME, each segment encoded; anything but owner/name (".." above all, which
    a URL normalizes into another path) is refused rather than sent."""
    if not valid_repository(repository):
        raise UpstreamError("github", method, "not an owner/name repository")
    owner, _, name = repository.partition("/")
    return f"/repos/{quote(owner, safe='')}/{quote(name, safe='')}"
