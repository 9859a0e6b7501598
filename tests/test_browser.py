"""A person in a real browser (headless Chromium): sign in, Connect Twitch, approve
on the sandbox's consent page, land back connected, disconnect.

Only a browser enforces what a cookie jar does not, e.g. that the session cookie
survives the cross-site redirect back from Twitch (SameSite). Chromium comes from
Debian (`apt-get install chromium`); without it these tests are skipped, except in
CI, where they must run.
"""

from __future__ import annotations

import os
import re
import shutil

import pytest
from asgiref.sync import sync_to_async

from accounts.models import TwitchToken

pytestmark = pytest.mark.django_db(transaction=True)

CHROMIUM = shutil.which("chromium")
if CHROMIUM is None and not os.environ.get("CI"):
    pytest.skip("no chromium here (apt-get install chromium)", allow_module_level=True)

from playwright.async_api import async_playwright  # noqa: E402


@pytest.fixture
async def browser():
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield chromium
        await chromium.close()


# Every page records the Content-Security-Policy violations Chromium reports.
RECORD_CSP_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  window.__cspViolations.push(`${event.violatedDirective} ${event.blockedURI}`);
});
"""


async def new_page(browser):
    page = await browser.new_page()
    await page.add_init_script(RECORD_CSP_VIOLATIONS)
    page.csp_console = []
    page.on(
        "console",
        lambda message: (
            "Content Security Policy" in message.text
            and page.csp_console.append(message.text)
        ),
    )
    return page


async def assert_no_csp_violations(page) -> None:
    violations = await page.evaluate("window.__cspViolations || []")
    assert violations == [] and page.csp_console == [], (violations, page.url)


async def sign_in(browser, site: str, username: str, *, at: str = "/"):
    page = await new_page(browser)
    await page.goto(f"{site}{at}")  # the login page, since nobody is signed in
    await page.fill("input[name=username]", username)
    await page.fill("input[name=password]", "pw")
    await page.click("[type=submit]")
    return page


async def test_a_person_connects_and_disconnects_twitch_in_a_browser(
    site, browser, django_user_model
):
    await django_user_model.objects.acreate_user("dana", password="pw")
    page = await sign_in(browser, site, "dana")

    await page.click("text=Connect Twitch")
    await page.fill("input[name=login]", "danastreams")
    await page.click("button[value=authorize]")

    await page.wait_for_selector("text=Connected as danastreams on Twitch.")
    assert "Connected as danastreams" in await page.inner_text("main")
    await assert_no_csp_violations(page)
    assert await TwitchToken.objects.filter(login="danastreams").aexists()

    await page.click("text=Disconnect")
    await page.wait_for_selector("text=Disconnected danastreams:")
    await assert_no_csp_violations(page)
    token = await TwitchToken.objects.aget(login="danastreams")
    assert token.status == TwitchToken.Status.REVOKED


async def test_cancelling_on_twitch_lands_on_a_friendly_page(
    site, browser, django_user_model
):
    await django_user_model.objects.acreate_user("erin", password="pw")
    page = await sign_in(browser, site, "erin")

    await page.click("text=Connect Twitch")
    await page.click("button[value=cancel]")

    await page.wait_for_selector("text=You cancelled the connection on Twitch")
    assert not await TwitchToken.objects.aexists()


async def test_the_site_and_the_admin_satisfy_the_content_security_policy(
    site, sandbox, browser, django_user_model
):
    from tests.conftest import make_token

    staff = await django_user_model.objects.acreate_superuser("frank", password="pw")
    token = await sync_to_async(make_token)(staff, sandbox)
    page = await sign_in(browser, site, "frank", at="/admin/")
    await page.wait_for_selector("text=Site administration")

    for path in [
        "/admin/",
        "/admin/accounts/twitchtoken/",
        f"/admin/accounts/twitchtoken/{token.pk}/change/",
        "/admin/accounts/tokenevent/",
        "/admin/auth/user/",
        "/admin/axes/accessattempt/",
        "/",
        "/twitch/callback/",  # a failure page
    ]:
        response = await page.goto(f"{site}{path}")
        assert response.status < 500, path
        await assert_no_csp_violations(page)
    # The revoke confirmation page, through the action.
    await page.goto(f"{site}/admin/accounts/twitchtoken/")
    await page.check(f"input[name=_selected_action][value='{token.pk}']")
    await page.select_option("select[name=action]", "revoke_tokens")
    await page.click("button[name=index]")
    await page.wait_for_selector("text=Revoke")
    await assert_no_csp_violations(page)


async def test_the_admin_s_collected_stylesheets_load_within_the_policy(
    deployed_site, browser
):
    page = await new_page(browser)

    await page.goto(f"{deployed_site}/admin/login/")

    sheets = await page.evaluate(
        """[...document.querySelectorAll("link[rel=stylesheet]")].map(
            (link) => [link.getAttribute("href"), link.sheet?.cssRules.length ?? 0]
        )"""
    )
    assert sheets, "the admin links no stylesheets"
    for href, rules in sheets:
        assert re.fullmatch(r"/static/admin/css/[\w/]+\.[0-9a-f]{12}\.css", href)
        assert rules > 0, f"{href} did not load"
    await assert_no_csp_violations(page)


async def test_a_connection_revoked_on_twitch_shows_connect_twitch_again(
    site, sandbox, settings, browser, django_user_model
):
    import asyncio
    import io

    from django.core.management import call_command

    from tests.conftest import EVENTSUB_SECRET

    sandbox.allow_insecure_callbacks = True
    settings.TWITCH_EVENTSUB_CALLBACK_URL = f"{site}/twitch/eventsub/"
    settings.TWITCH_EVENTSUB_SECRET = EVENTSUB_SECRET
    await sync_to_async(call_command)("eventsub", "subscribe", stdout=io.StringIO())
    await django_user_model.objects.acreate_user("gina", password="pw")
    page = await sign_in(browser, site, "gina")
    await page.click("text=Connect Twitch")
    await page.fill("input[name=login]", "ginastreams")
    await page.click("button[value=authorize]")
    await page.wait_for_selector("text=Connected as ginastreams on Twitch.")

    # Gina removes the site under Connections on Twitch; Twitch tells the site,
    # which answers first and ends the connection just after.
    await asyncio.to_thread(sandbox.disconnect_user, "ginastreams")
    for _ in range(200):
        token = await TwitchToken.objects.aget(login="ginastreams")
        if token.status == TwitchToken.Status.REVOKED:
            break
        await asyncio.sleep(0.05)
    await page.reload()

    await page.wait_for_selector("button:has-text('Connect Twitch')")
    assert "No Twitch account is connected" in await page.inner_text("main")
    await assert_no_csp_violations(page)


@pytest.mark.parametrize(
    "site",
    [{"TWITCH_BOT_SCOPES": "user:bot user:read:chat user:write:chat"}],
    indirect=True,
)
async def test_a_streamer_connects_their_account_and_their_bot_then_drops_the_bot(
    site, browser, django_user_model
):
    await django_user_model.objects.acreate_user("hana", password="pw")
    page = await sign_in(browser, site, "hana")

    await page.click("#role-main >> text=Connect Twitch")
    await page.fill("input[name=login]", "hanastreams")
    await page.click("button[value=authorize]")
    await page.wait_for_selector("text=Connected as hanastreams on Twitch.")
    # Twitch shows its consent page again for the bot, where Hana signs in as it.
    await page.click("#role-bot >> text=Connect bot account")
    await page.fill("input[name=login]", "hanabot")
    await page.click("button[value=authorize]")
    await page.wait_for_selector("text=Connected bot account hanabot on Twitch.")
    assert "Connected as hanastreams" in await page.inner_text("#role-main")
    assert "Connected as hanabot" in await page.inner_text("#role-bot")

    await page.click("#role-bot >> text=Disconnect")
    await page.wait_for_selector("text=Disconnected bot account hanabot:")
    assert "No bot account is connected" in await page.inner_text("#role-bot")
    assert "Connected as hanastreams" in await page.inner_text("#role-main")
    await assert_no_csp_violations(page)
    held = {
        t.role: t.status
        async for t in TwitchToken.objects.filter(user__username="hana")
    }
    assert held == {"main": "active", "bot": "revoked"}


async def test_a_linked_person_signs_in_with_twitch_in_a_browser(
    site, sandbox, browser, django_user_model
):
    from tests.conftest import make_token

    ivy = await django_user_model.objects.acreate_user("ivy", password="pw")
    twitch_id = sandbox.add_user("ivystreams").id
    await sync_to_async(make_token)(
        ivy, sandbox, login="ivystreams", twitch_user_id=twitch_id
    )
    page = await new_page(browser)
    await page.goto(f"{site}/")  # the login page, since nobody is signed in

    await page.click("text=Sign in with Twitch")
    await page.fill("input[name=login]", "ivystreams")
    await page.click("button[value=authorize]")

    await page.wait_for_selector("text=Your Twitch connection")
    assert "ivy" in await page.inner_text("header")
    assert "Connected as ivystreams" in await page.inner_text("main")
    await assert_no_csp_violations(page)
