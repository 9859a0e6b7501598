"""A durable note of token pairs Twitch has issued that the database may not hold yet.

Twitch rotates a refresh token when it is used, and presenting the old one again can
end the whole authorization. From the moment Twitch answers a refresh until the
database has committed the new pair, the only copy of it is in one process's
memory; if that process dies then (say `kill -9` while SQLite is locked), the user's
connection is lost for good. So every pair is first appended here, encrypted, and
only then written to the database.

Each run of the refresh engine has one file, which it holds an exclusive `flock` on
for as long as it lives. What it appends reaches the operating system at once, so
it survives the process being killed (not a power cut: see the README). Before doing
anything else, the next run (or `twitch_for`) looks for files that no living process
holds, stores what they say, and deletes them (`accounts.tokens.replay`).

The lock is local to one machine: give each machine its own `TOKEN_SPOOL_DIR`.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from django.conf import settings

from accounts import crypto

logger = logging.getLogger(__name__)

SUFFIX = ".spool"


@dataclass(frozen=True)
class Entry:
    """One token pair Twitch issued for a stored connection."""

    token_pk: int
    # SHA-256 of the refresh token this pair replaced: the row must still hold it
    # for the pair to be stored.
    replaced: str
    access_token: str = field(repr=False)
    refresh_token: str = field(repr=False)
    expires_in: int | None
    scopes: list[str] | None  # None: unreadable in Twitch's answer
    obtained_at: float  # time.time()
    lease: str  # the claim the run held (ISO 8601), released when replayed


def digest(refresh_token: str) -> str:
    return hashlib.sha256(refresh_token.encode()).hexdigest()


def directory() -> Path:
    return Path(settings.TOKEN_SPOOL_DIR)


def has_files() -> bool:
    """Whether any run's file is there at all (living or not): one directory read."""
    try:
        return any(directory().glob(f"*{SUFFIX}"))
    except OSError:
        return False


class Spool:
    """This run's file; created, and locked, when the first pair is added."""

    def __init__(self) -> None:
        self._fd: int | None = None
        self._path: Path | None = None

    def add(self, entry: Entry) -> None:
        if self._fd is None:
            self._open()
        assert self._fd is not None
        line = crypto.encrypt(json.dumps(asdict(entry))) + "\n"
        # One write of a whole line to a file opened for appending: a reader never
        # sees half of it, even if we die at once after.
        os.write(self._fd, line.encode())

    def close(self, *, keep: bool) -> None:
        """Release the file; delete it unless it holds pairs still to be stored."""
        if self._fd is None:
            return
        assert self._path is not None
        if not keep:
            self._path.unlink(missing_ok=True)
        os.close(self._fd)  # releases the lock: a successor may replay a kept file
        self._fd = self._path = None

    def _open(self) -> None:
        folder = directory()
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        name = f"{os.getpid()}-{secrets.token_hex(8)}"
        # Locked under a name replayers ignore, then renamed: nobody can take the
        # file for an abandoned one in between.
        hidden = folder / f".{name}"
        fd = os.open(hidden, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        path = folder / f"{name}{SUFFIX}"
        os.rename(hidden, path)
        self._fd, self._path = fd, path


@contextmanager
def abandoned() -> Iterator[list[Entry]]:
    """The entries of every file no living process holds, oldest first.

    The files stay locked by us while the caller stores the entries, and are
    deleted when the block ends without an exception.
    """
    folder = directory()
    if not folder.is_dir():
        yield []
        return
    taken: list[tuple[Path, int]] = []
    entries: list[Entry] = []
    try:
        for path in sorted(folder.glob(f"*{SUFFIX}"), key=_mtime):
            fd = _take(path)
            if fd is None:
                continue
            taken.append((path, fd))
            entries.extend(_read(path))
        yield sorted(entries, key=lambda entry: entry.obtained_at)
        for path, _ in taken:
            path.unlink(missing_ok=True)
    finally:
        for _, fd in taken:
            os.close(fd)


def _take(path: Path) -> int | None:
    """An fd holding the file's lock, or None while its writer lives (or it is gone)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    if not path.exists():  # replayed and deleted by someone else meanwhile
        os.close(fd)
        return None
    return fd


def _read(path: Path) -> list[Entry]:
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        try:
            entries.append(Entry(**json.loads(crypto.decrypt(line))))
        except (crypto.UndecryptableToken, ValueError, TypeError):
            # A line cut short by a crash, or written under a key removed since.
            logger.error("spool file %s: line %s cannot be read", path.name, number)
    return entries


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0
