"""The GitLab REST client (API v4): the only module that talks to GitLab (who a member is;
notes and award emoji for the agent's answers).

`GITLAB_URL` is the instance (https://gitlab.com, or a self-managed host); the API is under
`/api/v4`. `GITLAB_TOKEN` is sent as `PRIVATE-TOKEN`. Failures become UpstreamError with the
HTTP status.
"""

from __future__ import annotations

import re
from typing import Any

import httpx

from relay import __version__
from relay.errors import UpstreamError
from relay.settings import Settings


class GitLabApi:
    def __init__(self, token: str, *, url: str = "https://gitlab.com", timeout: float = 10.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._http = httpx.AsyncClient(base_url=url.rstrip("/") + "/api/v4", timeout=timeout, transport=transport,
                                       headers={"PRIVATE-TOKEN": token, "User-Agent": f"relay/{__version__}"})

    @classmethod
    def from_settings(cls, settings: Settings) -> GitLabApi | None:
        if not settings.gitlab_token:
            return None
        return cls(settings.gitlab_token, url=settings.gitlab_url)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def access_level(self, project_id: int, user_id: int) -> int:
        """The user's access level in the project, inherited ones included (0: not a member)."""
        try:
            response = await self._http.get(f"/projects/{int(project_id)}/members/all/{int(user_id)}")
        except httpx.TransportError as exc:
            raise UpstreamError("gitlab", "members", type(exc).__name__) from exc
        if response.status_code == 404:
            return 0
        if response.status_code >= 300:
            raise UpstreamError("gitlab", "members", f"HTTP {response.status_code}")
        try:
            level = response.json().get("access_level")
        except (ValueError, AttributeError):
            raise UpstreamError("gitlab", "members", "not JSON") from None
        return level if isinstance(level, int) and not isinstance(level, bool) else 0

    async def award(self, project_id: int, noteable: str, iid: int, note_id: int, emoji: str) -> None:
        """Award an emoji ("eyes", "rocket", "confused") to a note."""
        await self._send("POST", f"{_thread(project_id, noteable, iid)}/notes/{int(note_id)}/award_emoji",
                         "award_emoji", {"name": emoji})

    async def note(self, project_id: int, noteable: str, iid: int, body: str, discussion: str = "") -> int:
        """A note in the discussion of `discussion` (else a new one on the issue or merge request); its id."""
        path = (f"{_thread(project_id, noteable, iid)}/discussions/{discussion}/notes"
                if re.fullmatch(r"[0-9a-f]{1,64}", discussion) else f"{_thread(project_id, noteable, iid)}/notes")
        data = await self._send("POST", path, "notes", {"body": body})
        value = data.get("id") if isinstance(data, dict) else None
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    async def edit_note(self, project_id: int, noteable: str, iid: int, note_id: int, body: str) -> None:
        """Replace the body of one of relay's notes."""
        await self._send("PUT", f"{_thread(project_id, noteable, iid)}/notes/{int(note_id)}", "edit_note",
                         {"body": body})

    async def _send(self, verb: str, path: str, method: str, payload: dict[str, Any]) -> object:
        try:
            response = await self._http.request(verb, path, json=payload)
        except httpx.TransportError as exc:
            raise UpstreamError("gitlab", method, type(exc).__name__) from exc
        if response.status_code >= 300:
            raise UpstreamError("gitlab", method, f"HTTP {response.status_code}")
        try:
            return response.json()
        except ValueError:
            return None


def _thread(project_id: int, noteable: str, iid: int) -> str:
    if noteable not in ("issues", "merge_requests"):
        raise ValueError(f"not a noteable: {noteable!r}")
    return f"/projects/{int(project_id)}/{noteable}/{int(iid)}"
