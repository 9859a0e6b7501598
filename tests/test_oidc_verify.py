"""The site's ID token verifier (accounts/twitch/oidc.py) against ID tokens the
sandbox really issued, forged ones included, and its cache of Twitch's keys."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import time_machine

from accounts import twitch
from accounts.twitch import oidc
from tests.conftest import CLIENT_ID, CLIENT_SECRET, REDIRECT_URI, http
from twitch_sandbox import Sandbox

NONCE = "the-nonce-we-sent"
ASK_USERNAME = {"id_token": {"preferred_username": None}}


def token_answer(
    sandbox: Sandbox,
    *,
    login: str = "alice",
    nonce: str | None = NONCE,
    claims: object = ASK_USERNAME,
) -> dict[str, Any]:
    """Authorize with openid, then exchange the code over HTTP as the site does."""
    code = sandbox.authorize(login=login, scopes="openid", nonce=nonce, claims=claims)
    form = {
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "code": code,
        "grant_type": "authorization_code",
        "redirect_uri": REDIRECT_URI,
    }
    reply = http(sandbox, "POST", "oauth2/token", form=form)
    assert reply.status == 200, reply.text
    return reply.json()


def id_token(sandbox: Sandbox, **authorize: Any) -> str:
    return token_answer(sandbox, **authorize)["id_token"]


async def verify(token: str | None, nonce: str | None = NONCE) -> twitch.IdToken:
    return await twitch.verify_id_token(token, client_id=CLIENT_ID, nonce=nonce)


async def refused(token: str | None, nonce: str | None = NONCE) -> str:
    """The reason the verifier gives; it must never quote the token."""
    with pytest.raises(twitch.InvalidIdToken) as caught:
        await verify(token, nonce)
    if token:
        assert token not in str(caught.value)
        signature = token.split(".")[-1]
        assert not signature or signature not in str(caught.value)
    return caught.value.reason


# What a good token yields ---------------------------------------------------------


async def test_a_token_twitch_issued_tells_who_signed_in(sandbox: Sandbox) -> None:
    alice = sandbox.add_user("alice")

    verified = await verify(id_token(sandbox))

    assert verified.user_id == alice.id
    assert verified.login == "alice"
    assert verified.display_name == "Alice"


async def test_the_token_says_when_it_was_issued_and_expires(
    sandbox: Sandbox,
) -> None:
    verified = await verify(id_token(sandbox))

    now = datetime.now(UTC)
    assert abs(verified.issued_at - now) < timedelta(seconds=5)
    assert verified.expires_at - verified.issued_at == timedelta(minutes=15)


async def test_without_preferred_username_the_login_is_unknown(
    sandbox: Sandbox,
) -> None:
    verified = await verify(id_token(sandbox, claims=None))

    assert (verified.login, verified.display_name) == ("", "")


async def test_a_token_without_nonce_is_accepted_when_none_was_sent(
    sandbox: Sandbox,
) -> None:
    verified = await verify(id_token(sandbox, nonce=None), nonce=None)

    assert verified.user_id == sandbox.add_user("alice").id


@pytest.mark.parametrize("nothing", [None, ""])
async def test_no_id_token_at_all_is_missing(nothing: str | None) -> None:
    assert await refused(nothing) == "missing"
    assert issubclass(twitch.InvalidIdToken, twitch.TwitchError)


# What is refused, and why ---------------------------------------------------------


@pytest.mark.parametrize(
    ("forgery", "reason"),
    [
        ("unknown_key", "unknown_key"),
        ("bad_signature", "signature"),
        ("expired", "expired"),
        ("wrong_audience", "audience"),
        ("wrong_issuer", "issuer"),
        ("wrong_nonce", "nonce"),
        ("missing_nonce", "nonce"),
        ("non_digit_subject", "subject"),
        ("missing", "missing"),
        ("alg_none", "signature"),
        ("hs256", "signature"),
        ("missing_iat", "malformed"),
        ("far_future_exp", "malformed"),
        ("wrong_azp", "audience"),
        ("audience_list", "audience"),
    ],
)
async def test_a_forged_token_is_refused_with_its_reason(
    sandbox: Sandbox, forgery: str, reason: str
) -> None:
    sandbox.forge_id_token(forgery)

    answer = token_answer(sandbox)

    assert await refused(answer.get("id_token")) == reason


async def test_a_token_for_another_application_is_refused(sandbox: Sandbox) -> None:
    token = id_token(sandbox)

    with pytest.raises(twitch.InvalidIdToken) as caught:
        await twitch.verify_id_token(token, client_id="another-client", nonce=NONCE)

    assert caught.value.reason == "audience"


async def test_a_token_with_another_nonce_than_ours_is_refused(
    sandbox: Sandbox,
) -> None:
    token = id_token(sandbox, nonce="a-nonce-of-another-sign-in")

    assert await refused(token) == "nonce"


@pytest.mark.parametrize(
    "garbage",
    # The third: an RS256 header naming no key.
    ["not-a-jwt", "a.b.c", "eyJhbGciOiJSUzI1NiJ9.e30.", "x" * 20_000],
)
async def test_something_that_is_not_a_jwt_is_malformed(
    sandbox: Sandbox, garbage: str
) -> None:
    assert await refused(garbage) == "malformed"
    assert sandbox.count("keys") == 0  # nothing fetched for garbage


async def test_a_tampered_payload_fails_the_signature(sandbox: Sandbox) -> None:
    header, payload, signature = id_token(sandbox).split(".")
    other_payload = id_token(sandbox, login="mallory").split(".")[1]

    assert await refused(f"{header}.{other_payload}.{signature}") == "signature"
    assert payload != other_payload


async def test_a_token_is_still_good_within_the_leeway_after_it_expired(
    sandbox: Sandbox,
) -> None:
    token = id_token(sandbox)

    with time_machine.travel(
        datetime.now(UTC) + timedelta(minutes=15, seconds=oidc.LEEWAY - 10)
    ):
        verified = await verify(token)

    assert verified.login == "alice"


async def test_a_token_past_the_leeway_after_it_expired_is_refused(
    sandbox: Sandbox,
) -> None:
    token = id_token(sandbox)

    with time_machine.travel(
        datetime.now(UTC) + timedelta(minutes=15, seconds=oidc.LEEWAY + 10)
    ):
        assert await refused(token) == "expired"


async def test_a_token_issued_in_the_future_is_refused(sandbox: Sandbox) -> None:
    with time_machine.travel(datetime.now(UTC) + timedelta(minutes=5)):
        token = id_token(sandbox)

    assert await refused(token) == "expired"


# Twitch's keys --------------------------------------------------------------------


async def test_the_keys_are_fetched_once_and_kept(sandbox: Sandbox) -> None:
    tokens = [id_token(sandbox) for _ in range(3)]

    for token in tokens:
        await verify(token)

    assert sandbox.count("keys") == 1


async def test_a_rotated_key_is_fetched_once_and_the_old_one_still_verifies(
    sandbox: Sandbox,
) -> None:
    before = id_token(sandbox)
    await verify(before)
    sandbox.rotate_signing_key()

    after = await verify(id_token(sandbox))
    again = await verify(before)

    assert after.login == again.login == "alice"
    assert sandbox.count("keys") == 2


async def test_a_key_twitch_no_longer_publishes_is_unknown_after_the_next_fetch(
    sandbox: Sandbox,
) -> None:
    before = id_token(sandbox)
    await verify(before)
    sandbox.rotate_signing_key(keep_old=False)

    await verify(id_token(sandbox))

    assert await refused(before) == "unknown_key"
    assert sandbox.count("keys") == 2


async def test_a_flood_of_unknown_key_ids_fetches_the_keys_once_per_interval(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    await verify(id_token(sandbox))
    sandbox.forge_id_token("unknown_key", times=20)
    flood = [id_token(sandbox) for _ in range(20)]

    reasons = [await refused(token) for token in flood]

    assert set(reasons) == {"unknown_key"}
    assert sandbox.count("keys") == 2  # the first fetch, and one refetch
    monkeypatch.setattr(oidc, "KEYS_REFETCH_INTERVAL", 0.0)
    assert await refused(flood[0]) == "unknown_key"
    assert sandbox.count("keys") == 3  # once the interval has passed


async def test_a_new_key_within_the_interval_after_a_flood_waits_for_the_next(
    sandbox: Sandbox,
) -> None:
    await verify(id_token(sandbox))
    sandbox.forge_id_token("unknown_key")
    assert await refused(id_token(sandbox)) == "unknown_key"
    sandbox.rotate_signing_key()

    # The bound holds for Twitch's own new key too, until the interval passes.
    assert await refused(id_token(sandbox)) == "unknown_key"
    assert sandbox.count("keys") == 2


@pytest.mark.parametrize(
    ("status", "body"),
    [(503, None), (500, "<html>oops</html>"), (404, None), (200, {"keys": "x"})],
)
async def test_keys_twitch_cannot_give_make_twitch_unavailable(
    sandbox: Sandbox, status: int, body: object
) -> None:
    sandbox.fail("keys", status=status, body=body)

    with pytest.raises(twitch.TwitchUnavailable):
        await verify(id_token(sandbox))


async def test_keys_that_are_none_of_twitchs_kind_make_twitch_unavailable(
    sandbox: Sandbox,
) -> None:
    odd = {"kty": "EC", "kid": "1", "crv": "P-256", "x": "AA", "y": "AA"}
    sandbox.fail("keys", status=200, body={"keys": [odd]})

    with pytest.raises(twitch.TwitchUnavailable, match="no usable key"):
        await verify(id_token(sandbox))


async def test_a_keys_endpoint_that_hangs_times_out_as_twitch_unavailable(
    sandbox: Sandbox, short_timeout: None
) -> None:
    sandbox.hang("keys", times=1)

    with pytest.raises(twitch.TwitchUnavailable, match="timed out"):
        await verify(id_token(sandbox))


async def test_a_rate_limited_keys_endpoint_says_how_long_to_wait(
    sandbox: Sandbox,
) -> None:
    sandbox.rate_limit("keys", times=1, reset_in=5)

    with pytest.raises(twitch.TwitchRateLimited) as caught:
        await verify(id_token(sandbox))

    assert caught.value.retry_after is not None and caught.value.retry_after > 0


async def test_after_keys_were_unavailable_the_next_token_fetches_them(
    sandbox: Sandbox,
) -> None:
    sandbox.fail("keys", status=503, times=1)
    token = id_token(sandbox)
    with pytest.raises(twitch.TwitchUnavailable):
        await verify(token)

    verified = await verify(token)

    assert verified.login == "alice"
    assert sandbox.count("keys") == 2


async def test_tokens_with_a_new_key_arriving_together_all_wait_for_one_fetch(
    sandbox: Sandbox,
) -> None:
    await verify(id_token(sandbox))
    sandbox.rotate_signing_key(keep_old=False)
    sandbox.set_latency(0.2, "keys")
    tokens = [id_token(sandbox) for _ in range(5)]

    verified = await asyncio.gather(*(verify(token) for token in tokens))

    assert {v.login for v in verified} == {"alice"}
    assert sandbox.count("keys") == 2  # the first fetch, and one for the new kid


async def test_callbacks_on_a_cold_process_share_one_fetch(sandbox: Sandbox) -> None:
    sandbox.set_latency(0.2, "keys")
    tokens = [id_token(sandbox) for _ in range(5)]

    await asyncio.gather(*(verify(token) for token in tokens))

    assert sandbox.count("keys") == 1


async def test_keys_older_than_their_maximum_age_are_fetched_again(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = id_token(sandbox)
    await verify(before)
    sandbox.rotate_signing_key(keep_old=False)
    monkeypatch.setattr(oidc, "KEYS_MAX_AGE", 0.0)  # as if a day had passed

    # The key Twitch withdrew no longer verifies.
    assert await refused(before) == "unknown_key"
    assert sandbox.count("keys") == 2
