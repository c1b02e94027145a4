"""The GitHub client: what goes on the wire, and repository names that could change an API path."""

from __future__ import annotations

from typing import Any, Awaitable, Callable

import httpx
import pytest

from relay.errors import UpstreamError
from relay.github_api import GitHubApi

pytestmark = pytest.mark.anyio


def recording() -> tuple[GitHubApi, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, json={})

    return GitHubApi("ghp_x", base_url="https://ghe.example/api/v3", transport=httpx.MockTransport(handler)), seen


CALLS: list[tuple[str, Callable[[GitHubApi, str], Awaitable[Any]]]] = [
    ("react", lambda api, repo: api.react(repo, 7, "issues", "eyes")),
    ("comment", lambda api, repo: api.comment(repo, 3, "hi")),
    ("reply", lambda api, repo: api.reply_to_review_comment(repo, 3, 7, "hi")),
]


@pytest.mark.parametrize("call", [c for _, c in CALLS], ids=[n for n, _ in CALLS])
async def test_calls_go_to_the_repository_under_the_base_url(call: Callable[[GitHubApi, str], Awaitable[Any]]) -> None:
    api, seen = recording()
    await call(api, "Codertocat/Hello-World")
    await api.aclose()
    [request] = seen
    assert request.url.raw_path.startswith(b"/api/v3/repos/Codertocat/Hello-World/")


@pytest.mark.parametrize("repository", ["acme/..", "../..", "acme/.", "..", "acme/../../admin", "acme/x/../y",
                                        "acme", "acme/x?y=1", "acme/x#frag", "acme/%2e%2e", "acme/x y", "/acme"])
@pytest.mark.parametrize("call", [c for _, c in CALLS], ids=[n for n, _ in CALLS])
async def test_a_repository_that_is_not_owner_slash_name_is_never_put_in_a_path(
        repository: str, call: Callable[[GitHubApi, str], Awaitable[Any]]) -> None:
    api, seen = recording()
    with pytest.raises(UpstreamError, match="repository"):
        await call(api, repository)
    await api.aclose()
    assert seen == []
