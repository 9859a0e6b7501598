"""Sign-in throttling: five wrong passwords for an account from an address, then 429."""

from __future__ import annotations

from datetime import timedelta

import pytest
import time_machine
from django.test import Client
from django.utils import timezone

from tests.conftest import page

pytestmark = pytest.mark.django_db

LOGIN_PAGES = ["/accounts/login/", "/admin/login/"]


def sign_in(client: Client, url: str, password: str, username: str = "alice"):
    return client.post(url, {"username": username, "password": password})


def guess_wrong(client: Client, url: str, times: int = 5) -> None:
    for attempt in range(1, times + 1):
        # The fifth failure is answered with the lockout page at once.
        expected = 429 if attempt >= 5 else 200
        assert sign_in(client, url, "wrong").status_code == expected


@pytest.fixture
def staff_alice(alice):
    alice.is_staff = True
    alice.save()
    return alice


@pytest.mark.parametrize("url", LOGIN_PAGES)
def test_five_wrong_passwords_lock_the_account_for_that_address(
    client, staff_alice, url
):
    guess_wrong(client, url)

    response = sign_in(client, url, "pw")  # even the right one, now

    assert response.status_code == 429
    assert 0 < int(response["Retry-After"]) <= 15 * 60
    assert "Too many failed sign-in attempts" in page(response)
    assert "_auth_user_id" not in client.session


@pytest.mark.parametrize("url", LOGIN_PAGES)
def test_the_lock_ends_when_the_window_passes(client, staff_alice, url):
    guess_wrong(client, url)

    with time_machine.travel(timezone.now() + timedelta(minutes=16)):
        response = sign_in(client, url, "pw")

    assert response.status_code == 302
    assert "_auth_user_id" in client.session


def test_the_lock_holds_on_both_sign_in_pages(client, staff_alice):
    guess_wrong(client, "/accounts/login/")
    assert sign_in(client, "/admin/login/", "pw").status_code == 429


def test_a_success_resets_the_count(client, alice):
    guess_wrong(client, "/accounts/login/", times=4)
    assert sign_in(client, "/accounts/login/", "pw").status_code == 302
    client.logout()

    guess_wrong(client, "/accounts/login/", times=4)
    assert sign_in(client, "/accounts/login/", "pw").status_code == 302


def test_other_accounts_and_other_addresses_are_not_locked(client, alice, bob):
    guess_wrong(client, "/accounts/login/")

    assert sign_in(client, "/accounts/login/", "pw", username="bob").status_code == 302
    elsewhere = Client(REMOTE_ADDR="203.0.113.7")
    assert sign_in(elsewhere, "/accounts/login/", "pw").status_code == 302


def test_a_forwarded_for_header_does_not_buy_a_fresh_address(client, alice):
    for n in range(5):
        spoofing = Client(HTTP_X_FORWARDED_FOR=f"198.51.100.{n}")
        sign_in(spoofing, "/accounts/login/", "wrong")

    assert sign_in(client, "/accounts/login/", "pw").status_code == 429


def test_staff_see_and_clear_lockouts_in_the_admin(admin_client, client, alice):
    guess_wrong(client, "/accounts/login/")

    listing = admin_client.get("/admin/axes/accessattempt/")
    assert listing.status_code == 200
    assert "alice" in page(listing)
    from axes.models import AccessAttempt

    attempt = AccessAttempt.objects.get(username="alice")
    admin_client.post(
        f"/admin/axes/accessattempt/{attempt.pk}/delete/", {"post": "yes"}
    )

    assert sign_in(client, "/accounts/login/", "pw").status_code == 302


def test_no_password_is_stored_with_the_attempts(client, alice):
    from axes.models import AccessAttempt

    sign_in(client, "/accounts/login/", "hunter2-secret")
    attempt = AccessAttempt.objects.get(username="alice")
    assert "hunter2-secret" not in str(attempt.post_data) + str(attempt.get_data)


@pytest.mark.parametrize("url", LOGIN_PAGES)
def test_a_username_longer_than_any_account_s_is_refused_by_the_form(client, url):
    from axes.models import AccessAttempt

    response = sign_in(client, url, "wrong", username="a" * 256)

    # A page that says what is wrong, not a 500 from django-axes recording a
    # failure for a name its column (255 characters) cannot hold.
    assert response.status_code == 200
    assert "at most 150 characters (it has 256)" in page(response)
    assert not AccessAttempt.objects.exists()
