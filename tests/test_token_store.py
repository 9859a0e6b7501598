"""Tokens are credentials: encrypted at rest, never in a repr, rotatable keys."""

from __future__ import annotations

import io
import os
import subprocess

import pytest
from cryptography.fernet import Fernet
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from accounts.models import TwitchToken
from tests.conftest import connect_twitch, make_token, page

pytestmark = pytest.mark.django_db(transaction=True)


def raw_rows() -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM accounts_twitchtoken")
        return cursor.fetchall()


async def test_the_database_holds_none_of_the_tokens_the_sandbox_issued(
    alice_client, sandbox
):
    await connect_twitch(alice_client, login="alicestreams")
    await connect_twitch(alice_client, login="alicestreams")  # a second pair
    issued = sandbox.tokens_issued()
    assert len(issued) == 4

    from asgiref.sync import sync_to_async

    stored = repr(await sync_to_async(raw_rows)())
    assert not [token for token in issued if token in stored]
    if connection.vendor == "sqlite":
        # Also the file itself, WAL included: no page keeps a plaintext copy. Read
        # from another process: closing a file descriptor of the database here
        # would drop this process's SQLite locks (POSIX locks are per process).
        path = connection.settings_dict["NAME"]
        blob = subprocess.run(
            ["cat", path, *[p for p in (f"{path}-wal",) if os.path.exists(p)]],
            capture_output=True,
            check=True,
        ).stdout
        assert blob and not [t for t in issued if t.encode() in blob]


def test_repr_and_str_never_show_a_secret(alice, sandbox):
    token = make_token(alice, sandbox)
    for text in (repr(token), str(token)):
        assert token.access_token not in text
        assert token.refresh_token not in text


def test_rotate_token_keys_reencrypts_with_the_first_key(alice, sandbox, settings):
    old_key = settings.TOKEN_ENCRYPTION_KEYS[0]
    token = make_token(alice, sandbox)
    new_key = Fernet.generate_key().decode()
    settings.TOKEN_ENCRYPTION_KEYS = [new_key, old_key]

    call_command("rotate_token_keys", stdout=io.StringIO())

    settings.TOKEN_ENCRYPTION_KEYS = [new_key]
    reloaded = TwitchToken.objects.get(pk=token.pk)
    assert reloaded.refresh_token == token.refresh_token
    assert reloaded.access_token == token.access_token


def test_rotate_token_keys_dry_run_counts_and_changes_nothing(
    alice, bob, sandbox, settings
):
    make_token(alice, sandbox)
    make_token(bob, sandbox)
    before = raw_rows()
    settings.TOKEN_ENCRYPTION_KEYS = [
        Fernet.generate_key().decode(),
        *settings.TOKEN_ENCRYPTION_KEYS,
    ]
    out = io.StringIO()

    call_command("rotate_token_keys", "--dry-run", stdout=out)

    assert out.getvalue().strip() == "would re-encrypt 2 token(s) with the first key"
    assert raw_rows() == before


def test_a_token_encrypted_with_a_removed_key_reads_as_absent_and_is_kept(
    alice, sandbox, settings
):
    token = make_token(alice, sandbox)
    old_key = settings.TOKEN_ENCRYPTION_KEYS[0]
    settings.TOKEN_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]

    unreadable = TwitchToken.objects.get(pk=token.pk)
    assert unreadable.refresh_token == "" and unreadable.is_undecryptable
    assert not unreadable.is_usable
    unreadable.save()  # writes the ciphertext back untouched
    with pytest.raises(CommandError, match="restore the key") as failed:
        call_command("rotate_token_keys", stdout=io.StringIO())
    assert failed.value.returncode == 1

    settings.TOKEN_ENCRYPTION_KEYS = [old_key]
    assert TwitchToken.objects.get(pk=token.pk).refresh_token == token.refresh_token


def test_pages_still_render_when_a_token_cannot_be_decrypted(
    client, alice, sandbox, settings
):
    make_token(alice, sandbox)
    settings.TOKEN_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
    client.force_login(alice)

    assert client.get("/").status_code == 200
    response = client.post("/twitch/disconnect/", follow=True)

    assert response.status_code == 200
    assert "Twitch could not be reached" in page(response)
    assert TwitchToken.objects.get().status == TwitchToken.Status.REVOKED
