"""Refreshing against Twitch as strict and odd as it really is: malformed and partial
token answers, optional fields left out, renamed accounts."""

from __future__ import annotations

from datetime import timedelta

import pytest
import time_machine
from django.core.management.base import CommandError
from django.utils import timezone

from accounts import twitch
from accounts.models import TwitchToken
from tests.conftest import (
    make_token,
)
from tests.refresh_helpers import expiring, refresh_tokens

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    monkeypatch.setattr(twitch.http, "RETRY_BASE_DELAY", 0.01)


FAKE_ACCESS, FAKE_REFRESH = "a" * 30, "b" * 50
# Answers without a usable refresh token: retried like any nonsense, three attempts.
UNUSABLE_ANSWERS = {
    "refresh-token-number": {"access_token": FAKE_ACCESS, "refresh_token": 12345},
    "refresh-token-missing": {"access_token": FAKE_ACCESS, "expires_in": 14400},
    "refresh-token-with-nul": {"access_token": FAKE_ACCESS, "refresh_token": "a\u0000"},
    "a-list": [1, 2, 3],
}
# A refresh token but no usable access token: the refresh token is presented next.
PARTIAL_ANSWERS = {
    "access-token-null": {"access_token": None, "refresh_token": FAKE_REFRESH},
    "access-token-empty": {"access_token": "", "refresh_token": FAKE_REFRESH},
    "access-token-with-nul": {
        "access_token": "ab\u0000cd",
        "refresh_token": FAKE_REFRESH,
    },
}
# Well-formed tokens with a useless lifetime: validating the access token says
# whether Twitch really issued them (here it did not), so they are not retried.
USELESS_LIFETIMES = {"expires-in-huge": 1e15, "expires-in-negative": -5}
USELESS_LIFETIMES["expires-in-a-string"] = "soon"
MALFORMED_ANSWERS = {
    **{name: (body, 3) for name, body in UNUSABLE_ANSWERS.items()},
    **{
        name: (
            {
                "access_token": FAKE_ACCESS,
                "refresh_token": FAKE_REFRESH,
                "expires_in": lifetime,
            },
            1,
        )
        for name, lifetime in USELESS_LIFETIMES.items()
    },
}


@pytest.mark.parametrize(
    ("answer", "times"), MALFORMED_ANSWERS.values(), ids=MALFORMED_ANSWERS
)
def test_a_malformed_token_answer_costs_only_that_token(
    django_user_model, sandbox, answer, times
):
    first, *others = [
        expiring(
            make_token(django_user_model.objects.create_user(f"u{n}"), sandbox),
            minutes=10 + n,
        )
        for n in range(3)
    ]
    sandbox.fail("token", status=200, body=answer, times=times)

    with pytest.raises(CommandError) as failed:
        refresh_tokens("--no-validate", "--concurrency", "1")

    assert failed.value.returncode == 1
    stored = TwitchToken.objects.get(pk=first.pk)
    assert stored.refresh_token == first.refresh_token
    assert sandbox.is_refresh_token_valid(stored.refresh_token)
    assert stored.status == TwitchToken.Status.ACTIVE and stored.last_error
    for token in others:
        token.refresh_from_db()
        assert sandbox.is_refresh_token_valid(token.refresh_token)
        assert token.last_refreshed_at is not None
    assert not TwitchToken.objects.filter(claimed_until__isnull=False).exists()


@pytest.mark.parametrize("answer", PARTIAL_ANSWERS.values(), ids=PARTIAL_ANSWERS)
def test_a_refresh_token_twitch_never_issued_is_found_out_and_ours_refreshed(
    alice, sandbox, answer
):
    token = expiring(make_token(alice, sandbox))
    sandbox.fail("token", status=200, body=answer, times=1)

    output = refresh_tokens("--no-validate")

    # Presented, the sent refresh token was refused: ours was never rotated, so
    # it was presented again, for a real pair.
    assert output.startswith("refreshed 1,")
    # Named, not printed, should this fail: they are credentials.
    names = {token.refresh_token: "ours", FAKE_REFRESH: "sent"}
    presented = [names.get(r.form["refresh_token"], "other") for r in sandbox.requests]
    assert presented == ["ours", "sent", "ours"]
    token.refresh_from_db()
    assert sandbox.is_refresh_token_valid(token.refresh_token)


def follow_up_fails(sandbox) -> None:
    sandbox.alter("token", set={"access_token": None}, times=1)  # rotated for real
    sandbox.fail("token", status=503, times=1)  # the follow-up


def every_answer_partial(sandbox) -> None:
    sandbox.alter("token", set={"access_token": None}, times=3)  # each for real


@pytest.mark.parametrize(
    ("faults", "requests"), [(follow_up_fails, 2), (every_answer_partial, 3)]
)
def test_a_follow_up_that_fails_keeps_the_newest_refresh_token_for_the_next_run(
    alice, sandbox, faults, requests
):
    token = expiring(make_token(alice, sandbox))
    faults(sandbox)

    with pytest.raises(CommandError):
        refresh_tokens("--no-validate")

    # Not the old one again (Twitch would end the grant): the newest, due now.
    kept = TwitchToken.objects.get(pk=token.pk)
    assert kept.refresh_token != token.refresh_token
    assert sandbox.is_refresh_token_valid(kept.refresh_token)
    assert kept.access_token == "" and kept.expires_at <= timezone.now()
    assert "no usable access token" in kept.last_error
    assert sandbox.count("token") == requests

    assert refresh_tokens("--no-validate").startswith("refreshed 1,")
    kept.refresh_from_db()
    assert sandbox.is_refresh_token_valid(kept.refresh_token)
    assert kept.access_token in sandbox.live_tokens(kept.login).access


def test_a_later_refused_follow_up_does_not_present_the_spent_refresh_token_again(
    alice, sandbox
):
    token = expiring(make_token(alice, sandbox))
    sandbox.alter("token", set={"access_token": None}, times=1)  # rotated for real
    # So was the one it sent, but what came back is not Twitch's:
    sandbox.alter(
        "token", set={"access_token": None, "refresh_token": FAKE_REFRESH}, times=1
    )

    with pytest.raises(CommandError):
        refresh_tokens("--no-validate")

    assert sandbox.count("token") == 3  # not a fourth, with the spent one
    assert sandbox.live_tokens(token.login).refresh  # the grant itself lives on
    token.refresh_from_db()
    assert token.status == TwitchToken.Status.ACTIVE and token.last_error


def test_a_refresh_answer_without_expires_in_takes_the_expiry_from_validation(
    alice, sandbox
):
    token = expiring(make_token(alice, sandbox))
    sandbox.alter("token", remove=["expires_in"])

    output = refresh_tokens("--no-validate")

    assert output.startswith("refreshed 1,")
    token.refresh_from_db()
    assert sandbox.is_refresh_token_valid(token.refresh_token)
    assert token.expires_at > timezone.now() + timedelta(hours=3)
    assert sandbox.count("validate") == 1  # the new token, to learn its lifetime


def test_a_refresh_answer_with_unreadable_scopes_keeps_the_new_pair(alice, sandbox):
    # Twitch rotated the refresh token: asking again with the old one would end
    # the grant. The pair is kept; validation says which scopes the token has.
    token = expiring(make_token(alice, sandbox))
    sandbox.alter("token", set={"scope": {"not": "a list"}}, times=1)

    output = refresh_tokens("--no-validate")

    assert output.startswith("refreshed 1,")
    token.refresh_from_db()
    assert sandbox.is_refresh_token_valid(token.refresh_token)
    assert token.scopes == ["chat:read"]
    assert sandbox.count("token") == 1
    assert sandbox.count("validate") == 1  # the new token, to learn its scopes


def test_a_refresh_answer_without_an_access_token_is_followed_up_with_its_refresh_token(
    alice, sandbox
):
    # The old refresh token may be rotated away already; the new one is what to
    # present, and Twitch's answer to it says whether it was Twitch's at all.
    token = expiring(make_token(alice, sandbox))
    sandbox.alter("token", set={"access_token": None}, times=1)

    output = refresh_tokens("--no-validate")

    assert output.startswith("refreshed 1,")
    token.refresh_from_db()
    assert sandbox.is_refresh_token_valid(token.refresh_token)
    assert sandbox.count("token", grant_type="refresh_token") == 2
    assert sandbox.refresh_count(token.refresh_token) == 2  # one grant, no reuse


def test_a_token_that_does_not_expire_is_never_refreshed_in_a_loop(alice, sandbox):
    token = make_token(alice, sandbox, last_validated_at=None)
    sandbox.alter("validate", set={"expires_in": 0})

    refresh_tokens()
    token.refresh_from_db()
    assert token.expires_at is None  # Twitch says it does not expire

    for _ in range(3):
        refresh_tokens()
    with time_machine.travel(timezone.now() + timedelta(minutes=45), tick=True):
        assert "validated 1" in refresh_tokens()
    assert sandbox.count("token") == 0


def test_validation_follows_a_renamed_twitch_account_and_its_scopes(alice, sandbox):
    token = make_token(alice, sandbox, last_validated_at=None)
    sandbox.alter("validate", set={"login": "alice_renamed", "scopes": None})

    refresh_tokens("--validate-only")

    token.refresh_from_db()
    assert (token.login, token.scopes) == ("alice_renamed", [])


def test_a_follow_up_answered_with_an_access_token_twitch_never_issued_keeps_ours(
    alice, sandbox
):
    # Twitch rotates and sends only the new refresh token; presented, it gets an
    # answer with an access token Twitch never issued and no refresh token.
    token = expiring(make_token(alice, sandbox))
    sandbox.alter("token", remove=["access_token"], times=1)
    sandbox.fail(
        "token", status=200, body={"access_token": FAKE_ACCESS, "expires_in": 14400}
    )

    with pytest.raises(CommandError):
        refresh_tokens("--no-validate")

    stored = TwitchToken.objects.get(pk=token.pk)
    # The refresh token Twitch really sent is kept, not the spent one.
    assert stored.refresh_token != token.refresh_token
    assert sandbox.is_refresh_token_valid(stored.refresh_token)
    assert stored.access_token == ""
