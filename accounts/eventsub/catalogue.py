"""The EventSub types the site knows: for each, its version, the condition built
from a person's connections, and the scopes those connections must have granted
(Twitch's "EventSub subscription types"; Twitch checks them when the webhook
subscription is created with the app access token).

A condition field comes from the connection of one role of the same person
(`Party`): `stream.online`'s broadcaster is their main connection;
`channel.chat.message` reads the broadcaster's chat (their main connection) as
their bot (their bot connection). Twitch also accepts a bot that is one of the
broadcaster's moderators instead of the broadcaster's `channel:bot`; the site
asks for `channel:bot`, which it can check.

TWITCH_EVENTSUB_TYPES names the types wanted (`type` or `type:version`);
`user.authorization.revoke` is always wanted, for the whole application.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from django.conf import settings

from accounts.roles import BOT_ROLE, DEFAULT_ROLE

if TYPE_CHECKING:
    from accounts.models import TwitchToken

REVOKE = "user.authorization.revoke"


@dataclass(frozen=True)
class Party:
    """A condition field, filled with the Twitch user id of the person's
    connection in `role`, which must have granted `scopes`."""

    field: str
    role: str = DEFAULT_ROLE
    scopes: tuple[str, ...] = ()


@dataclass(frozen=True)
class EventType:
    name: str
    version: str
    # The first party anchors it: the type is wanted for every person with a
    # live connection in its role. None: the application's own (client_id).
    parties: tuple[Party, ...] = ()
    description: str = ""

    @property
    def key(self) -> str:
        return f"{self.name}:{self.version}"

    @property
    def anchor(self) -> Party | None:
        return self.parties[0] if self.parties else None

    @property
    def roles(self) -> set[str]:
        return {party.role for party in self.parties}

    def condition(self, connections: Mapping[str, TwitchToken]) -> dict[str, str]:
        """The condition for a person whose live connections by role are these
        (every party's role must be there)."""
        if not self.parties:
            return {"client_id": settings.TWITCH_CLIENT_ID}
        return {p.field: connections[p.role].twitch_user_id for p in self.parties}


BROADCASTER = "broadcaster_user_id"
SUBSCRIPTIONS = ("channel:read:subscriptions",)

CATALOGUE: dict[tuple[str, str], EventType] = {
    (t.name, t.version): t
    for t in [
        EventType(REVOKE, "1", (), "a user disconnects the app on Twitch"),
        EventType("user.update", "1", (Party("user_id"),), "they change their profile"),
        EventType("stream.online", "1", (Party(BROADCASTER),), "their stream starts"),
        EventType("stream.offline", "1", (Party(BROADCASTER),), "their stream ends"),
        EventType(
            "channel.update", "2", (Party(BROADCASTER),), "title or category changes"
        ),
        EventType(
            "channel.follow",
            "2",
            (
                Party(BROADCASTER),
                Party("moderator_user_id", scopes=("moderator:read:followers",)),
            ),
            "someone follows them",
        ),
        EventType(
            "channel.subscribe",
            "1",
            (Party(BROADCASTER, scopes=SUBSCRIPTIONS),),
            "someone subscribes",
        ),
        EventType(
            "channel.subscription.gift",
            "1",
            (Party(BROADCASTER, scopes=SUBSCRIPTIONS),),
            "someone gifts subscriptions",
        ),
        EventType(
            "channel.subscription.message",
            "1",
            (Party(BROADCASTER, scopes=SUBSCRIPTIONS),),
            "someone shares a resubscription",
        ),
        EventType(
            "channel.cheer",
            "1",
            (Party(BROADCASTER, scopes=("bits:read",)),),
            "someone cheers bits",
        ),
        EventType(
            "channel.raid",
            "1",
            (Party("to_broadcaster_user_id"),),
            "someone raids them",
        ),
        EventType(
            "channel.chat.message",
            "1",
            (
                Party(BROADCASTER, scopes=("channel:bot",)),
                Party("user_id", role=BOT_ROLE, scopes=("user:read:chat", "user:bot")),
            ),
            "a chat message, read by their bot",
        ),
    ]
}


def latest(name: str) -> EventType | None:
    versions = [t for (kind, _), t in CATALOGUE.items() if kind == name]
    return max(versions, key=lambda t: int(t.version)) if versions else None


def parse(text: str) -> tuple[list[EventType], list[str]]:
    """The types TWITCH_EVENTSUB_TYPES names, and what in it is not known."""
    wanted: dict[str, EventType] = {}
    unknown = []
    for word in text.split():
        name, _, version = word.partition(":")
        found = CATALOGUE.get((name, version)) if version else latest(name)
        if found is None or found.name == REVOKE:
            unknown.append(word)
        else:
            wanted[found.key] = found
    return list(wanted.values()), unknown


def wanted_types() -> list[EventType]:
    """The per-account types the site wants (unknown words are left out: the
    system check names them)."""
    return parse(settings.TWITCH_EVENTSUB_TYPES)[0]


def find(name: str, version: str) -> EventType | None:
    return CATALOGUE.get((name, version))
