"""Sign in with Twitch, for accounts already linked: OpenID Connect against the
sandbox over real HTTP. Nobody is ever created, staff are refused unless allowed,
a locked-out account stays locked out."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.signals import user_logged_in
from django.test import AsyncClient

from accounts.background import finish_background_work
from accounts.models import TwitchToken
from tests.conftest import approve_on_twitch, callback, listening, make_token, page

pytestmark = pytest.mark.django_db(transaction=True)


async def sign_in_with_twitch(client: AsyncClient, *, login: str, next_url: str = ""):
    """Press Sign in with Twitch on the login page, approve on Twitch, come back."""
    started = await client.post("/twitch/signin/", {"next": next_url})
    assert started.status_code == 302, started.content
    back = await approve_on_twitch(started["Location"], login=login)
    return await callback(client, back)


async def linked(user, sandbox, *, login: str, **fields) -> TwitchToken:
    """`user`'s connection to the Twitch account `login`."""
    twitch_user_id = sandbox.add_user(login).id
    return await sync_to_async(make_token)(
        user, sandbox, login=login, twitch_user_id=twitch_user_id, **fields
    )


async def signed_in_as(client: AsyncClient) -> str | None:
    response = await client.get("/")
    return None if response.status_code != 200 else response.context["user"].username


async def test_the_login_page_offers_sign_in_with_twitch():
    text = page(await AsyncClient().get("/accounts/login/"))

    assert "Sign in with Twitch" in text
    assert 'action="/twitch/signin/"' in text


async def test_sign_in_asks_twitch_for_openid_only_with_a_nonce():
    started = await AsyncClient().post("/twitch/signin/")

    query = parse_qs(urlsplit(started["Location"]).query)
    assert query["scope"] == ["openid"]
    assert len(query["nonce"][0]) >= 43
    assert "claims" not in query


async def test_a_linked_person_signs_in_with_twitch(alice, sandbox):
    await linked(alice, sandbox, login="alicestreams")
    client = AsyncClient()
    await client.get("/accounts/login/")  # a session, as a browser has
    before = client.cookies["sessionid"].value if "sessionid" in client.cookies else ""
    heard = []

    def receiver(sender, user, request, **kwargs):
        heard.append(user.username)

    with listening(user_logged_in, receiver):
        response = await sign_in_with_twitch(
            client, login="alicestreams", next_url="/?tab=bot"
        )

    assert response.status_code == 302
    assert response["Location"] == "/?tab=bot"
    assert await signed_in_as(client) == "alice"
    assert heard == ["alice"]
    assert client.cookies["sessionid"].value != before  # the session key is cycled


async def test_the_sign_in_grant_is_ended_at_twitch_once_used(alice, sandbox):
    await linked(alice, sandbox, login="alicestreams")

    await sign_in_with_twitch(AsyncClient(), login="alicestreams")
    assert len(sandbox.live_tokens("alicestreams").access) <= 1
    await finish_background_work()

    assert sandbox.live_tokens("alicestreams").access == []
    assert sandbox.count("validate") == 0  # one round trip: the code exchange


async def test_an_unlinked_twitch_account_is_told_so_and_nobody_is_created(
    django_user_model, sandbox
):
    client = AsyncClient()

    response = await sign_in_with_twitch(client, login="stranger")

    assert response.status_code == 403
    assert "not linked to an account on this site" in page(response)
    assert await signed_in_as(client) is None
    assert await django_user_model.objects.acount() == 0


async def test_only_a_persons_own_account_signs_them_in_not_their_bot(
    alice, sandbox, settings
):
    settings.TWITCH_BOT_SCOPES = ["user:bot"]
    await linked(alice, sandbox, login="alicebot", role="bot")

    response = await sign_in_with_twitch(AsyncClient(), login="alicebot")

    assert response.status_code == 403


async def test_a_revoked_connection_signs_nobody_in(alice, sandbox):
    await linked(alice, sandbox, login="alicestreams", status="revoked")

    response = await sign_in_with_twitch(AsyncClient(), login="alicestreams")

    assert response.status_code == 403


@pytest.mark.parametrize("kind", ["is_staff", "is_superuser"])
async def test_staff_are_refused_unless_the_site_allows_it(
    django_user_model, sandbox, settings, kind
):
    staff = await django_user_model.objects.acreate_user("sam", password="pw")
    setattr(staff, kind, True)
    await staff.asave()
    await linked(staff, sandbox, login="samstreams")
    client = AsyncClient()

    refused = await sign_in_with_twitch(client, login="samstreams")
    settings.TWITCH_SIGNIN_STAFF = True
    allowed = await sign_in_with_twitch(client, login="samstreams")

    assert refused.status_code == 403
    # The same sentence as for any refusal: nothing said about the account.
    assert "This account cannot sign in with Twitch" in page(refused)
    assert allowed.status_code == 302
    assert await signed_in_as(client) == "sam"


async def test_a_disabled_account_is_refused(alice, sandbox):
    alice.is_active = False
    await alice.asave()
    await linked(alice, sandbox, login="alicestreams")

    response = await sign_in_with_twitch(AsyncClient(), login="alicestreams")

    assert response.status_code == 403
    assert "This account cannot sign in with Twitch" in page(response)


async def test_a_locked_out_account_stays_locked_out(alice, sandbox):
    await linked(alice, sandbox, login="alicestreams")
    client = AsyncClient()
    for _ in range(5):
        await client.post(
            "/accounts/login/", {"username": "alice", "password": "wrong"}
        )

    response = await sign_in_with_twitch(client, login="alicestreams")

    assert response.status_code == 429
    assert await signed_in_as(client) is None


@pytest.mark.parametrize("kind", ["bad_signature", "wrong_audience", "expired"])
async def test_a_forged_id_token_signs_nobody_in(alice, sandbox, kind):
    await linked(alice, sandbox, login="alicestreams")
    sandbox.forge_id_token(kind)
    client = AsyncClient()

    response = await sign_in_with_twitch(client, login="alicestreams")

    assert response.status_code == 502
    assert await signed_in_as(client) is None


async def test_a_sign_in_state_cannot_be_replayed(alice, sandbox):
    await linked(alice, sandbox, login="alicestreams")
    client = AsyncClient()
    started = await client.post("/twitch/signin/")
    back = await approve_on_twitch(started["Location"], login="alicestreams")
    await callback(client, back)
    await client.post("/accounts/logout/")

    again = await callback(client, back)

    assert again.status_code == 400
    assert await signed_in_as(client) is None


async def test_sign_in_with_twitch_is_off_without_openid_connect(settings):
    settings.TWITCH_OPENID_CONNECT = False

    login_page = page(await AsyncClient().get("/accounts/login/"))
    response = await AsyncClient().post("/twitch/signin/")

    assert "Sign in with Twitch" not in login_page
    assert response.status_code == 404


async def test_the_session_key_is_cycled_by_the_sign_in(alice, sandbox):
    await linked(alice, sandbox, login="alicestreams")
    client = AsyncClient()
    started = await client.post("/twitch/signin/")
    before = client.cookies["sessionid"].value  # the session holding the state
    back = await approve_on_twitch(started["Location"], login="alicestreams")

    await callback(client, back)

    assert client.cookies["sessionid"].value != before


async def test_sign_in_with_twitch_needs_the_csrf_token():
    response = await AsyncClient(enforce_csrf_checks=True).post("/twitch/signin/")

    assert response.status_code == 403


async def test_a_code_from_another_flow_signs_nobody_in(alice, sandbox):
    await linked(alice, sandbox, login="alicestreams")
    sandbox.forge_id_token("wrong_nonce")
    client = AsyncClient()

    response = await sign_in_with_twitch(client, login="alicestreams")

    assert response.status_code == 400
    assert await signed_in_as(client) is None


@pytest.mark.parametrize("why", ["not linked", "staff"])
async def test_a_refused_sign_in_ends_its_grant_at_twitch(
    django_user_model, sandbox, why
):
    if why == "staff":
        staff = await django_user_model.objects.acreate_user("sam", is_staff=True)
        await linked(staff, sandbox, login="someone")

    await sign_in_with_twitch(AsyncClient(), login="someone")
    await finish_background_work()

    assert sandbox.live_tokens("someone").access == []


async def test_a_connection_twitch_no_longer_accepts_signs_nobody_in(alice, sandbox):
    await linked(alice, sandbox, login="alicestreams", status="needs_reconnect")

    response = await sign_in_with_twitch(AsyncClient(), login="alicestreams")

    assert response.status_code == 403


async def test_promotion_to_staff_ends_a_session_begun_with_twitch(alice, sandbox):
    await linked(alice, sandbox, login="alicestreams")
    client = AsyncClient()
    await sign_in_with_twitch(client, login="alicestreams")
    assert await signed_in_as(client) == "alice"

    alice.is_staff = True
    await alice.asave()

    assert await signed_in_as(client) is None
    assert (await client.get("/admin/")).status_code == 302  # to the login page


async def test_ending_the_twitch_link_ends_a_session_begun_with_it(alice, sandbox):
    token = await linked(alice, sandbox, login="alicestreams")
    client = AsyncClient()
    await sign_in_with_twitch(client, login="alicestreams")

    token.status = TwitchToken.Status.REVOKED
    await token.asave()

    assert await signed_in_as(client) is None


async def test_a_password_session_does_not_depend_on_a_twitch_link(alice, sandbox):
    token = await linked(alice, sandbox, login="alicestreams")
    client = AsyncClient()
    await client.post("/accounts/login/", {"username": "alice", "password": "pw"})

    token.status = TwitchToken.Status.REVOKED
    await token.asave()

    assert await signed_in_as(client) == "alice"


async def test_a_twitch_sign_in_keeps_failed_passwords_counted(alice, sandbox):
    from axes.models import AccessAttempt

    await linked(alice, sandbox, login="alicestreams")
    client = AsyncClient()
    for _ in range(4):
        await client.post("/accounts/login/", {"username": "alice", "password": "x"})

    await sign_in_with_twitch(client, login="alicestreams")
    await client.post("/accounts/logout/")
    fifth = await client.post(
        "/accounts/login/", {"username": "alice", "password": "x"}
    )

    # Holding the Twitch account gave no fresh guesses: the fifth locks it.
    assert fifth.status_code == 429
    assert await AccessAttempt.objects.filter(username="alice").aexists()


async def test_a_password_sign_in_still_clears_failed_passwords(alice):
    # The other half of KeepPasswordFailures' guard: axes still resets through
    # the method it overrides.
    from axes.models import AccessAttempt

    client = AsyncClient()
    await client.post("/accounts/login/", {"username": "alice", "password": "x"})
    assert await AccessAttempt.objects.filter(username="alice").aexists()

    await client.post("/accounts/login/", {"username": "alice", "password": "pw"})

    assert not await AccessAttempt.objects.filter(username="alice").aexists()


async def test_a_sign_in_finished_after_openid_connect_was_turned_off_is_refused(
    alice, sandbox, settings
):
    await linked(alice, sandbox, login="alicestreams")
    client = AsyncClient()
    started = await client.post("/twitch/signin/")
    back = await approve_on_twitch(started["Location"], login="alicestreams")
    settings.TWITCH_OPENID_CONNECT = False

    response = await callback(client, back)

    assert response.status_code == 400
    assert await signed_in_as(client) is None
