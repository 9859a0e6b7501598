"""Consent as Twitch gives it: a user who already approved the same scopes for the
app is sent straight back, without the consent page, unless `force_verify=true`.

Twitch knows who is at the browser by its login cookie, so these tests use a browser
that keeps cookies (the helper in conftest opens a new one each time, which is a
browser that has never been to Twitch: it always sees the page).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import parse_qsl, urlsplit

import aiohttp
import pytest

from accounts.models import TwitchToken
from tests.conftest import CLIENT_ID, REDIRECT_URI, callback
from tests.test_sandbox_oauth import authorize_query, exchange
from twitch_sandbox import Sandbox


@pytest.fixture
async def browser() -> AsyncIterator[aiohttp.ClientSession]:
    # unsafe: the sandbox is at 127.0.0.1, whose cookies aiohttp drops by default.
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(cookie_jar=jar) as session:
        yield session


async def visit(
    browser: aiohttp.ClientSession, url: str, *, login: str
) -> tuple[bool, str]:
    """Go to Twitch's authorize URL and approve if asked, as `login`: whether the
    consent page was shown, and where Twitch sent the browser."""
    async with browser.get(url, allow_redirects=False) as page:
        if page.status == 302:
            return False, page.headers["Location"]
        assert page.status == 200, await page.text()
        assert "<form" in await page.text()
    # The consent form carries the authorize parameters, plus who is logging in.
    form = {**dict(parse_qsl(urlsplit(url).query)), "login": login}
    form["action"] = "authorize"
    async with browser.post(
        url.split("?")[0], data=form, allow_redirects=False
    ) as sent:
        assert sent.status == 302, await sent.text()
        return True, sent.headers["Location"]


def authorize_url(sandbox: Sandbox, **overrides: str) -> str:
    query = "&".join(f"{k}={v}" for k, v in authorize_query(**overrides).items())
    return f"{sandbox.auth_base_url}authorize?{query.replace(' ', '+')}"


def code_of(location: str) -> str:
    query = dict(parse_qsl(urlsplit(location).query))
    assert location.startswith(REDIRECT_URI), location
    assert query["state"] == "the-state"
    return query["code"]


async def approve_and_exchange(
    sandbox: Sandbox, browser: aiohttp.ClientSession, *, login: str, **query: str
) -> dict[str, object]:
    asked, location = await visit(browser, authorize_url(sandbox, **query), login=login)
    assert asked
    reply = exchange(sandbox, code_of(location))
    assert reply.status == 200
    return reply.json()  # type: ignore[return-value]


# The sandbox ----------------------------------------------------------------------


async def test_an_app_approved_before_is_sent_straight_back_without_the_page(
    sandbox: Sandbox, browser: aiohttp.ClientSession
) -> None:
    await approve_and_exchange(sandbox, browser, login="alice")

    asked, location = await visit(browser, authorize_url(sandbox), login="ignored")

    assert not asked
    query = dict(parse_qsl(urlsplit(location).query))
    assert list(query) == ["code", "scope", "state"]
    assert query["scope"] == "chat:read user:read:email"
    grant = exchange(sandbox, code_of(location)).json()
    access_token = grant["access_token"]  # type: ignore[index]
    assert sandbox.user_for_access_token(access_token).login == "alice"


async def test_fewer_scopes_come_straight_back_and_more_scopes_ask_again(
    sandbox: Sandbox, browser: aiohttp.ClientSession
) -> None:
    await approve_and_exchange(sandbox, browser, login="alice")

    fewer, _ = await visit(
        browser, authorize_url(sandbox, scope="chat:read"), login="a"
    )
    more, _ = await visit(
        browser, authorize_url(sandbox, scope="chat:read chat:edit"), login="alice"
    )

    assert (fewer, more) == (False, True)


async def test_force_verify_shows_the_page_even_after_an_approval(
    sandbox: Sandbox, browser: aiohttp.ClientSession
) -> None:
    await approve_and_exchange(sandbox, browser, login="alice")

    url = authorize_url(sandbox, force_verify="true")
    async with browser.get(url, allow_redirects=False) as page:
        text = await page.text()

    assert page.status == 200
    assert 'name="login" value="alice"' in text  # who is logged in, as on Twitch
    assert '<input type="hidden" name="force_verify" value="true">' in text


async def test_another_browser_or_a_disconnected_app_sees_the_page_again(
    sandbox: Sandbox, browser: aiohttp.ClientSession
) -> None:
    await approve_and_exchange(sandbox, browser, login="alice")
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(cookie_jar=jar) as elsewhere:
        other_browser, _ = await visit(elsewhere, authorize_url(sandbox), login="alice")

    sandbox.disconnect_user("alice")  # Twitch forgets the approval with the grant
    after_disconnect, _ = await visit(browser, authorize_url(sandbox), login="alice")

    assert other_browser and after_disconnect


async def test_an_approval_is_for_one_user_and_the_page_switches_users(
    sandbox: Sandbox, browser: aiohttp.ClientSession
) -> None:
    await approve_and_exchange(sandbox, browser, login="alice")
    grant = await approve_and_exchange(
        sandbox, browser, login="bob", force_verify="true"
    )
    access_token = grant["access_token"]
    assert sandbox.user_for_access_token(access_token).login == "bob"  # type: ignore[arg-type]

    # Logged in as bob now, who approved these scopes too: straight back, as bob.
    asked, location = await visit(browser, authorize_url(sandbox), login="alice")
    again = exchange(sandbox, code_of(location)).json()

    assert not asked
    assert sandbox.user_for_access_token(again["access_token"]).login == "bob"  # type: ignore[index]


# The site -------------------------------------------------------------------------

site_db = pytest.mark.django_db(transaction=True)


async def connect(client, browser: aiohttp.ClientSession, *, login: str, **form: str):
    started = await client.post("/twitch/connect/", form)
    assert started.status_code == 302, started.content
    asked, back = await visit(browser, started["Location"], login=login)
    response = await callback(client, back)
    return asked, started["Location"], response


@site_db
async def test_connecting_again_comes_straight_back_from_twitch(
    alice_client, sandbox: Sandbox, browser: aiohttp.ClientSession
) -> None:
    first, _, _ = await connect(alice_client, browser, login="alicestreams")
    again, _, response = await connect(alice_client, browser, login="ignored")

    assert (first, again) == (True, False)
    assert response.status_code == 302
    token = await TwitchToken.objects.aget()
    assert token.login == "alicestreams"
    assert token.status == TwitchToken.Status.ACTIVE


@site_db
async def test_reconnecting_as_another_twitch_account_works(
    alice_client, sandbox: Sandbox, browser: aiohttp.ClientSession
) -> None:
    await connect(alice_client, browser, login="alicestreams")

    # Without force_verify Twitch would send the browser straight back as
    # alicestreams: the Reconnect button asks for the page, where the user can log
    # in as another account.
    asked, url, _ = await connect(
        alice_client, browser, login="alice_alt", reconnect="1"
    )

    assert asked
    assert "force_verify=true" in url
    token = await TwitchToken.objects.aget()
    assert token.login == "alice_alt"
    assert sandbox.user_for_access_token(token.access_token).login == "alice_alt"
    assert f"client_id={CLIENT_ID}" in url
