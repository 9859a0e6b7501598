"""Sign in with Twitch, for accounts already linked: who Twitch says this is, and
whether they may come in this way. Accounts are never created here (staff manage
them); the view signs the person in (accounts/oauth/views.py)."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.base_user import AbstractBaseUser
from django.views.decorators.debug import sensitive_variables

from accounts import twitch
from accounts.background import in_background
from accounts.models import TwitchToken
from accounts.roles import DEFAULT_ROLE


class NotLinked(Exception):
    """No site user has this Twitch account as their own (default-role) connection."""


class SignInRefused(Exception):
    """The linked person may not sign in with Twitch (staff, or a disabled account)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason  # "staff" or "inactive"


@sensitive_variables()
async def person_signing_in(*, code: str, nonce: str) -> AbstractBaseUser:
    """Exchange the code and return the person whose default-role connection is
    the Twitch account the verified ID token names. Raises `twitch.TwitchError`
    (`twitch.InvalidIdToken` among them), `NotLinked` or `SignInRefused`.

    One round trip to Twitch: the sign-in's grant (`openid` only) is ended at
    Twitch after the answer, whatever happened; the site never keeps it.
    """
    grant = await twitch.exchange_code(code)
    try:
        identity = await twitch.verify_id_token(
            grant.id_token, client_id=settings.TWITCH_CLIENT_ID, nonce=nonce
        )
    finally:
        in_background(twitch.revoke_quietly(grant.access_token))
    # A working link only: one Twitch no longer accepts (or whose account is in
    # doubt) is reconnected after a password sign-in first.
    linked = (
        await TwitchToken.objects.filter(
            role=DEFAULT_ROLE,
            twitch_user_id=identity.user_id,
            status=TwitchToken.Status.ACTIVE,
        )
        .select_related("user")
        .afirst()
    )
    if linked is None:
        raise NotLinked(identity.user_id)
    user = linked.user
    if not user.is_active:
        raise SignInRefused("inactive")
    if not may_stay_signed_in(user):
        raise SignInRefused("staff")
    return user


def may_stay_signed_in(user: AbstractBaseUser) -> bool:
    """Staff and superusers only when TWITCH_SIGNIN_STAFF: a Twitch account must not
    become a way into /admin."""
    return settings.TWITCH_SIGNIN_STAFF or not (user.is_staff or user.is_superuser)


class TwitchSignInBackend(ModelBackend):
    """The sessions that Sign in with Twitch begins (AUTHENTICATION_BACKENDS).

    It authenticates nobody itself: the callback knows the person from Twitch's ID
    token. On every request it checks again what let them in, in the one query
    that loads them: still active, still not staff (unless TWITCH_SIGNIN_STAFF),
    their own Twitch connection still not revoked. Promoting them, or ending the
    link (the person, staff, or Twitch itself), ends such a session too.
    """

    def authenticate(self, request: object, **credentials: object) -> None:
        return None

    def get_user(self, user_id: object) -> AbstractBaseUser | None:
        user = (
            get_user_model()
            ._default_manager.filter(
                pk=user_id,
                twitch_tokens__role=DEFAULT_ROLE,
                twitch_tokens__status__in=[
                    TwitchToken.Status.ACTIVE,
                    TwitchToken.Status.NEEDS_RECONNECT,
                ],
            )
            .first()
        )
        if user is None or not self.user_can_authenticate(user):
            return None
        return user if may_stay_signed_in(user) else None
