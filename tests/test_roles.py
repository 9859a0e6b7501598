"""More than one Twitch account per person: their own ("main") and their bot's,
each connected, shown, kept alive, used and ended on its own, against the sandbox
over real HTTP."""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async
from django.core.management import call_command
from django.test import AsyncClient

from accounts import signals
from accounts.models import TokenEvent, TwitchToken
from accounts.services import MissingScopes, NoUsableToken, twitch_for
from tests.conftest import (
    approve_on_twitch,
    callback,
    connect_twitch,
    listening,
    make_token,
    page,
    start_connect,
)

pytestmark = pytest.mark.django_db(transaction=True)

BOT_SCOPES = ["user:bot", "user:read:chat", "user:write:chat"]


@pytest.fixture(autouse=True)
def bot_role(settings):
    settings.TWITCH_BOT_SCOPES = BOT_SCOPES


async def connections(username: str = "alice") -> dict[str, TwitchToken]:
    return {
        token.role: token
        async for token in TwitchToken.objects.filter(user__username=username)
    }


async def test_a_person_connects_their_own_account_and_their_bot(alice_client, sandbox):
    await connect_twitch(alice_client, login="alicestreams")
    response = await connect_twitch(alice_client, login="alicebot", role="bot")

    assert response.status_code == 302
    held = await connections()
    assert {role: token.login for role, token in held.items()} == {
        "main": "alicestreams",
        "bot": "alicebot",
    }
    assert held["main"].scopes == ["chat:read", "chat:edit", "openid"]
    assert held["bot"].scopes == [*BOT_SCOPES, "openid"]
    # Both grants live at Twitch side by side, each its own.
    for token in held.values():
        assert sandbox.is_refresh_token_valid(token.refresh_token)
    assert "Connected bot account alicebot on Twitch." in page(
        await alice_client.get("/")
    )


async def test_the_authorize_request_asks_for_the_roles_scopes_only(alice_client):
    main = await start_connect(alice_client)
    bot = await start_connect(alice_client, role="bot")

    # Each with openid: the callback learns the account from the ID token.
    assert main["scope"] == "chat:read chat:edit openid"
    assert bot["scope"] == " ".join([*BOT_SCOPES, "openid"])
    # The browser is most likely signed in to the person's own account: Twitch is
    # asked to show the consent page, where they can pick the bot's.
    assert bot["force_verify"] == "true"
    assert "force_verify" not in main


async def test_an_unknown_role_is_refused_without_echoing_it(alice_client, sandbox):
    for url in ("/twitch/connect/", "/twitch/disconnect/"):
        response = await alice_client.post(url, {"role": "<b>ceo</b>"})

        assert response.status_code == 400
        assert "ceo" not in page(response)
        assert "kind of Twitch connection this site does not have" in page(response)
    assert sandbox.requests == []


async def test_the_bot_role_is_off_until_its_scopes_are_set(alice_client, settings):
    settings.TWITCH_BOT_SCOPES = []

    response = await alice_client.post("/twitch/connect/", {"role": "bot"})

    assert response.status_code == 400
    assert "bot account" not in page(await alice_client.get("/")).lower()


async def test_the_callback_lands_in_the_role_its_state_was_minted_for(alice_client):
    started = await alice_client.post("/twitch/connect/", {"role": "bot"})
    back = await approve_on_twitch(started["Location"], login="alicebot")

    # A role slipped into the callback's URL changes nothing: the state decides.
    response = await callback(alice_client, back + "&role=main")

    assert response.status_code == 302
    held = await connections()
    assert list(held) == ["bot"]
    assert held["bot"].login == "alicebot"


async def test_a_twitch_account_is_one_persons_bot_at_most(alice_client, bob, sandbox):
    bob_client = AsyncClient()
    await bob_client.aforce_login(bob)
    await connect_twitch(bob_client, login="sharedbot", role="bot")

    response = await connect_twitch(alice_client, login="sharedbot", role="bot")

    assert response.status_code == 409
    assert "already the bot account of another user" in page(response)
    assert await connections() == {}
    # The grant Twitch issued for Alice's attempt is ended, not left alive.
    live = sandbox.live_tokens("sharedbot")
    bobs = (await connections("bob"))["bot"]
    assert live.access == [bobs.access_token]


async def test_one_account_may_be_one_persons_bot_and_another_persons_own(
    alice_client, bob
):
    bob_client = AsyncClient()
    await bob_client.aforce_login(bob)
    await connect_twitch(bob_client, login="helperbot")

    response = await connect_twitch(alice_client, login="helperbot", role="bot")

    assert response.status_code == 302
    assert (await connections())["bot"].login == "helperbot"
    assert (await connections("bob"))["main"].login == "helperbot"


async def test_a_person_may_use_their_own_account_as_their_bot(alice_client, sandbox):
    await connect_twitch(alice_client, login="alicestreams")
    await connect_twitch(alice_client, login="alicestreams", role="bot")

    held = await connections()
    assert held["main"].twitch_user_id == held["bot"].twitch_user_id
    # Two grants with different scopes: refreshing one leaves the other alive.
    await sync_to_async(call_command)("refresh_tokens", "--all", verbosity=0)
    held = await connections()
    for token in held.values():
        assert sandbox.is_refresh_token_valid(token.refresh_token)


async def test_disconnecting_the_bot_leaves_the_persons_own_account(
    alice_client, sandbox
):
    await connect_twitch(alice_client, login="alicestreams")
    await connect_twitch(alice_client, login="alicebot", role="bot")

    response = await alice_client.post("/twitch/disconnect/", {"role": "bot"})

    assert response.status_code == 302
    held = await connections()
    assert held["bot"].status == TwitchToken.Status.REVOKED
    assert held["main"].status == TwitchToken.Status.ACTIVE
    assert sandbox.is_access_token_valid(held["main"].access_token)
    home = page(await alice_client.get("/"))
    assert "No bot account is connected (you disconnected alicebot)" in home
    assert "Connected as <strong>alicestreams</strong>" in home


async def test_disconnect_without_a_role_ends_the_persons_own_account(alice_client):
    await connect_twitch(alice_client, login="alicestreams")
    await connect_twitch(alice_client, login="alicebot", role="bot")

    await alice_client.post("/twitch/disconnect/")

    held = await connections()
    assert held["main"].status == TwitchToken.Status.REVOKED
    assert held["bot"].status == TwitchToken.Status.ACTIVE


async def test_the_home_page_has_a_section_per_role_with_its_own_buttons(
    alice_client,
):
    await connect_twitch(alice_client, login="alicebot", role="bot")

    home = page(await alice_client.get("/"))

    assert "Your Twitch connection" in home
    assert "No Twitch account is connected." in home
    assert "Your bot account" in home
    assert "Connected as <strong>alicebot</strong>" in home
    assert "user:bot, user:read:chat, user:write:chat" in home
    assert home.count('name="role" value="bot"') == 2  # Reconnect, Disconnect
    assert home.count('name="role" value="main"') == 1  # Connect Twitch
    assert "Connect Twitch</button>" in home


async def test_a_role_the_site_dropped_can_still_be_disconnected(
    alice_client, settings, sandbox
):
    await connect_twitch(alice_client, login="alicebot", role="bot")
    settings.TWITCH_BOT_SCOPES = []

    home = page(await alice_client.get("/"))
    assert "alicebot" in home
    assert "Reconnect" not in home
    response = await alice_client.post("/twitch/disconnect/", {"role": "bot"})

    assert response.status_code == 302
    assert (await connections())["bot"].status == TwitchToken.Status.REVOKED


async def test_a_roles_optional_scopes_are_its_own(alice_client, settings):
    settings.TWITCH_OPTIONAL_SCOPES = ["channel:read:subscriptions"]
    settings.TWITCH_BOT_OPTIONAL_SCOPES = ["moderator:manage:banned_users"]

    refused = await alice_client.post(
        "/twitch/connect/", {"role": "bot", "scopes": "channel:read:subscriptions"}
    )
    await connect_twitch(
        alice_client,
        login="alicebot",
        role="bot",
        scopes="moderator:manage:banned_users",
    )
    # A reconnect keeps the optional scope the bot was granted.
    again = await start_connect(alice_client, role="bot")

    assert refused.status_code == 400
    assert (await connections())["bot"].scopes == [
        *BOT_SCOPES,
        "moderator:manage:banned_users",
        "openid",
    ]
    assert again["scope"].split() == [
        *BOT_SCOPES,
        "moderator:manage:banned_users",
        "openid",
    ]


async def test_a_role_declared_in_settings_works_like_the_others(
    alice_client, settings
):
    settings.TWITCH_EXTRA_ROLES = {
        "editor": {"label": "Editor account", "scopes": ["channel:manage:broadcast"]}
    }

    await connect_twitch(alice_client, login="aliceeditor", role="editor")

    assert (await connections())["editor"].scopes == [
        "channel:manage:broadcast",
        "openid",
    ]
    assert "Your editor account" in page(await alice_client.get("/"))


async def test_connecting_the_bot_is_audited_and_signalled_with_its_role(
    alice_client,
):
    heard = []

    async def receiver(sender, token, role, **kwargs):
        heard.append((role, token.login))

    with listening(signals.token_connected, receiver):
        await connect_twitch(alice_client, login="alicebot", role="bot")

    assert heard == [("bot", "alicebot")]
    event = await TokenEvent.objects.select_related("token").aget()
    assert event.detail == "Connected as alicebot (bot)"
    assert event.token.role == "bot"


async def test_twitch_for_hands_over_the_account_of_the_role_asked_for(
    alice_client,
):
    await connect_twitch(alice_client, login="alicestreams")
    await connect_twitch(alice_client, login="alicebot", role="bot")
    alice = (await connections())["main"].user_id

    user = await sync_to_async(lambda: TwitchToken.objects.get(role="bot").user)()
    assert user.pk == alice
    async with twitch_for(user, role="bot") as bot:
        me = [u async for u in bot.get_users()]
    async with twitch_for(user) as own:
        mine = [u async for u in own.get_users()]

    assert [u.login for u in me] == ["alicebot"]
    assert [u.login for u in mine] == ["alicestreams"]


async def test_twitch_for_a_role_not_connected_is_a_clear_error(alice, sandbox):
    await sync_to_async(make_token)(alice, sandbox, login="alice")

    with pytest.raises(NoUsableToken, match=r"\(bot\)"):
        async with twitch_for(alice, role="bot"):
            pass
    with pytest.raises(MissingScopes, match="user:bot"):
        async with twitch_for(alice, scopes=["user:bot"]):
            pass


async def test_refresh_tokens_keeps_every_roles_connection_alive(alice_client, sandbox):
    await connect_twitch(alice_client, login="alicestreams")
    await connect_twitch(alice_client, login="alicebot", role="bot")
    before = {
        role: token.refresh_token for role, token in (await connections()).items()
    }

    await sync_to_async(call_command)("refresh_tokens", "--all", verbosity=0)

    after = await connections()
    for role, token in after.items():
        assert token.refresh_token != before[role]
        assert sandbox.is_refresh_token_valid(token.refresh_token)


def test_the_admin_lists_filters_and_names_roles(admin_client, alice, bob, sandbox):
    make_token(alice, sandbox, login="alice")
    sandbox.add_user("alicebot")
    make_token(alice, sandbox, login="alicebot", role="bot", twitch_user_id="42")
    make_token(bob, sandbox, login="bob")

    listing = page(admin_client.get("/admin/accounts/twitchtoken/"))
    bots = page(admin_client.get("/admin/accounts/twitchtoken/?role=bot"))

    assert "Bot account" in listing
    assert "Twitch account" in listing
    assert "alicebot" in bots
    assert ">bob<" not in bots and "bob (" not in bots
    assert "?role=bot" in listing  # the filter's link


def test_revoking_the_bot_in_the_admin_names_its_role_in_the_audit_trail(
    admin_client, alice, sandbox
):
    make_token(alice, sandbox, login="alice")
    bot = make_token(alice, sandbox, login="alicebot", role="bot", twitch_user_id="42")

    admin_client.post(
        "/admin/accounts/twitchtoken/",
        {"action": "revoke_tokens", "_selected_action": [bot.pk], "post": "yes"},
    )

    bot.refresh_from_db()
    assert bot.status == TwitchToken.Status.REVOKED
    assert TwitchToken.objects.get(role="main").status == TwitchToken.Status.ACTIVE
    trail = page(admin_client.get("/admin/accounts/tokenevent/?role=bot"))
    assert "Bot account" in trail
    assert "alicebot" in trail


def test_the_bot_scopes_are_checked_like_the_others(settings):
    from accounts.checks import check_scopes

    settings.TWITCH_BOT_SCOPES = ["user:bot", "chat:raed"]

    ids = [message.id for message in check_scopes()]

    assert ids == ["accounts.E011"]
    assert "TWITCH_BOT_SCOPES" in check_scopes()[0].msg


@pytest.mark.parametrize(
    "extra",
    [
        ["editor"],
        {"Editor!": {"scopes": []}},
        {"bot": {"scopes": []}},
        {"editor": {"scopes": "channel:manage:broadcast"}},
        {"editor": {"scope": ["channel:manage:broadcast"]}},
    ],
)
def test_a_malformed_role_declaration_is_a_system_check_error(settings, extra):
    from accounts.checks import check_extra_roles

    settings.TWITCH_EXTRA_ROLES = extra

    assert [message.id for message in check_extra_roles()] == ["accounts.E013"]


async def test_disconnecting_a_role_nobody_holds_is_refused_without_echoing_it(
    alice_client,
):
    response = await alice_client.post("/twitch/disconnect/", {"role": "ceo"})

    assert response.status_code == 400
    assert "ceo" not in page(response)


async def test_a_callback_for_a_role_switched_off_meanwhile_connects_nothing(
    alice_client, sandbox, settings
):
    started = await alice_client.post("/twitch/connect/", {"role": "bot"})
    back = await approve_on_twitch(started["Location"], login="alicebot")
    settings.TWITCH_BOT_SCOPES = []

    response = await callback(alice_client, back)

    assert response.status_code == 400
    assert await connections() == {}
    assert sandbox.count("token") == 0  # the code was never exchanged


async def test_the_persons_own_account_as_their_bot_is_pointed_out(alice_client):
    await connect_twitch(alice_client, login="alicestreams")

    response = await connect_twitch(alice_client, login="alicestreams", role="bot")
    home = page(await alice_client.get("/"))

    assert response.status_code == 302
    assert "alicestreams is also your twitch account." in home
    assert "This is also your twitch account." in home


async def test_connecting_the_own_account_while_holding_a_bot_shows_twitchs_consent(
    alice_client,
):
    await connect_twitch(alice_client, login="alicebot", role="bot")

    query = await start_connect(alice_client)

    # The browser is most likely signed in to Twitch as the bot by now.
    assert query["force_verify"] == "true"


async def test_a_role_name_typo_in_site_code_is_a_clear_error(alice):
    with pytest.raises(ValueError, match="no Twitch connection role 'bto'"):
        async with twitch_for(alice, role="bto"):
            pass


def test_the_bots_optional_scopes_alone_are_a_warning(settings):
    from accounts.checks import check_roles_switched_on

    settings.TWITCH_BOT_SCOPES = []
    settings.TWITCH_BOT_OPTIONAL_SCOPES = ["user:bot"]

    assert [m.id for m in check_roles_switched_on()] == ["accounts.W016"]


def test_a_declared_role_without_scopes_is_a_warning(settings):
    from accounts.checks import check_roles_switched_on

    settings.TWITCH_EXTRA_ROLES = {"viewer": {"label": "Viewer account"}}

    assert [m.id for m in check_roles_switched_on()] == ["accounts.W016"]


def test_the_audit_trail_and_the_user_page_name_each_connections_role(
    admin_client, alice, sandbox
):
    make_token(alice, sandbox, login="alice")
    bot = make_token(alice, sandbox, login="alicebot", role="bot", twitch_user_id="42")
    event = TokenEvent.objects.create(
        token=bot, action="connect", outcome="succeeded", source="user"
    )

    audit = page(admin_client.get(f"/admin/accounts/tokenevent/{event.pk}/change/"))
    user_page = page(admin_client.get(f"/admin/auth/user/{alice.pk}/change/"))

    assert "Bot account" in audit
    assert user_page.index("Twitch account") < user_page.index("Bot account")
