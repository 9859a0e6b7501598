"""The home page and `/healthz`: what they show about the connection and the
site's health, and the headers every page sends."""

from __future__ import annotations

import time

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import AsyncClient

from tests.conftest import database_write_lock, make_token, page

pytestmark = pytest.mark.django_db(transaction=True)


# --- The home page --------------------------------------------------------------------


async def test_anonymous_home_goes_to_the_login_page():
    response = await AsyncClient().get("/")
    assert response.status_code == 302
    assert response["Location"] == "/accounts/login/?next=/"


def test_home_says_an_undecryptable_connection_cannot_be_used_now(
    client, alice, sandbox, settings
):
    from cryptography.fernet import Fernet

    make_token(alice, sandbox)
    settings.TOKEN_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
    client.force_login(alice)

    home = page(client.get("/"))

    assert "cannot be used right now" in home
    assert ">Active<" not in home


def test_home_shows_expiry_in_hours_and_minutes(client, alice: User, sandbox):
    make_token(alice, sandbox, expires_in=3 * 3600 + 12 * 60 + 30)
    client.force_login(alice)
    assert "in 3 h 12 min" in page(client.get("/"))


# --- Every page -----------------------------------------------------------------------


def test_pages_about_the_connection_are_never_cached(client, alice, sandbox):
    make_token(alice, sandbox)
    client.force_login(alice)
    for response in (client.get("/"), client.get("/twitch/callback/")):
        assert "no-store" in response["Cache-Control"]


def test_every_page_sends_a_content_security_policy(client, alice):
    client.force_login(alice)
    response = client.get("/")
    policy = response["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert "'unsafe-inline'" not in policy.split("style-src-attr")[0]
    nonce = policy.split("'nonce-")[1].split("'")[0]
    assert f'<style nonce="{nonce}">' in page(response)


# --- /healthz -------------------------------------------------------------------------


def test_healthz_answers_when_the_database_does(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "database": "ok",
        "keys": "ok",
        "tokens": "ok",
        "spool": "ok",
    }


def test_healthz_reports_tokens_no_key_can_decrypt(client, alice, sandbox, settings):
    from cryptography.fernet import Fernet

    make_token(alice, sandbox)
    settings.TOKEN_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]

    response = client.get("/healthz")

    assert response.status_code == 503
    assert response.json()["tokens"] == "undecryptable"


@pytest.mark.parametrize("keys", [[], ["not-a-key"]])
def test_healthz_names_missing_or_malformed_keys(client, settings, keys):
    settings.TOKEN_ENCRYPTION_KEYS = keys
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["keys"] == "misconfigured"


def test_healthz_is_reachable_over_plain_http_when_https_is_enforced(client, settings):
    settings.SECURE_SSL_REDIRECT = True
    assert client.get("/healthz").status_code == 200
    assert client.get("/").status_code == 301


def test_healthz_answers_head_as_it_answers_get(client, settings):
    fine = client.head("/healthz")
    assert (fine.status_code, fine["Content-Type"]) == (200, "application/json")

    settings.TOKEN_ENCRYPTION_KEYS = []
    assert client.head("/healthz").status_code == 503


def test_healthz_answers_within_seconds_while_the_token_table_is_locked(client):
    with database_write_lock("accounts_twitchtoken", readers_wait=True):
        started = time.monotonic()
        response = client.get("/healthz")
        elapsed = time.monotonic() - started

    # Not the 30 s of the statement timeout: 2 s, with room for a busy machine.
    assert elapsed < 5, f"{elapsed:.1f} s"
    if connection.vendor == "postgresql":
        assert response.status_code == 503
        assert response.json()["database"] == "unavailable"
    else:
        assert response.status_code == 200
