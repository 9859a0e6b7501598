"""What a connection is for: its role. A person has at most one connection per role.

The default role ("main", the person's own Twitch account) is always there and
keeps the settings it always had (TWITCH_SCOPES, TWITCH_OPTIONAL_SCOPES). The "bot"
role, the account a chat bot speaks as, is switched on by TWITCH_BOT_SCOPES. A site
declares further roles in settings.py:

    TWITCH_EXTRA_ROLES = {
        "editor": {
            "label": "Editor account",
            "scopes": ["channel:manage:broadcast"],
            "optional_scopes": [],
        },
    }

Roles are read from settings on each call, so tests can change them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from django.conf import settings

DEFAULT_ROLE = "main"
BOT_ROLE = "bot"
# Role names travel in forms, URLs of the admin's filter and audit lines: plain words.
ROLE_NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,31}")


@dataclass(frozen=True)
class Role:
    name: str
    label: str  # what the home page and the admin call it
    scopes: tuple[str, ...]  # required: a connection without one needs a reconnect
    optional_scopes: tuple[str, ...] = ()  # a feature page may ask for these too

    @property
    def is_default(self) -> bool:
        return self.name == DEFAULT_ROLE


def enabled_roles() -> list[Role]:
    """Every role this site uses, the default first."""
    roles = [
        Role(
            name=DEFAULT_ROLE,
            label="Twitch account",
            scopes=tuple(settings.TWITCH_SCOPES),
            optional_scopes=tuple(settings.TWITCH_OPTIONAL_SCOPES),
        )
    ]
    if settings.TWITCH_BOT_SCOPES:
        roles.append(
            Role(
                name=BOT_ROLE,
                label="Bot account",
                scopes=tuple(settings.TWITCH_BOT_SCOPES),
                optional_scopes=tuple(settings.TWITCH_BOT_OPTIONAL_SCOPES),
            )
        )
    for name, declared in settings.TWITCH_EXTRA_ROLES.items():
        roles.append(
            Role(
                name=name,
                label=str(declared.get("label") or name.replace("_", " ").title()),
                scopes=tuple(declared.get("scopes", ())),
                optional_scopes=tuple(declared.get("optional_scopes", ())),
            )
        )
    return roles


def role_named(name: str) -> Role | None:
    """The enabled role called `name`, or None."""
    return next((role for role in enabled_roles() if role.name == name), None)


def role_label(name: str) -> str:
    """How to show a role, including one a row still has after the site dropped it."""
    role = role_named(name)
    return role.label if role is not None else name
