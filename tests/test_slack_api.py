"""The Slack client against the loopback Slack stand-in."""

from __future__ import annotations

import httpx
import pytest

from relay.errors import UpstreamError
from relay.slack_api import SlackApi
from tests.slack_standin import SlackStandIn
from tests.support import free_port

pytestmark = pytest.mark.anyio


async def test_post_message_sends_the_bot_token_and_returns_the_ts(slack_stand_in: SlackStandIn) -> None:
    slack = SlackApi("xoxb-1", base_url=slack_stand_in.api_url)
    ts = await slack.post_message("C1", {"text": "hi", "blocks": []}, thread_ts="1.2")
    await slack.aclose()
    [call] = slack_stand_in.of("chat.postMessage")
    assert ts.startswith("1700000000.")
    assert call.authorization == "Bearer xoxb-1"
    assert call.body == {"channel": "C1", "text": "hi", "blocks": [], "thread_ts": "1.2"}


async def test_ok_false_becomes_an_upstream_error_with_slacks_code(slack_stand_in: SlackStandIn) -> None:
    slack_stand_in.fail("chat.update", "message_not_found")
    slack = SlackApi("xoxb-1", base_url=slack_stand_in.api_url)
    with pytest.raises(UpstreamError) as caught:
        await slack.update_message("C1", "1.2", {"text": "x"})
    await slack.aclose()
    assert (caught.value.method, caught.value.code) == ("chat.update", "message_not_found")


async def test_http_and_transport_failures_are_upstream_errors() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(500)

    broken = SlackApi("xoxb-1", base_url="http://slack.invalid/api", transport=httpx.MockTransport(handler))
    with pytest.raises(UpstreamError, match="HTTP 500"):
        await broken.open_view("trigger", {})
    await broken.aclose()
    unreachable = SlackApi("xoxb-1", base_url=f"http://127.0.0.1:{free_port()}/api")
    with pytest.raises(UpstreamError, match="ConnectError"):
        await unreachable.add_reaction("C1", "1.2", "eyes")
    await unreachable.aclose()


async def test_calls_without_a_bot_token_fail_without_a_request(slack_stand_in: SlackStandIn) -> None:
    slack = SlackApi(None, base_url=slack_stand_in.api_url)
    assert not slack.can_post
    with pytest.raises(UpstreamError, match="SLACK_BOT_TOKEN"):
        await slack.post_message("C1", {"text": "x"})
    await slack.respond(slack_stand_in.response_url("r1"), {"text": "still fine"})  # needs no token
    await slack.aclose()
    assert slack_stand_in.of("chat.postMessage") == []
    assert slack_stand_in.responses("r1") == [{"text": "still fine"}]


async def test_already_reacted_is_not_an_error(slack_stand_in: SlackStandIn) -> None:
    slack_stand_in.fail("reactions.add", "already_reacted")
    slack_stand_in.fail("reactions.add", "channel_not_found")
    slack = SlackApi("xoxb-1", base_url=slack_stand_in.api_url)
    await slack.add_reaction("C1", "1.2", "white_check_mark")
    with pytest.raises(UpstreamError):
        await slack.add_reaction("C1", "1.2", "white_check_mark")
    await slack.aclose()


async def test_group_membership_is_cached_briefly(slack_stand_in: SlackStandIn) -> None:
    now = [0.0]
    slack = SlackApi("xoxb-1", base_url=slack_stand_in.api_url, clock=lambda: now[0])
    assert await slack.group_members("S0APPROVERS") == {"U0GROUPMEMBER"}
    assert await slack.group_members("S0APPROVERS") == {"U0GROUPMEMBER"}
    assert len(slack_stand_in.of("usergroups.users.list")) == 1
    now[0] += 61
    await slack.group_members("S0APPROVERS")
    await slack.aclose()
    assert len(slack_stand_in.of("usergroups.users.list")) == 2
