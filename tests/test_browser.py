"""A person in a real browser (headless Chromium): sign in, Connect Twitch, approve
on the sandbox's consent page, land back connected, disconnect.

Only a browser enforces what a cookie jar does not, e.g. that the session cookie
survives the cross-site redirect back from Twitch (SameSite). Chromium comes from
Debian (`apt-get install chromium`); without it these tests are skipped, except in
CI, where they must run.
"""

from __future__ import annotations

import os
import shutil

import pytest

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


async def sign_in(browser, site: str, username: str):
    page = await browser.new_page()
    await page.goto(f"{site}/")  # the login page, since nobody is signed in
    await page.fill("input[name=username]", username)
    await page.fill("input[name=password]", "pw")
    await page.click("button[type=submit]")
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
    assert await TwitchToken.objects.filter(login="danastreams").aexists()

    await page.click("text=Disconnect")
    await page.wait_for_selector("text=Disconnected danastreams:")
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
