"""A refresh answer Twitch acted on but without a usable refresh token: the spent one
is never presented again, the new access token is used while it lasts, and then
the connection needs a reconnect, with its event and signal."""

from __future__ import annotations

from datetime import timedelta

import pytest
import time_machine
from asgiref.sync import sync_to_async
from django.core.management.base import CommandError
from twitchAPI.helper import first

from accounts import signals, twitch
from accounts.models import TokenEvent, TwitchToken
from accounts.services import NoUsableToken, twitch_for
from tests.conftest import make_token
from tests.refresh_helpers import expiring, refresh_tokens

pytestmark = pytest.mark.django_db(transaction=True)

WITHOUT_A_REFRESH_TOKEN = {
    "refresh-token-null": {"set": {"refresh_token": None}},
    "refresh-token-empty": {"set": {"refresh_token": ""}},
    "refresh-token-missing": {"remove": ["refresh_token"]},
}


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    monkeypatch.setattr(twitch.http, "RETRY_BASE_DELAY", 0.01)


@pytest.fixture
def reconnects_heard():
    heard: list[TwitchToken] = []

    def listen(sender, token, **kwargs):
        heard.append(token)

    signals.token_needs_reconnect.connect(listen)
    yield heard
    signals.token_needs_reconnect.disconnect(listen)


@pytest.mark.parametrize(
    "answer", WITHOUT_A_REFRESH_TOKEN.values(), ids=WITHOUT_A_REFRESH_TOKEN
)
def test_the_spent_refresh_token_is_never_presented_again(
    alice, sandbox, answer, reconnects_heard
):
    token = expiring(make_token(alice, sandbox))
    sandbox.alter("token", times=1, **answer)  # Twitch rotates, then says nothing

    refresh_tokens("--no-validate")

    stored = TwitchToken.objects.get(pk=token.pk)
    assert stored.status == TwitchToken.Status.ACTIVE
    assert stored.refresh_token == ""  # the spent one is out of use for good
    assert sandbox.is_access_token_valid(stored.access_token)
    assert "no refresh token" in stored.last_error
    assert sandbox.live_tokens(token.login).access  # the grant lives on

    refresh_tokens("--no-validate")  # its access token still lasts: left alone
    assert sandbox.count("token", grant_type="refresh_token") == 1
    assert reconnects_heard == []

    with time_machine.travel(stored.expires_at + timedelta(minutes=1)):
        refresh_tokens("--no-validate")

    stored.refresh_from_db()
    assert stored.status == TwitchToken.Status.NEEDS_RECONNECT
    assert sandbox.count("token", grant_type="refresh_token") == 1
    assert [t.pk for t in reconnects_heard] == [token.pk]
    # Its access token was validated, and refused: nothing left to renew with.
    event = TokenEvent.objects.filter(token=token).latest("created_at")
    assert (event.action, event.outcome) == ("validate", "rejected")
    assert "must reconnect" in event.detail


def test_an_access_token_twitch_never_issued_is_no_proof_that_ours_is_spent(
    alice, sandbox
):
    token = expiring(make_token(alice, sandbox))
    sandbox.fail(
        "token", status=200, body={"access_token": "a" * 30, "expires_in": 14400}
    )

    with pytest.raises(CommandError):  # exit 1: Twitch misbehaved
        refresh_tokens("--no-validate")

    stored = TwitchToken.objects.get(pk=token.pk)
    assert stored.refresh_token == token.refresh_token
    assert sandbox.is_refresh_token_valid(stored.refresh_token)


async def test_site_code_uses_the_access_token_while_it_lasts_then_needs_a_reconnect(
    alice, sandbox, reconnects_heard
):
    token = await sync_to_async(
        lambda: make_token(alice, sandbox, refresh_token="", expires_in=60)
    )()

    async with twitch_for(alice) as client:  # within five minutes of expiry, still
        me = await first(client.get_users())
    assert me.login == "alice"

    sandbox.expire_access_tokens("alice")
    with pytest.raises(NoUsableToken):
        async with twitch_for(alice):
            pass

    stored = await TwitchToken.objects.aget(pk=token.pk)
    assert stored.status == TwitchToken.Status.NEEDS_RECONNECT
    assert sandbox.count("token") == 0
    assert [t.pk for t in reconnects_heard] == [token.pk]
