"""The spool's files as an operator finds them: lines no key reads are kept and
reported, stray files are skipped, loose permissions tightened, short writes caught."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
import textwrap

import pytest
from cryptography.fernet import Fernet
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError

from accounts import checks
from accounts.models import TokenEvent, TwitchToken
from accounts.tokens import spool
from tests.conftest import BASE_DIR, make_token

pytestmark = pytest.mark.django_db

GONE_KEY = Fernet.generate_key().decode()


def refresh_tokens(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("refresh_tokens", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def abandon_a_rotated_pair(token: TwitchToken, sandbox) -> dict[str, str]:
    """What a run that died leaves: the pair Twitch issued for `token`, spooled."""
    fresh = sandbox.issue_tokens(login=token.login, scopes=token.scopes)
    run = spool.Spool()
    run.add(
        spool.Entry(
            token_pk=token.pk,
            replaced=spool.digest(token.refresh_token),
            access_token=fresh["access_token"],
            refresh_token=fresh["refresh_token"],
            expires_in=14400,
            scopes=token.scopes,
            obtained_at=1.0,
            lease="2026-11-29T12:00:00+00:00",
        )
    )
    run.close(keep=True)
    return fresh


def abandon_under_a_dropped_key(token: TwitchToken, sandbox, settings) -> dict:
    """A dead run's spooled pair, written under a key the site no longer has."""
    keys = list(settings.TOKEN_ENCRYPTION_KEYS)
    settings.TOKEN_ENCRYPTION_KEYS = [GONE_KEY, *keys]
    fresh = abandon_a_rotated_pair(token, sandbox)
    settings.TOKEN_ENCRYPTION_KEYS = keys
    return fresh


def spool_files(suffix: str) -> list:
    return list(settings.TOKEN_SPOOL_DIR.glob(f"*{suffix}"))


def test_pairs_no_key_reads_are_kept_reported_and_stored_once_a_key_reads_them(
    alice, sandbox, settings, client
):
    token = make_token(alice, sandbox)
    # The run that died wrote its spool under a key dropped since.
    fresh = abandon_under_a_dropped_key(token, sandbox, settings)
    keys = list(settings.TOKEN_ENCRYPTION_KEYS)

    with pytest.raises(CommandError) as failed:
        _, errors = refresh_tokens("--no-validate")
    assert failed.value.returncode == 1

    # Set aside, not deleted, not replayed; the row keeps what it had.
    assert not spool_files(spool.SUFFIX)
    assert len(spool_files(spool.UNREADABLE_SUFFIX)) == 1
    assert spool.unreadable_count() == 1
    token.refresh_from_db()
    assert token.refresh_token != fresh["refresh_token"]
    # Reported everywhere an operator looks.
    health = client.get("/healthz")
    assert health.status_code == 503 and health.json()["spool"] == "undecryptable"
    assert [w.id for w in checks.check_spool_readable()] == ["accounts.W012"]

    # The key comes back: the next run stores the pair and the file goes.
    settings.TOKEN_ENCRYPTION_KEYS = [*keys, GONE_KEY]
    refresh_tokens("--no-validate")
    token.refresh_from_db()
    assert token.refresh_token == fresh["refresh_token"]
    assert not spool_files(spool.UNREADABLE_SUFFIX)
    assert spool.unreadable_count() == 0
    assert checks.check_spool_readable() == []
    assert TokenEvent.objects.filter(detail__contains="spool").count() == 1


def test_the_command_tells_the_operator_where_the_unreadable_pairs_are(
    alice, sandbox, settings
):
    abandon_under_a_dropped_key(make_token(alice, sandbox), sandbox, settings)
    errors = io.StringIO()

    with pytest.raises(CommandError):
        call_command("refresh_tokens", stdout=io.StringIO(), stderr=errors)

    assert "1 token pair(s) in the spool cannot be decrypted" in errors.getvalue()
    assert str(settings.TOKEN_SPOOL_DIR) in errors.getvalue()


def test_set_aside_pairs_are_not_rewritten_while_still_unreadable(
    alice, sandbox, settings
):
    abandon_under_a_dropped_key(make_token(alice, sandbox), sandbox, settings)
    with spool.abandoned():
        pass
    [aside] = spool_files(spool.UNREADABLE_SUFFIX)
    before = aside.stat()

    with spool.abandoned() as entries:
        assert entries == []

    assert aside.exists() and aside.stat().st_mtime_ns == before.st_mtime_ns


def test_stray_files_in_the_spool_folder_are_skipped_not_fatal(alice, sandbox):
    token = make_token(alice, sandbox)
    fresh = abandon_a_rotated_pair(token, sandbox)
    folder = settings.TOKEN_SPOOL_DIR
    (folder / "a-directory.spool").mkdir()
    (folder / "elsewhere").mkdir()
    (folder / "a-link.spool").symlink_to(folder / "elsewhere")
    os.mkfifo(folder / "a-fifo.spool")  # opening it to read would wait forever

    refresh_tokens("--no-validate")

    token.refresh_from_db()
    assert token.refresh_token == fresh["refresh_token"]  # the real one was stored
    assert (folder / "a-directory.spool").is_dir()
    assert stat.S_ISFIFO((folder / "a-fifo.spool").lstat().st_mode)


def test_a_spool_file_that_is_not_text_is_set_aside_not_fatal(alice, sandbox):
    (settings.TOKEN_SPOOL_DIR).mkdir(mode=0o700, parents=True, exist_ok=True)
    (settings.TOKEN_SPOOL_DIR / "garbage.spool").write_bytes(b"\xff\xfe\x00 not ours\n")

    with pytest.raises(CommandError):
        refresh_tokens("--no-validate")

    assert spool.unreadable_count() == 1
    assert not spool_files(spool.SUFFIX)


def test_a_spool_folder_others_can_read_is_tightened():
    folder = settings.TOKEN_SPOOL_DIR
    folder.mkdir(mode=0o755, parents=True)
    folder.chmod(0o755)
    run = spool.Spool()
    try:
        run.add(
            spool.Entry(1, spool.digest("old"), "a" * 30, "r" * 50, 1, [], 1.0, "x")
        )
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    finally:
        run.close(keep=False)


def test_a_short_write_leaves_no_half_line_and_is_an_error(tmp_path):
    # A file size limit makes the kernel write only part of the second line: the
    # same short write a full disk gives, without filling one.
    script = textwrap.dedent(
        """
        import os, resource, signal, django
        django.setup()
        from accounts.tokens import spool

        def entry(pk):
            old = spool.digest("old")
            return spool.Entry(pk, old, "a" * 30, "r" * 50, 1, [], 1.0, "x")

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        run = spool.Spool()
        run.add(entry(1))
        [path] = spool.directory().glob("*.spool")
        size = path.stat().st_size
        _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + 40, hard))
        try:
            run.add(entry(2))
        except OSError as error:
            print("refused:", error)
        print("size kept:", path.stat().st_size == size)
        resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
        run.add(entry(3))
        run.close(keep=True)
        with spool.abandoned() as entries:
            print("entries:", [e.token_pk for e in entries])
        """
    )
    env = process_env_without_sandbox(tmp_path)
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "refused: short write to the token spool" in done.stdout
    assert "size kept: True" in done.stdout
    assert "entries: [1, 3]" in done.stdout


def process_env_without_sandbox(tmp_path) -> dict[str, str]:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "TOKEN_SPOOL_DIR": str(tmp_path / "spool"),
    }
    env.pop("DATABASE_URL", None)
    return env
