"""The sandbox's Device Code Grant over real HTTP: `POST /oauth2/device`, the
activation page, polling the token endpoint, public clients' refresh tokens, and
one login holding several grants at once."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import aiohttp
import pytest
import time_machine

from tests.conftest import (
    CLIENT_ID,
    CLIENT_SECRET,
    REDIRECT_URI,
    Reply,
    http,
    refresh,
    validate,
)
from twitch_sandbox import Sandbox

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
PENDING = {"status": 400, "message": "authorization_pending"}
SLOW_DOWN = {"status": 400, "message": "slow_down"}


def start(sandbox: Sandbox, **overrides: str | None) -> Reply:
    form = {"client_id": CLIENT_ID, "scopes": "chat:read", **overrides}
    fields = {name: value for name, value in form.items() if value is not None}
    return http(sandbox, "POST", "oauth2/device", form=fields)


def started(sandbox: Sandbox, scopes: str = "chat:read") -> dict:
    reply = start(sandbox, scopes=scopes)
    assert reply.status == 200, reply.text
    return reply.json()


def poll(sandbox: Sandbox, device_code: str | None, **overrides: str | None) -> Reply:
    form = {
        "client_id": CLIENT_ID,
        "scopes": "chat:read",
        "device_code": device_code,
        "grant_type": DEVICE_GRANT,
        **overrides,
    }
    fields = {name: value for name, value in form.items() if value is not None}
    return http(sandbox, "POST", "oauth2/token", form=fields)


def connect_device(
    sandbox: Sandbox, clock: time_machine.Traveller, *, login: str, scopes: str
) -> dict:
    """A device code approved by `login` and redeemed: the token answer."""
    device = started(sandbox, scopes=scopes)
    sandbox.approve_device(device["user_code"], login=login)
    clock.shift(device["interval"])
    reply = poll(sandbox, device["device_code"], scopes=scopes)
    assert reply.status == 200, reply.text
    return reply.json()


def exchange(sandbox: Sandbox, *, login: str, scopes: str) -> dict:
    """The browser flow's grant: a code approved by `login`, exchanged."""
    form = {
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "code": sandbox.authorize(login=login, scopes=scopes),
        "grant_type": "authorization_code",
        "redirect_uri": REDIRECT_URI,
    }
    reply = http(sandbox, "POST", "oauth2/token", form=form)
    assert reply.status == 200, reply.text
    return reply.json()


def refresh_without_secret(sandbox: Sandbox, refresh_token: str) -> Reply:
    form = {
        "client_id": CLIENT_ID,
        "grant_type": "refresh_token",
        "refresh_token": refresh_token,
    }
    return http(sandbox, "POST", "oauth2/token", form=form)


@pytest.fixture
def clock() -> Iterator[time_machine.Traveller]:
    """Twitch's clock (and ours), standing still unless a test moves it."""
    with time_machine.travel(time.time(), tick=False) as traveller:
        yield traveller


@pytest.fixture
def public_client(sandbox: Sandbox) -> Iterator[None]:
    # reset() keeps the client's type: give it back for the other tests.
    sandbox.public_client = True
    yield
    sandbox.public_client = False


# POST /oauth2/device ---------------------------------------------------------------


def test_device_endpoint_answers_a_code_pair_and_where_to_enter_it(
    sandbox: Sandbox,
) -> None:
    reply = start(sandbox, scopes="chat:read user:read:email")

    assert reply.status == 200
    assert reply.headers["Content-Type"] == "application/json"
    body = reply.json()
    assert list(body) == [
        "device_code",
        "expires_in",
        "interval",
        "user_code",
        "verification_uri",
    ]
    assert re.fullmatch(r"[A-Za-z0-9]{40}", body["device_code"])
    assert re.fullmatch(r"[A-Z]{8}", body["user_code"])
    assert body["expires_in"] == 1800
    assert body["interval"] == 5
    assert body["verification_uri"] == (
        f"{sandbox.base_url}activate?device-code={body['user_code']}"
    )


def test_every_device_request_gets_codes_of_its_own(sandbox: Sandbox) -> None:
    first, second = started(sandbox), started(sandbox)

    assert first["device_code"] != second["device_code"]
    assert first["user_code"] != second["user_code"]


async def test_device_endpoint_takes_the_multipart_form_twitch_cli_sends(
    sandbox: Sandbox,
) -> None:
    form = aiohttp.FormData(default_to_multipart=True)
    form.add_field("client_id", CLIENT_ID)
    form.add_field("scopes", "chat:read")

    async with (
        aiohttp.ClientSession() as session,
        session.post(sandbox.base_url + "oauth2/device", data=form) as reply,
    ):
        assert reply.status == 200
        assert "device_code" in await reply.json()


@pytest.mark.parametrize(
    ("client_id", "message"),
    [(None, "missing client id"), ("someone-else", "invalid client")],
)
def test_device_endpoint_refuses_a_missing_or_unknown_client(
    sandbox: Sandbox, client_id: str | None, message: str
) -> None:
    reply = start(sandbox, client_id=client_id)

    assert reply.status == 400
    assert reply.json() == {"status": 400, "message": message}


@pytest.mark.parametrize("scope", ["chat:raed", "channel_subscriptions"])
def test_device_endpoint_refuses_scopes_twitch_does_not_take(
    sandbox: Sandbox, scope: str
) -> None:
    reply = start(sandbox, scopes=f"chat:read {scope}")

    assert reply.status == 400
    assert reply.json() == {"status": 400, "message": "invalid scope requested"}


def test_device_endpoint_requires_the_scopes_parameter_as_documented(
    sandbox: Sandbox,
) -> None:
    assert start(sandbox, scopes=None).json() == {
        "status": 400,
        "message": "missing scopes",
    }
    assert start(sandbox, scopes="").status == 200  # present, naming none


# Polling the token endpoint -----------------------------------------------------------


def test_polling_before_anyone_approves_is_authorization_pending(
    sandbox: Sandbox, clock: time_machine.Traveller
) -> None:
    device = started(sandbox)
    clock.shift(5)

    reply = poll(sandbox, device["device_code"])

    assert reply.status == 400
    assert reply.json() == PENDING


def test_the_first_poll_also_waits_the_interval(
    sandbox: Sandbox, clock: time_machine.Traveller
) -> None:
    device = started(sandbox)

    assert poll(sandbox, device["device_code"]).json() == SLOW_DOWN


def test_polling_sooner_than_the_interval_is_slow_down_and_adds_five_seconds(
    sandbox: Sandbox, clock: time_machine.Traveller
) -> None:
    device = started(sandbox)
    answers = []
    for seconds in (5, 4, 5, 15):
        clock.shift(seconds)
        answers.append(poll(sandbox, device["device_code"]).json())

    # 4 s is too soon; then the interval is 10 s, so 5 s is too soon as well,
    # and it is 15 s.
    assert answers == [PENDING, SLOW_DOWN, SLOW_DOWN, PENDING]


def test_an_approved_device_code_answers_the_token_pair_once(
    sandbox: Sandbox, clock: time_machine.Traveller
) -> None:
    device = started(sandbox, scopes="chat:read user:read:email")
    sandbox.approve_device(device["user_code"], login="BotAccount")
    clock.shift(5)

    reply = poll(sandbox, device["device_code"], scopes="chat:read user:read:email")
    clock.shift(5)
    again = poll(sandbox, device["device_code"], scopes="chat:read user:read:email")

    assert reply.status == 200
    body = reply.json()
    assert list(body) == [
        "access_token",
        "expires_in",
        "refresh_token",
        "scope",
        "token_type",
    ]
    assert body["scope"] == ["chat:read", "user:read:email"]
    assert body["token_type"] == "bearer"
    validation = validate(sandbox, body["access_token"]).json()
    assert validation["login"] == "botaccount"
    assert validation["scopes"] == ["chat:read", "user:read:email"]
    assert again.json() == {"status": 400, "message": "invalid device code"}


def test_an_approved_code_polled_too_soon_hears_slow_down_first(
    sandbox: Sandbox, clock: time_machine.Traveller
) -> None:
    device = started(sandbox)
    sandbox.approve_device(device["user_code"], login="botaccount")
    clock.shift(1)

    too_soon = poll(sandbox, device["device_code"])
    clock.shift(10)
    in_time = poll(sandbox, device["device_code"])

    assert too_soon.json() == SLOW_DOWN
    assert in_time.status == 200


def test_a_declined_device_code_is_access_denied_from_then_on(
    sandbox: Sandbox, clock: time_machine.Traveller
) -> None:
    device = started(sandbox)
    sandbox.deny_device(device["user_code"])
    answers = []
    for _ in range(2):
        clock.shift(5)
        answers.append(poll(sandbox, device["device_code"]).json())

    assert answers == [{"status": 400, "message": "access_denied"}] * 2
    with pytest.raises(ValueError):
        sandbox.approve_device(device["user_code"], login="botaccount")


def test_a_device_code_past_expires_in_is_expired_token_and_cannot_be_approved(
    sandbox: Sandbox, clock: time_machine.Traveller
) -> None:
    device = started(sandbox)
    clock.shift(1800)

    reply = poll(sandbox, device["device_code"])

    assert reply.status == 400
    assert reply.json() == {"status": 400, "message": "expired_token"}
    with pytest.raises(ValueError):
        sandbox.approve_device(device["user_code"], login="botaccount")


@pytest.mark.parametrize(
    ("device_code", "message"),
    [("not-a-device-code", "invalid device code"), (None, "missing device_code")],
)
def test_an_unknown_or_missing_device_code_is_refused(
    sandbox: Sandbox, device_code: str | None, message: str
) -> None:
    reply = poll(sandbox, device_code)

    assert reply.status == 400
    assert reply.json() == {"status": 400, "message": message}


def test_polling_requires_the_scopes_parameter_as_documented(
    sandbox: Sandbox, clock: time_machine.Traveller
) -> None:
    device = started(sandbox)
    clock.shift(5)

    reply = poll(sandbox, device["device_code"], scopes=None)

    assert reply.json() == {"status": 400, "message": "missing scopes"}


def test_a_confidential_client_polls_without_its_secret_but_never_a_wrong_one(
    sandbox: Sandbox, clock: time_machine.Traveller
) -> None:
    device = started(sandbox)
    clock.shift(5)

    wrong = poll(sandbox, device["device_code"], client_secret="not-the-secret")
    clock.shift(5)
    right = poll(sandbox, device["device_code"], client_secret=CLIENT_SECRET)

    assert wrong.status == 403
    assert wrong.json() == {"status": 403, "message": "invalid client secret"}
    assert right.json() == PENDING


def test_a_confidential_clients_device_grant_refreshes_only_with_its_secret(
    sandbox: Sandbox, clock: time_machine.Traveller
) -> None:
    # twitchdev/issues#943: no secret to get the grant, the secret to refresh it.
    pair = connect_device(sandbox, clock, login="botaccount", scopes="chat:read")

    without = refresh_without_secret(sandbox, pair["refresh_token"])
    with_secret = refresh(sandbox, pair["refresh_token"])

    assert without.status == 400
    assert without.json() == {"status": 400, "message": "missing client secret"}
    assert with_secret.status == 200


# A public client: no secret, refresh tokens used once ---------------------------------


@pytest.mark.usefixtures("public_client")
def test_a_public_client_refreshes_without_a_secret_and_its_old_token_dies(
    sandbox: Sandbox, clock: time_machine.Traveller
) -> None:
    pair = connect_device(sandbox, clock, login="botaccount", scopes="chat:read")

    reply = refresh_without_secret(sandbox, pair["refresh_token"])

    assert reply.status == 200
    new = reply.json()
    assert new["refresh_token"] != pair["refresh_token"]
    assert not sandbox.is_refresh_token_valid(pair["refresh_token"])
    assert sandbox.is_refresh_token_valid(new["refresh_token"])
    assert validate(sandbox, new["access_token"]).status == 200


@pytest.mark.usefixtures("public_client")
def test_a_public_clients_used_refresh_token_presented_again_ends_the_grant(
    sandbox: Sandbox, clock: time_machine.Traveller
) -> None:
    pair = connect_device(sandbox, clock, login="botaccount", scopes="chat:read")
    new = refresh_without_secret(sandbox, pair["refresh_token"]).json()

    reply = refresh_without_secret(sandbox, pair["refresh_token"])

    assert reply.status == 400
    assert reply.json()["message"] == "Invalid refresh token"
    assert not sandbox.is_refresh_token_valid(new["refresh_token"])
    assert validate(sandbox, new["access_token"]).status == 401


@pytest.mark.usefixtures("public_client")
def test_a_public_client_has_no_secret_so_any_secret_it_sends_is_wrong(
    sandbox: Sandbox, clock: time_machine.Traveller
) -> None:
    pair = connect_device(sandbox, clock, login="botaccount", scopes="chat:read")
    device = started(sandbox)
    clock.shift(5)

    refreshed = refresh(sandbox, pair["refresh_token"])
    polled = poll(sandbox, device["device_code"], client_secret=CLIENT_SECRET)

    assert refreshed.status == polled.status == 403
    assert refreshed.json() == {"status": 403, "message": "invalid client secret"}
    assert sandbox.is_refresh_token_valid(pair["refresh_token"])  # nothing rotated


@pytest.mark.usefixtures("public_client")
def test_a_public_client_cannot_exchange_an_authorization_code(
    sandbox: Sandbox,
) -> None:
    form = {
        "client_id": CLIENT_ID,
        "code": sandbox.authorize(login="alice"),
        "grant_type": "authorization_code",
        "redirect_uri": REDIRECT_URI,
    }

    reply = http(sandbox, "POST", "oauth2/token", form=form)

    assert reply.status == 400
    assert reply.json() == {"status": 400, "message": "missing client secret"}


# The activation page ---------------------------------------------------------------


def activate(sandbox: Sandbox, **form: str) -> Reply:
    return http(sandbox, "POST", "activate", form=form)


def test_the_verification_uri_shows_the_app_its_scopes_and_the_code(
    sandbox: Sandbox,
) -> None:
    device = started(sandbox, scopes="chat:read user:read:email")
    path = device["verification_uri"].removeprefix(sandbox.base_url)

    reply = http(sandbox, "GET", path)

    assert reply.status == 200
    assert reply.headers.get_content_type() == "text/html"
    page = reply.text
    assert f"Authorize {CLIENT_ID}" in page
    assert "chat:read" in page and "user:read:email" in page
    assert device["user_code"] in page
    assert '<form method="post" action="/activate">' in page
    assert 'name="login" value="sandboxuser"' in page
    assert '<button type="submit" name="action" value="authorize">' in page
    assert '<button type="submit" name="action" value="cancel">' in page


def test_the_activation_page_without_a_code_asks_for_one(sandbox: Sandbox) -> None:
    reply = http(sandbox, "GET", "activate")

    assert reply.status == 200
    assert '<form method="get" action="/activate">' in reply.text
    assert 'name="device-code"' in reply.text


def test_a_code_typed_in_lower_case_with_a_dash_is_found(sandbox: Sandbox) -> None:
    code = started(sandbox)["user_code"]
    typed = f"{code[:4]}-{code[4:]}".lower()

    reply = http(sandbox, "GET", "activate", query={"device-code": typed})

    assert reply.status == 200
    assert code in reply.text


@pytest.mark.parametrize("typed", ["NOTACODE", '"><script>alert(1)</script>'])
def test_an_unknown_code_gets_the_form_again_and_escapes_what_it_echoes(
    sandbox: Sandbox, typed: str
) -> None:
    reply = http(sandbox, "GET", "activate", query={"device-code": typed})

    assert reply.status == 400
    assert "That code did not work" in reply.text
    assert 'name="device-code"' in reply.text
    assert "<script>" not in reply.text


def test_authorizing_on_the_activation_page_approves_the_code_as_that_login(
    sandbox: Sandbox, clock: time_machine.Traveller
) -> None:
    device = started(sandbox)

    page = activate(
        sandbox, user_code=device["user_code"], login="TheBot", action="authorize"
    )
    clock.shift(5)
    reply = poll(sandbox, device["device_code"])

    assert page.status == 200
    assert "Device connected" in page.text
    assert reply.status == 200
    assert sandbox.user_for_access_token(reply.json()["access_token"]).login == "thebot"


def test_cancelling_on_the_activation_page_declines_the_code(
    sandbox: Sandbox, clock: time_machine.Traveller
) -> None:
    device = started(sandbox)

    page = activate(sandbox, user_code=device["user_code"], action="cancel")
    clock.shift(5)

    assert page.status == 200
    assert "Access denied" in page.text
    assert poll(sandbox, device["device_code"]).json()["message"] == "access_denied"


def test_a_login_twitch_would_not_take_is_asked_for_again(
    sandbox: Sandbox, clock: time_machine.Traveller
) -> None:
    device = started(sandbox)

    page = activate(
        sandbox, user_code=device["user_code"], login="not a login", action="authorize"
    )
    clock.shift(5)

    assert page.status == 400
    assert "A Twitch login is 1 to 25 letters" in page.text
    assert 'value="not a login"' in page.text
    assert poll(sandbox, device["device_code"]).json() == PENDING


def test_a_code_is_answered_once_on_the_activation_page(sandbox: Sandbox) -> None:
    device = started(sandbox)
    activate(sandbox, user_code=device["user_code"], login="thebot", action="authorize")

    again = activate(sandbox, user_code=device["user_code"], action="cancel")

    assert again.status == 400
    assert "That code did not work" in again.text


# The control API ------------------------------------------------------------------


def test_control_endpoints_approve_and_deny_device_codes(
    sandbox: Sandbox, clock: time_machine.Traveller
) -> None:
    approved, denied = started(sandbox), started(sandbox)

    replies = [
        http(
            sandbox,
            "POST",
            f"_sandbox/devices/{approved['user_code']}/approve",
            json_body={"login": "thebot"},
        ),
        http(sandbox, "POST", f"_sandbox/devices/{denied['user_code']}/deny"),
        http(sandbox, "POST", "_sandbox/devices/NOTACODE/deny"),
    ]
    clock.shift(5)

    assert [reply.status for reply in replies] == [200, 200, 400]
    assert replies[0].json() == {"ok": True}
    assert "NOTACODE" in replies[2].json()["message"]
    assert poll(sandbox, approved["device_code"]).status == 200
    assert poll(sandbox, denied["device_code"]).json()["message"] == "access_denied"


def test_device_timing_is_set_over_control_and_reset_goes_back_to_twitchs(
    sandbox: Sandbox,
) -> None:
    body = {"interval": 1, "expires_in": 30}
    reply = http(sandbox, "POST", "_sandbox/device-timing", json_body=body)
    short = started(sandbox)
    sandbox.reset()
    usual = started(sandbox)
    bad = http(sandbox, "POST", "_sandbox/device-timing", json_body={"interval": 0})

    assert reply.status == 200
    assert (short["interval"], short["expires_in"]) == (1, 30)
    assert (usual["interval"], usual["expires_in"]) == (5, 1800)
    assert bad.status == 400


def test_reset_forgets_device_codes(
    sandbox: Sandbox, clock: time_machine.Traveller
) -> None:
    device = started(sandbox)
    sandbox.reset()
    clock.shift(5)

    assert poll(sandbox, device["device_code"]).json()["message"] == (
        "invalid device code"
    )
    with pytest.raises(KeyError):
        sandbox.approve_device(device["user_code"], login="thebot")


# Several grants for one login ---------------------------------------------------------


def test_one_login_holds_two_live_grants_with_different_scopes(
    sandbox: Sandbox, clock: time_machine.Traveller
) -> None:
    main = exchange(sandbox, login="streamer", scopes="channel:read:subscriptions")
    bot = connect_device(
        sandbox, clock, login="streamer", scopes="chat:read user:write:chat"
    )

    grants = sandbox.grants("streamer")

    assert [grant.scopes for grant in grants] == [
        ["channel:read:subscriptions"],
        ["chat:read", "user:write:chat"],
    ]
    assert [grant.refresh_token for grant in grants] == [
        main["refresh_token"],
        bot["refresh_token"],
    ]
    assert validate(sandbox, main["access_token"]).json()["scopes"] == [
        "channel:read:subscriptions"
    ]
    assert validate(sandbox, bot["access_token"]).json()["scopes"] == [
        "chat:read",
        "user:write:chat",
    ]


def test_each_grant_of_a_login_is_refreshed_and_revoked_on_its_own(
    sandbox: Sandbox, clock: time_machine.Traveller
) -> None:
    main = exchange(sandbox, login="streamer", scopes="channel:read:subscriptions")
    bot = connect_device(sandbox, clock, login="streamer", scopes="chat:read")

    refreshed = refresh(sandbox, main["refresh_token"]).json()
    revoke = {"client_id": CLIENT_ID, "token": bot["access_token"]}
    revoked = http(sandbox, "POST", "oauth2/revoke", form=revoke)

    assert revoked.status == 200
    assert validate(sandbox, refreshed["access_token"]).status == 200
    assert validate(sandbox, bot["access_token"]).status == 401
    assert sandbox.is_refresh_token_valid(bot["refresh_token"])  # revoke: access only
    bot_again = refresh(sandbox, bot["refresh_token"]).json()
    assert validate(sandbox, bot_again["access_token"]).json()["scopes"] == [
        "chat:read"
    ]
    assert sandbox.is_refresh_token_valid(refreshed["refresh_token"])


def test_a_second_grant_with_the_same_scopes_leaves_the_first_alive(
    sandbox: Sandbox, clock: time_machine.Traveller
) -> None:
    first = exchange(sandbox, login="streamer", scopes="chat:read")
    second = connect_device(sandbox, clock, login="streamer", scopes="chat:read")

    grants = sandbox.grants("streamer")

    assert [grant.refresh_token for grant in grants] == [
        first["refresh_token"],
        second["refresh_token"],
    ]
    assert validate(sandbox, first["access_token"]).status == 200


def test_disconnecting_the_app_ends_every_grant_of_the_login(
    sandbox: Sandbox, clock: time_machine.Traveller
) -> None:
    main = exchange(sandbox, login="streamer", scopes="channel:read:subscriptions")
    bot = connect_device(sandbox, clock, login="streamer", scopes="chat:read")

    sandbox.disconnect_user("streamer")

    assert sandbox.grants("streamer") == []
    for pair in (main, bot):
        assert validate(sandbox, pair["access_token"]).status == 401
        assert refresh(sandbox, pair["refresh_token"]).status == 400


def test_a_stale_refresh_token_of_one_grant_ends_the_others_too(
    sandbox: Sandbox, clock: time_machine.Traveller
) -> None:
    # twitchdev/issues#903: the connection between user and app ends, and a
    # user sees one connection per app.
    main = exchange(sandbox, login="streamer", scopes="channel:read:subscriptions")
    bot = connect_device(sandbox, clock, login="streamer", scopes="chat:read")
    refresh(sandbox, bot["refresh_token"])

    reply = refresh(sandbox, bot["refresh_token"])

    assert reply.status == 400
    assert sandbox.grants("streamer") == []
    assert validate(sandbox, main["access_token"]).status == 401


def test_control_lists_a_logins_grants(
    sandbox: Sandbox, clock: time_machine.Traveller
) -> None:
    bot = connect_device(sandbox, clock, login="streamer", scopes="chat:read")

    reply = http(sandbox, "GET", "_sandbox/users/streamer/grants")

    assert reply.json() == [
        {
            "client_id": CLIENT_ID,
            "scopes": ["chat:read"],
            "refresh_token": bot["refresh_token"],
            "access_tokens": [bot["access_token"]],
        }
    ]
