"""The spool keeps rotated token pairs, encrypted, until the database holds them."""

from __future__ import annotations

import stat

from django.conf import settings

from accounts.tokens import spool

ACCESS, REFRESH = "a1" * 15, "r1" * 25


def entry(pk: int = 1) -> spool.Entry:
    return spool.Entry(
        token_pk=pk,
        replaced=spool.digest("the old refresh token"),
        access_token=ACCESS,
        refresh_token=REFRESH,
        expires_in=14400,
        scopes=["chat:read"],
        obtained_at=1.0,
        lease="2026-11-29T12:00:00+00:00",
    )


def test_pairs_are_encrypted_on_disk_and_readable_by_the_owner_only():
    run = spool.Spool()
    run.add(entry())
    try:
        [path] = settings.TOKEN_SPOOL_DIR.glob("*.spool")
        content = path.read_bytes()
        assert ACCESS.encode() not in content and REFRESH.encode() not in content
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(settings.TOKEN_SPOOL_DIR.stat().st_mode) == 0o700
    finally:
        run.close(keep=False)
    assert not list(settings.TOKEN_SPOOL_DIR.glob("*.spool"))


def test_a_living_run_s_file_is_not_replayed():
    run = spool.Spool()
    run.add(entry())
    try:
        with spool.abandoned() as entries:
            assert entries == []
    finally:
        run.close(keep=True)


def test_a_file_left_behind_is_replayed_once_then_deleted():
    run = spool.Spool()
    run.add(entry(1))
    run.add(entry(2))
    run.close(keep=True)  # as if the run had died

    with spool.abandoned() as entries:
        assert [e.token_pk for e in entries] == [1, 2]
        assert entries[0].refresh_token == REFRESH
    assert not list(settings.TOKEN_SPOOL_DIR.glob("*.spool"))
    with spool.abandoned() as entries:
        assert entries == []


def test_a_replay_that_fails_leaves_the_file_for_the_next_one():
    run = spool.Spool()
    run.add(entry())
    run.close(keep=True)

    try:
        with spool.abandoned():
            raise RuntimeError("the database went away")
    except RuntimeError:
        pass

    with spool.abandoned() as entries:
        assert len(entries) == 1


def test_a_pair_s_repr_shows_no_secret():
    assert ACCESS not in repr(entry()) and REFRESH not in repr(entry())
