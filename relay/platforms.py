"""The Linear, GitLab and Discord clients of one process, made from its settings: the web takes
them for its doors, the worker and the watcher for their replies (and Discord's cards)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from relay.discord_api import DiscordApi
from relay.discord_cards import DiscordCards
from relay.gitlab_api import GitLabApi
from relay.intake import Intake
from relay.linear_api import LinearApi
from relay.platform_replies import DiscordReplies, GitLabReplies, LinearReplies, PlatformReplier
from relay.queue import Queue
from relay.routing import Router
from relay.settings import Settings


@dataclass
class Platforms:
    linear: LinearApi | None = None
    gitlab: GitLabApi | None = None
    discord: DiscordApi | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Platforms:
        return cls(LinearApi.from_settings(settings), GitLabApi.from_settings(settings),
                   DiscordApi.from_settings(settings))

    def web_apis(self) -> dict[str, Any]:
        """create_app's keyword arguments."""
        return {"linear_api": self.linear, "gitlab_api": self.gitlab, "discord_api": self.discord}

    def discord_cards(self, settings: Settings, queue: Queue) -> DiscordCards | None:
        if self.discord is None or not self.discord.can_post:
            return None
        return DiscordCards(queue, self.discord, Router(settings.routes, settings.slack_fallback,
                                                        settings.github_fallback), Intake(queue))

    def repliers(self, settings: Settings, queue: Queue) -> dict[str, PlatformReplier]:
        """Replier's `others`: by the `via` of the reply targets each serves."""
        others: dict[str, PlatformReplier] = {}
        if self.linear is not None:
            others["linear"] = LinearReplies(self.linear)
        if self.gitlab is not None:
            others["gitlab"] = GitLabReplies(self.gitlab)
        if self.discord is not None:
            others["discord"] = others["discord-card"] = DiscordReplies(self.discord,
                                                                        self.discord_cards(settings, queue))
        return others

    async def aclose(self) -> None:
        for client in (self.linear, self.gitlab, self.discord):
            if client is not None:
                await client.aclose()
