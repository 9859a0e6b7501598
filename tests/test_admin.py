"""The Twitch token admin: what staff see, never see, and may do (sandbox over HTTP)."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts import twitch
from accounts.models import TokenEvent, TwitchToken
from tests.conftest import make_token, page

pytestmark = pytest.mark.django_db

TOKENS = "/admin/accounts/twitchtoken/"
EVENTS = "/admin/accounts/tokenevent/"
ACTIVE = TwitchToken.Status.ACTIVE
NEEDS_RECONNECT = TwitchToken.Status.NEEDS_RECONNECT
REVOKED = TwitchToken.Status.REVOKED


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    monkeypatch.setattr(twitch.http, "RETRY_BASE_DELAY", 0.01)


@pytest.fixture
def make_user(django_user_model):
    def make(name: str) -> User:
        return django_user_model.objects.create_user(name, f"{name}@example.com", "pw")

    return make


@pytest.fixture
def staff_client(client, django_user_model):
    """A client signed in as staff holding only these accounts permissions."""

    def sign_in(*codenames: str):
        staff = django_user_model.objects.create_user("staff", password="pw")
        staff.is_staff = True
        staff.save()
        staff.user_permissions.set(
            Permission.objects.filter(
                content_type__app_label="accounts", codename__in=codenames
            )
        )
        client.force_login(staff)
        return client

    return sign_in


def change_page(token: TwitchToken) -> str:
    return f"{TOKENS}{token.pk}/change/"


def act(client, action: str, tokens: list[TwitchToken], **extra: str):
    """Run an action on the list, and follow to the page staff then read."""
    data = {"action": action, ACTION_CHECKBOX_NAME: [t.pk for t in tokens], **extra}
    return client.post(TOKENS, data, follow=True)


def listed(response) -> list[int]:
    return [token.pk for token in response.context["cl"].result_list]


def said(response) -> list[tuple[str, str]]:
    return [(m.level_tag, m.message) for m in response.context["messages"]]


def action_names(response) -> list[str]:
    form = response.context["action_form"]
    return [] if form is None else [n for n, _ in form.fields["action"].choices if n]


def assert_no_secret(response, secrets: list[str]) -> None:
    assert response.status_code == 200
    body = response.content.decode()
    for secret in secrets:
        # Not the secret, and not a fingerprint of it either.
        for part in (secret, secret[:8], secret[-8:]):
            assert part not in body, f"{response.request['PATH_INFO']} shows a secret"


# --- The list ----------------------------------------------------------------------


def test_the_list_shows_each_connection_with_status_scopes_and_expiry(
    admin_client, alice, bob, sandbox
):
    alices = make_token(
        alice, sandbox, scopes=["chat:read", "chat:edit"], expires_in=2 * 3600 + 30
    )
    bobs = make_token(
        bob, sandbox, status=NEEDS_RECONNECT, last_error="Invalid refresh token"
    )

    response = admin_client.get(TOKENS)

    assert listed(response) == [alices.pk, bobs.pk]
    text = page(response)
    assert f"alice ({alices.twitch_user_id})" in text
    assert "chat:read, chat:edit" in text
    assert "in 2 h 0 min" in text
    assert "Needs reconnect</span>" in text
    assert "Invalid refresh token" in text


def test_search_finds_a_token_by_username_email_twitch_login_or_twitch_id(
    admin_client, alice, bob, sandbox
):
    make_token(alice, sandbox)
    bobs = make_token(bob, sandbox, login="nightowl", twitch_user_id="4242")

    for term in ["bob", "bob@example.com", "nightowl", "4242"]:
        assert listed(admin_client.get(TOKENS, {"q": term})) == [bobs.pk], term


def test_the_scope_filter_matches_whole_scopes_only(
    admin_client, alice, bob, sandbox, settings
):
    settings.TWITCH_SCOPES = ["chat:read", "moderator:read:chatters"]
    editor = make_token(alice, sandbox, scopes=["user:edit", "chat:read"])
    follower = make_token(bob, sandbox, scopes=["user:edit:follows"])

    response = admin_client.get(TOKENS, {"scope": "user:edit"})

    assert listed(response) == [editor.pk]
    scope_filter = next(
        spec
        for spec in response.context["cl"].filter_specs
        if getattr(spec, "parameter_name", "") == "scope"
    )
    assert [value for value, _ in scope_filter.lookup_choices] == [
        "chat:read",
        "moderator:read:chatters",
        "user:edit",
        "user:edit:follows",
    ]
    assert listed(admin_client.get(TOKENS, {"scope": "user:edit:follows"})) == [
        follower.pk
    ]
    assert listed(admin_client.get(TOKENS, {"scope": "chat:read"})) == [editor.pk]


def test_the_status_and_expiry_filters(admin_client, make_user, sandbox):
    soon = make_token(make_user("soon"), sandbox, expires_in=30 * 60)
    gone = make_token(make_user("gone"), sandbox, expires_in=-60)
    make_token(make_user("later"), sandbox, expires_in=3 * 3600)
    revoked = make_token(make_user("revoked"), sandbox, expires_in=-60, status=REVOKED)

    assert listed(admin_client.get(TOKENS, {"expiry": "hour"})) == [soon.pk]
    assert listed(admin_client.get(TOKENS, {"expiry": "expired"})) == [gone.pk]
    assert listed(admin_client.get(TOKENS, {"status__exact": "revoked"})) == [
        revoked.pk
    ]


def test_the_list_costs_as_many_queries_for_30_tokens_as_for_3(
    admin_client, make_user, sandbox, django_assert_num_queries
):
    for n in range(3):
        make_token(make_user(f"viewer{n}"), sandbox)
    admin_client.get(TOKENS)  # sign-in and session bookkeeping out of the way
    with CaptureQueriesContext(connection) as three:
        assert len(listed(admin_client.get(TOKENS))) == 3

    for n in range(3, 30):
        make_token(make_user(f"viewer{n}"), sandbox)

    with django_assert_num_queries(len(three.captured_queries)):
        assert len(listed(admin_client.get(TOKENS))) == 30


# --- Secrets -----------------------------------------------------------------------


def test_no_admin_page_shows_a_secret_or_a_fingerprint_of_one(
    admin_client, alice, bob, sandbox
):
    token = make_token(alice, sandbox)
    make_token(bob, sandbox)
    act(admin_client, "refresh_tokens", [token])  # a rotated pair, and an event
    event = TokenEvent.objects.get()
    secrets = sandbox.tokens_issued()
    assert len(secrets) == 6

    assert_no_secret(admin_client.get(TOKENS), secrets)
    assert_no_secret(admin_client.get(change_page(token)), secrets)
    assert_no_secret(admin_client.get(f"/admin/auth/user/{alice.pk}/change/"), secrets)
    assert_no_secret(act(admin_client, "revoke_tokens", [token]), secrets)
    assert_no_secret(admin_client.get(EVENTS), secrets)
    assert_no_secret(admin_client.get(f"{EVENTS}{event.pk}/change/"), secrets)


def test_no_admin_page_even_loads_a_secret_from_the_database(
    admin_client, alice, sandbox
):
    token = make_token(alice, sandbox)
    act(admin_client, "validate_tokens", [token])
    event = TokenEvent.objects.get()

    with CaptureQueriesContext(connection) as queries:
        for url in [
            TOKENS,
            change_page(token),
            f"/admin/auth/user/{alice.pk}/change/",
            EVENTS,
            f"{EVENTS}{event.pk}/change/",
        ]:
            assert admin_client.get(url).status_code == 200

    for query in queries.captured_queries:
        assert "access_token" not in query["sql"]
        assert "refresh_token" not in query["sql"]


def test_tokens_cannot_be_added_or_edited_by_hand(admin_client, alice, sandbox):
    token = make_token(alice, sandbox)

    assert admin_client.get(f"{TOKENS}add/").status_code == 403
    text = page(admin_client.get(change_page(token)))
    assert "View Twitch token" in text
    assert 'name="_save"' not in text
    edited = admin_client.post(change_page(token), {"login": "mallory"})
    assert edited.status_code == 403
    token.refresh_from_db()
    assert token.login == "alice"


# --- Revoking ----------------------------------------------------------------------


def test_revoke_first_asks_for_confirmation_and_changes_nothing(
    admin_client, alice, bob, sandbox
):
    live = make_token(alice, sandbox)
    gone = make_token(bob, sandbox, status=REVOKED, access_token="", refresh_token="")

    response = act(admin_client, "revoke_tokens", [live, gone])

    assert response.redirect_chain == []
    text = page(response)
    assert "Are you sure you want to revoke the selected Twitch tokens?" in text
    assert f"{live}, user alice</li>" in text
    assert f"{gone}, user bob (already revoked: skipped)</li>" in text
    assert 'name="post" value="yes"' in text
    assert sandbox.count("revoke") == 0
    assert TwitchToken.objects.get(pk=live.pk).status == ACTIVE
    assert not TokenEvent.objects.exists()


def test_confirmed_revoke_tells_twitch_wipes_the_secrets_and_records_who(
    admin_client, admin_user, alice, bob, sandbox
):
    tokens = [make_token(alice, sandbox), make_token(bob, sandbox)]

    response = act(admin_client, "revoke_tokens", tokens, post="yes")

    assert response.redirect_chain == [(TOKENS, 302)]
    assert said(response) == [("success", "2 revoked.")]
    for token in tokens:
        assert not sandbox.is_access_token_valid(token.access_token)
        stored = TwitchToken.objects.get(pk=token.pk)
        assert (stored.status, stored.access_token, stored.refresh_token) == (
            REVOKED,
            "",
            "",
        )
        event = stored.events.get()
        assert (event.action, event.outcome, event.source, event.actor) == (
            "revoke",
            "succeeded",
            "staff",
            admin_user,
        )


def test_revoke_when_twitch_is_unreachable_still_forgets_the_token_and_warns(
    admin_client, alice, sandbox
):
    token = make_token(alice, sandbox)
    sandbox.fail("revoke", status=503)

    response = act(admin_client, "revoke_tokens", [token], post="yes")

    [(level, message)] = said(response)
    assert level == "warning"
    assert message.startswith("1 revoked locally but Twitch was unreachable.")
    assert "Twitch could not be told" in message
    stored = TwitchToken.objects.get(pk=token.pk)
    assert (stored.status, stored.refresh_token) == (REVOKED, "")
    assert stored.events.get().outcome == "unavailable"
    assert sandbox.is_access_token_valid(token.access_token)


def test_already_revoked_tokens_are_skipped_and_reported(
    admin_client, alice, bob, sandbox
):
    live = make_token(alice, sandbox)
    gone = make_token(bob, sandbox, status=REVOKED, access_token="", refresh_token="")

    response = act(admin_client, "revoke_tokens", [live, gone], post="yes")

    assert said(response) == [("success", "1 revoked, 1 already revoked.")]
    assert sandbox.count("revoke") == 1
    assert not gone.events.exists()


# --- Refreshing and validating -------------------------------------------------------


def test_refresh_renews_the_selected_tokens_whatever_their_expiry_and_skips_inactive(
    admin_client, admin_user, alice, bob, sandbox
):
    far_from_expiry = make_token(alice, sandbox)
    revoked = make_token(bob, sandbox, status=REVOKED)

    response = act(admin_client, "refresh_tokens", [far_from_expiry, revoked])

    assert said(response) == [
        ("success", "1 refreshed, 1 skipped (not active, or busy in another run).")
    ]
    stored = TwitchToken.objects.get(pk=far_from_expiry.pk)
    assert stored.refresh_token != far_from_expiry.refresh_token
    assert sandbox.is_refresh_token_valid(stored.refresh_token)
    assert sandbox.count("token", grant_type="refresh_token") == 1
    assert sandbox.count("validate") == 0
    event = stored.events.get()
    assert (event.action, event.outcome, event.source, event.actor) == (
        "refresh",
        "succeeded",
        "staff",
        admin_user,
    )


def test_validate_asks_twitch_about_the_selected_tokens_and_skips_inactive(
    admin_client, alice, bob, sandbox
):
    five_minutes_ago = timezone.now() - timedelta(minutes=5)
    recently_validated = make_token(alice, sandbox, last_validated_at=five_minutes_ago)
    needs_reconnect = make_token(bob, sandbox, status=NEEDS_RECONNECT)

    response = act(
        admin_client, "validate_tokens", [recently_validated, needs_reconnect]
    )

    assert said(response) == [
        ("success", "1 validated, 1 skipped (not active, or busy in another run).")
    ]
    assert sandbox.count("validate") == 1
    assert sandbox.count("token") == 0
    stored = TwitchToken.objects.get(pk=recently_validated.pk)
    assert stored.last_validated_at > five_minutes_ago
    assert stored.events.get().action == "validate"


@pytest.mark.parametrize(
    ("action", "fault", "message", "status"),
    [
        (
            "refresh_tokens",
            lambda sandbox: sandbox.disconnect_user("alice"),
            "1 rejected by Twitch (the user must reconnect).",
            NEEDS_RECONNECT,
        ),
        (
            "refresh_tokens",
            lambda sandbox: sandbox.fail("token", status=503),
            "1 failed (see Last error; try again later).",
            ACTIVE,
        ),
        (
            "validate_tokens",
            lambda sandbox: sandbox.fail("validate", status=503),
            "1 failed (see Last error; try again later).",
            ACTIVE,
        ),
    ],
    ids=["refresh-rejected", "refresh-unreachable", "validate-unreachable"],
)
def test_a_refresh_or_validation_that_goes_wrong_is_reported_as_a_warning(
    admin_client, alice, sandbox, action, fault, message, status
):
    token = make_token(alice, sandbox)
    fault(sandbox)

    response = act(admin_client, action, [token])

    assert said(response) == [("warning", message)]
    stored = TwitchToken.objects.get(pk=token.pk)
    assert stored.status == status
    assert stored.last_error


@pytest.mark.parametrize(
    "action", ["revoke_tokens", "refresh_tokens", "validate_tokens"]
)
def test_a_hundred_tokens_are_handled_concurrently(
    admin_client, make_user, sandbox, action
):
    tokens = [make_token(make_user(f"viewer{n}"), sandbox) for n in range(100)]
    sandbox.set_latency(0.1)

    started = time.monotonic()
    response = act(admin_client, action, tokens, post="yes")
    elapsed = time.monotonic() - started

    [(level, message)] = said(response)
    assert (level, message.split()[0]) == ("success", "100")
    assert elapsed < 5, f"{elapsed:.1f} s: one at a time takes 10"


# --- Permissions -------------------------------------------------------------------


def test_view_only_staff_see_the_list_but_no_actions(staff_client, alice, sandbox):
    token = make_token(alice, sandbox)
    client = staff_client("view_twitchtoken")

    response = client.get(TOKENS)

    assert listed(response) == [token.pk]
    assert action_names(response) == []
    assert 'name="action"' not in page(response)
    act(client, "refresh_tokens", [token])
    act(client, "revoke_tokens", [token], post="yes")
    assert sandbox.requests == []


def test_the_change_permission_allows_refresh_and_validate_but_not_revoke(
    staff_client, alice, sandbox
):
    token = make_token(alice, sandbox)
    client = staff_client("change_twitchtoken")

    assert action_names(client.get(TOKENS)) == ["refresh_tokens", "validate_tokens"]
    refused = act(client, "revoke_tokens", [token], post="yes")
    assert said(refused) == [("warning", "No action selected.")]
    assert sandbox.count("revoke") == 0
    assert TwitchToken.objects.get(pk=token.pk).status == ACTIVE
    assert said(act(client, "validate_tokens", [token])) == [
        ("success", "1 validated.")
    ]


def test_the_revoke_permission_allows_revoking(staff_client, alice, sandbox):
    token = make_token(alice, sandbox)
    client = staff_client("view_twitchtoken", "revoke_twitchtoken")

    assert action_names(client.get(TOKENS)) == ["revoke_tokens"]
    assert said(act(client, "revoke_tokens", [token], post="yes")) == [
        ("success", "1 revoked.")
    ]
    assert TwitchToken.objects.get(pk=token.pk).status == REVOKED


# --- The audit trail and the user's page ---------------------------------------------


def test_the_token_page_shows_its_audit_trail_newest_first_to_view_only_staff(
    admin_client, staff_client, alice, sandbox
):
    token = make_token(alice, sandbox)
    act(admin_client, "validate_tokens", [token])
    act(admin_client, "refresh_tokens", [token])

    response = staff_client("view_twitchtoken").get(change_page(token))

    [trail] = response.context["inline_admin_formsets"]
    assert [(row.original.action, row.original.source) for row in trail] == [
        ("refresh", "staff"),
        ("validate", "staff"),
    ]
    assert not trail.has_add_permission
    assert not trail.has_change_permission
    assert not trail.has_delete_permission


def test_the_token_page_shows_the_latest_events_and_links_to_all(
    admin_client, alice, sandbox
):
    token = make_token(alice, sandbox)
    start = timezone.now() - timedelta(days=3)
    TokenEvent.objects.bulk_create(
        TokenEvent(
            token=token,
            action="validate",
            outcome="succeeded",
            source="command",
            created_at=start + timedelta(hours=hour),
        )
        for hour in range(60)
    )

    response = admin_client.get(change_page(token))

    [trail] = response.context["inline_admin_formsets"]
    shown = [row.original.created_at for row in trail]
    assert len(shown) == 50
    assert shown[0] == start + timedelta(hours=59)
    link = f"{EVENTS}?token__id__exact={token.pk}"
    assert f'<a href="{link}">60 events</a>' in page(response)
    assert admin_client.get(link).context["cl"].result_count == 60


def test_the_event_list_filters_by_outcome_and_finds_events_by_twitch_login(
    admin_client, alice, bob, sandbox
):
    alices = make_token(alice, sandbox)
    bobs = make_token(bob, sandbox)
    fine = TokenEvent.objects.create(
        token=alices, action="validate", outcome="succeeded", source="command"
    )
    failed = TokenEvent.objects.create(
        token=bobs, action="refresh", outcome="unavailable", source="command"
    )

    assert listed(admin_client.get(EVENTS, {"outcome__exact": "unavailable"})) == [
        failed.pk
    ]
    assert listed(admin_client.get(EVENTS, {"q": "alice"})) == [fine.pk]
    assert admin_client.get(f"{EVENTS}add/").status_code == 403
    assert admin_client.post(f"{EVENTS}{fine.pk}/change/", {}).status_code == 403


def test_the_user_page_shows_their_twitch_connection_read_only(
    admin_client, alice, bob, sandbox
):
    token = make_token(alice, sandbox, login="alice_tv")

    text = page(admin_client.get(f"/admin/auth/user/{alice.pk}/change/"))

    assert "Twitch connection" in text
    assert "alice_tv" in text
    assert token.twitch_user_id in text
    assert 'name="twitch_tokens-0-login"' not in text
    unconnected = page(admin_client.get(f"/admin/auth/user/{bob.pk}/change/"))
    assert 'name="twitch_tokens-TOTAL_FORMS" value="0"' in unconnected


def test_a_user_whose_token_is_live_cannot_be_deleted_until_it_is_revoked(
    admin_client, alice, sandbox
):
    token = make_token(alice, sandbox)

    refused = admin_client.post(f"/admin/auth/user/{alice.pk}/delete/", {"post": "yes"})
    assert refused.status_code == 403
    assert TwitchToken.objects.filter(pk=token.pk).exists()

    act(admin_client, "revoke_tokens", [token], post="yes")
    response = admin_client.post(
        f"/admin/auth/user/{alice.pk}/delete/", {"post": "yes"}
    )

    assert response.status_code == 302
    assert not TwitchToken.objects.exists()
    assert not TokenEvent.objects.exists()
    assert not sandbox.is_access_token_valid(token.access_token)


def test_staff_cannot_delete_a_live_token_row(admin_client, alice, sandbox):
    token = make_token(alice, sandbox)
    response = admin_client.get(f"/admin/accounts/twitchtoken/{token.pk}/delete/")
    assert response.status_code == 403
    changelist = admin_client.get("/admin/accounts/twitchtoken/")
    assert "delete_selected" not in action_names(changelist)


def test_a_malformed_refresh_answer_is_a_warning_not_a_server_error(
    admin_client, alice, sandbox
):
    token = make_token(alice, sandbox)
    sandbox.fail("token", status=200, body={"access_token": None}, times=3)

    response = act(admin_client, "refresh_tokens", [token])

    assert response.status_code == 200
    assert said(response) == [
        ("warning", "1 failed (see Last error; try again later).")
    ]
    stored = TwitchToken.objects.get(pk=token.pk)
    assert stored.refresh_token == token.refresh_token
    assert stored.claimed_until is None
    assert sandbox.is_refresh_token_valid(stored.refresh_token)


# --- A slow Twitch, a database that refuses -------------------------------------------


def test_a_slow_twitch_bounds_the_refresh_action_and_leaves_the_rest_to_cron(
    admin_client, make_user, sandbox, monkeypatch
):
    import aiohttp

    from accounts import admin as token_admin

    monkeypatch.setattr(twitch.http, "TIMEOUT", aiohttp.ClientTimeout(total=0.5))
    monkeypatch.setattr(token_admin, "ACTION_START_BUDGET", 0.2)
    tokens = [make_token(make_user(f"viewer{n}"), sandbox) for n in range(30)]
    sandbox.set_latency(10.0, endpoint="token")  # answers no attempt waits for

    started = time.monotonic()
    response = act(admin_client, "refresh_tokens", tokens)
    elapsed = time.monotonic() - started

    [(level, message)] = said(response)
    assert level == "warning"
    assert "20 done, 10 left for the next cron run" in message
    # Starts within 0.2 s, one 0.5 s attempt each: well under the 10 s that waiting
    # for Twitch's answers would take.
    assert elapsed < 5, f"{elapsed:.1f} s"
    assert not TwitchToken.objects.filter(claimed_until__isnull=False).exists()


def test_a_hung_twitch_bounds_the_revoke_action_which_says_what_is_left(
    admin_client, make_user, sandbox, monkeypatch
):
    import aiohttp

    from accounts import admin as token_admin

    monkeypatch.setattr(twitch.http, "TIMEOUT", aiohttp.ClientTimeout(total=0.5))
    monkeypatch.setattr(token_admin, "ACTION_START_BUDGET", 0.2)
    tokens = [make_token(make_user(f"viewer{n}"), sandbox) for n in range(30)]
    sandbox.hang("revoke", times=20)  # the first twenty started: 0.5 s each

    started = time.monotonic()
    response = act(admin_client, "revoke_tokens", tokens, post="yes")
    elapsed = time.monotonic() - started

    [(level, message)] = said(response)
    assert level == "warning"
    assert message.startswith("20 revoked locally but Twitch was unreachable.")
    assert message.endswith(
        " 10 not revoked yet (Twitch is slow just now) and still connected: select "
        "them again and run the action to continue (those already revoked are "
        "skipped)."
    )
    # Starts within 0.2 s, one 0.5 s call each: not the 1.5 s of all thirty, nor
    # the 8 s a hung Twitch holds each call in production.
    assert elapsed < 5, f"{elapsed:.1f} s"
    left = TwitchToken.objects.filter(status=ACTIVE)
    assert left.count() == 10
    assert not TokenEvent.objects.filter(token__in=left).exists()
    assert all(sandbox.is_access_token_valid(token.access_token) for token in left)

    again = act(admin_client, "revoke_tokens", tokens, post="yes")

    assert said(again) == [("success", "10 revoked, 20 already revoked.")]
    assert not TwitchToken.objects.filter(status=ACTIVE).exists()


def test_a_database_that_refuses_writes_is_an_error_message_not_a_500(
    admin_client, alice, sandbox
):
    from tests.conftest import database_refuses_token_writes

    token = make_token(alice, sandbox)
    with database_refuses_token_writes():
        response = act(admin_client, "refresh_tokens", [token])

    assert response.status_code == 200
    [(level, message)] = said(response)
    assert level == "error" and "database refused writes" in message


def test_validate_leaves_refreshes_to_cron_once_its_budget_is_spent(
    admin_client, make_user, sandbox, monkeypatch
):
    from accounts import admin as token_admin

    monkeypatch.setattr(token_admin, "ACTION_START_BUDGET", 0.05)
    tokens = [make_token(make_user(f"viewer{n}"), sandbox) for n in range(3)]
    sandbox.expire_access_tokens()
    sandbox.set_latency(0.1, endpoint="validate")  # answers after the budget

    response = act(admin_client, "validate_tokens", tokens)

    assert sandbox.count("validate") == 3
    assert sandbox.count("token", grant_type="refresh_token") == 0
    [(level, message)] = said(response)
    assert level == "warning" and message.startswith("3 failed")
    assert "next run refreshes it" in TwitchToken.objects.first().last_error
    assert not TwitchToken.objects.filter(claimed_until__isnull=False).exists()
