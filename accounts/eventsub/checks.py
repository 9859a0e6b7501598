"""System checks of EventSub's settings (the callback, the secret, the types the
site wants) and of what Twitch said about them (a removed version)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core import checks
from django.urls import Resolver404, resolve

from accounts import roles


@checks.register()
def check_eventsub(**kwargs: Any) -> list[checks.CheckMessage]:
    url, secret = settings.TWITCH_EVENTSUB_CALLBACK_URL, settings.TWITCH_EVENTSUB_SECRET
    if not url:
        return []  # the feature is off
    errors = []
    parts = urlsplit(url)
    try:
        match = resolve(parts.path)
    except Resolver404:
        match = None
    # Twitch calls webhooks only over HTTPS on port 443; DEBUG allows a local
    # http:// URL for a stand-in.
    https = parts.scheme == "https" and parts.port in (None, 443)
    if (
        not parts.netloc
        or not (https or settings.DEBUG)
        or (match is None or match.url_name != "twitch_eventsub")
    ):
        errors.append(
            checks.Error(
                f"TWITCH_EVENTSUB_CALLBACK_URL must be an absolute https:// URL on "
                f"port 443 whose path routes to /twitch/eventsub/, not {url!r}.",
                hint="For example https://example.com/twitch/eventsub/.",
                id="accounts.E008",
            )
        )
    previous = settings.TWITCH_EVENTSUB_PREVIOUS_SECRET
    for name, value in [
        ("TWITCH_EVENTSUB_SECRET", secret),
        *([("TWITCH_EVENTSUB_PREVIOUS_SECRET", previous)] if previous else []),
    ]:
        if not (10 <= len(value) <= 100 and value.isascii() and value.isprintable()):
            errors.append(
                checks.Error(
                    f"{name} must be 10 to 100 printable ASCII characters "
                    "when TWITCH_EVENTSUB_CALLBACK_URL is set.",
                    hint='Make one with: python -c "import secrets; '
                    'print(secrets.token_urlsafe(32))"',
                    id="accounts.E009",
                )
            )
    return errors


@checks.register()
def check_eventsub_types(**kwargs: Any) -> list[checks.CheckMessage]:
    """TWITCH_EVENTSUB_TYPES names known types whose connections the site asks
    for, with the scopes Twitch wants for them."""
    if not settings.TWITCH_EVENTSUB_TYPES.strip():
        return []
    from accounts.eventsub import catalogue

    wanted, unknown = catalogue.parse(settings.TWITCH_EVENTSUB_TYPES)
    messages: list[checks.CheckMessage] = []
    if unknown:
        known = sorted(
            {t.name for t in catalogue.CATALOGUE.values()} - {catalogue.REVOKE}
        )
        messages.append(
            checks.Error(
                f"TWITCH_EVENTSUB_TYPES names types or versions the site does not "
                f"know: {', '.join(unknown)}.",
                hint=f"Known: {', '.join(known)} (as `type` or `type:version`).",
                id="accounts.E014",
            )
        )
    enabled = {role.name: role for role in roles.enabled_roles()}
    for kind in wanted:
        for party in kind.parties:
            role = enabled.get(party.role)
            if role is None:
                messages.append(
                    checks.Error(
                        f"TWITCH_EVENTSUB_TYPES wants {kind.key}, which needs a "
                        f"{party.role!r} connection, but that role is off.",
                        hint="Set TWITCH_BOT_SCOPES (or declare the role) or drop "
                        "the type.",
                        id="accounts.E014",
                    )
                )
                continue
            asked = set(role.scopes) | set(role.optional_scopes)
            if lacking := [s for s in party.scopes if s not in asked]:
                messages.append(
                    checks.Warning(
                        f"{kind.key} needs {', '.join(lacking)} from the "
                        f"{party.role!r} connection, which the site never asks for: "
                        "no account will get it.",
                        hint=f"Add {', '.join(lacking)} to the role's scopes "
                        "(TWITCH_SCOPES for main, TWITCH_BOT_SCOPES for bot).",
                        id="accounts.W014",
                    )
                )
    return messages


@checks.register(checks.Tags.database)
def check_eventsub_versions(
    *, databases: list[str] | None = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """Twitch revoked a subscription with `version_removed` and the site still
    asks for that type's version: nothing of it arrives until it is changed.

    A warning read from the database, so only when database checks are asked for
    (`check --database default`, `migrate`): every command runs the other
    checks first, and cron's must neither stop on a row nor wait on a database
    that does not answer. `manage.py eventsub status` shows it too."""
    if not databases or not settings.TWITCH_EVENTSUB_CALLBACK_URL:
        return []
    from accounts.eventsub import catalogue

    wanted = {(kind.name, kind.version) for kind in catalogue.wanted_types()}
    if not wanted:
        return []
    return [
        checks.Warning(
            f"Twitch removed EventSub {kind} version {version} (version_removed), "
            "which TWITCH_EVENTSUB_TYPES still asks for: its subscriptions are gone.",
            hint="Use a version Twitch supports in TWITCH_EVENTSUB_TYPES (update the "
            "site if its catalogue lacks it) and run `manage.py eventsub subscribe`.",
            id="accounts.W015",
        )
        for kind, version in removed_versions()
        if (kind, version) in wanted
    ]


def removed_versions() -> list[tuple[str, str]]:
    """The type versions Twitch revoked subscriptions of with `version_removed`;
    none while the database cannot say (not migrated yet, or down)."""
    from django.db import DatabaseError

    from accounts.models import EventSubRevocation

    try:
        return sorted(
            set(
                EventSubRevocation.objects.filter(reason="version_removed").values_list(
                    "subscription_type", "subscription_version"
                )
            )
        )
    except DatabaseError:
        return []
