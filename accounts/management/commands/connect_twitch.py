"""Connect a Twitch account for a site user from a terminal: Twitch's Device Code
Grant, for an account that has no browser here (a bot logged in on another device).

It asks Twitch for a code (`POST /oauth2/device`), prints where to enter it, polls
Twitch at the interval Twitch names until the person approves, denies or the code
expires, then stores the connection as the browser's Connect does: validated,
encrypted, audited (source "command"), signalled, a replaced grant revoked.

Exit status: 0 connected; 1 denied, expired, Twitch unavailable, or the account is
already another user's in that role (the new grant is then revoked); 2 bad
arguments; 130 when interrupted (Ctrl-C) while waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError

from accounts import twitch
from accounts.background import finish_background_work
from accounts.models import TokenEvent, TwitchToken
from accounts.oauth.connect import AlreadyLinked, keep_grant, scopes_to_request
from accounts.roles import DEFAULT_ROLE, Role, enabled_roles, role_named

# How long the command waits, once connected, for the work the connect started.
BACKGROUND_PATIENCE = 15.0  # seconds


class Command(BaseCommand):
    help = (
        "Connect a Twitch account for USERNAME in a role with Twitch's device code "
        "flow: prints a URL and a code to enter on any device signed in to that "
        "Twitch account, waits, and stores the connection. Exit status: 0 "
        "connected, 1 not connected (denied, expired, Twitch unavailable, account "
        "taken), 2 bad arguments, 130 interrupted."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username", help="The site user to connect it for.")
        parser.add_argument(
            "--role",
            default=DEFAULT_ROLE,
            help=f"What the connection is for (default: {DEFAULT_ROLE}; the roles "
            "this site has are listed when an unknown one is given).",
        )

    def handle(self, *args: Any, username: str, role: str, **options: Any) -> None:
        User = get_user_model()
        try:
            user = User._default_manager.get_by_natural_key(username)
        except User.DoesNotExist:
            raise CommandError(f"No user {username!r}.", returncode=2) from None
        chosen = role_named(role)
        if chosen is None:
            names = ", ".join(r.name for r in enabled_roles())
            raise CommandError(
                f"This site has no role {role!r} (it has: {names}).", returncode=2
            )
        try:
            # In this thread's own event loop: Ctrl-C cancels the polling (and a
            # grant being stored is then revoked, not left alive at Twitch).
            token = asyncio.run(self._connect_and_finish(user, chosen))
        except KeyboardInterrupt:
            self.stderr.write("Interrupted: nothing was connected.")
            raise SystemExit(130) from None
        self.stdout.write(
            self.style.SUCCESS(
                f"Connected {token.login} as {username}'s {chosen.label.lower()} "
                f"(scopes: {' '.join(token.scopes) or 'none'})."
            )
        )
        if (
            own := TwitchToken.objects.filter(
                user=user, twitch_user_id=token.twitch_user_id
            )
            .exclude(pk=token.pk)
            .exclude(status=TwitchToken.Status.REVOKED)
            .first()
        ):
            self.stdout.write(
                self.style.WARNING(
                    f"{token.login} is also {username}'s {own.role_label.lower()}. "
                    "If that was not meant, run this again and sign in to Twitch "
                    "as the other account on the device."
                )
            )

    async def _connect_and_finish(self, user: Any, chosen: Role) -> TwitchToken:
        try:
            return await self._connect(user, chosen)
        finally:
            # What the connect started in the background (revoking a replaced
            # grant, creating the account's EventSub subscriptions) is seen
            # through, within bounds, before the loop ends and would drop it.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(BACKGROUND_PATIENCE):
                    await finish_background_work()
            await twitch.close_http_session()

    async def _connect(self, user: Any, chosen: Role) -> TwitchToken:
        scopes = await scopes_to_request(user=user, role=chosen, asked="")
        try:
            device = await twitch.start_device_authorization(scopes=scopes)
        except twitch.TwitchError as error:
            raise CommandError(
                f"Twitch did not start the device flow: {error}"
            ) from None
        minutes = max(1, round(device.expires_in / 60))
        self.stdout.write(
            f"On a device signed in to the Twitch account to connect as "
            f"{user.get_username()}'s {chosen.label.lower()}, open\n\n"
            f"    {device.verification_uri}\n\n"
            f"and enter the code {device.user_code}. Waiting (the code expires in "
            f"{minutes} minute{'s' if minutes != 1 else ''})…"
        )
        self.stdout.flush()
        try:
            grant = await twitch.poll_device_authorization(device)
        except twitch.DeviceAccessDenied:
            raise CommandError(
                "The request was denied on Twitch; nothing connected."
            ) from None
        except twitch.DeviceCodeExpired:
            raise CommandError(
                "The code expired before it was approved; nothing connected. Run the "
                "command again."
            ) from None
        except twitch.TwitchError as error:
            raise CommandError(f"Twitch could not be asked: {error}") from None
        try:
            token = await keep_grant(
                user=user,
                role=chosen.name,
                grant=grant,
                source=TokenEvent.Source.COMMAND,
            )
        except AlreadyLinked as linked:
            raise CommandError(
                f"The Twitch account {linked.login} is already another user's "
                f"{chosen.label.lower()}; nothing connected (its new grant was "
                "revoked)."
            ) from None
        except twitch.TwitchError as error:
            raise CommandError(
                f"Twitch could not validate the new token: {error}"
            ) from None
        except DatabaseError:
            raise CommandError(
                "The database refused to store the connection; nothing connected "
                "(its new grant was revoked). Try again."
            ) from None
        return token
