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

A line that no configured key decrypts (the key was changed or dropped before the
spool was replayed) is never thrown away: it is set aside in a `.unreadable` file
beside the spool, retried at every replay, and reported (`refresh_tokens`,
`/healthz`, `manage.py check`) until a key reads it or an operator deletes the file.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from django.conf import settings

from accounts import crypto

logger = logging.getLogger(__name__)

SUFFIX = ".spool"
# Lines set aside because no configured key decrypts them.
UNREADABLE_SUFFIX = ".unreadable"


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
    """Whether any run's file, or set-aside lines, are there at all (living or not):
    one directory read."""
    try:
        return any(
            path.is_file() and not path.is_symlink()
            for suffix in (SUFFIX, UNREADABLE_SUFFIX)
            for path in directory().glob(f"*{suffix}")
        )
    except OSError:
        return False


def unreadable_count() -> int:
    """Token pairs set aside because no configured key decrypts them."""
    count = 0
    try:
        paths = list(directory().glob(f"*{UNREADABLE_SUFFIX}"))
    except OSError:
        return 0
    for path in paths:
        fd = _open_ours(path, lock=False)
        if fd is None:
            continue
        try:
            count += len(_read_lines(fd))
        finally:
            os.close(fd)
    return count


class Spool:
    """This run's file; created, and locked, when the first pair is added."""

    def __init__(self) -> None:
        self._fd: int | None = None
        self._path: Path | None = None

    def add(self, entry: Entry) -> None:
        """Append one pair. Raises OSError when it could not be written whole (a
        full disk): the file is then as it was before."""
        if self._fd is None:
            self._open()
        assert self._fd is not None
        line = (crypto.encrypt(json.dumps(asdict(entry))) + "\n").encode()
        size = os.fstat(self._fd).st_size
        # One write of a whole line to a file opened for appending: a reader never
        # sees half of it, even if we die at once after.
        written = os.write(self._fd, line)
        if written != len(line):
            # Half a line would swallow the start of the next one.
            os.ftruncate(self._fd, size)
            raise OSError(f"short write to the token spool ({written} of {len(line)})")

    def sync(self) -> None:
        """Make what was added survive a power cut too: for when the run relies on
        the spool (the database refuses the pairs, or the run leaves them behind).
        Until then the operating system holds them, which survives a killed
        process."""
        if self._fd is not None:
            os.fsync(self._fd)

    def close(self, *, keep: bool) -> None:
        """Release the file; delete it unless it holds pairs still to be stored."""
        if self._fd is None:
            return
        assert self._path is not None
        if keep:
            self.sync()
        else:
            self._path.unlink(missing_ok=True)
        os.close(self._fd)  # releases the lock: a successor may replay a kept file
        self._fd = self._path = None

    def _open(self) -> None:
        folder = _our_folder()
        name = f"{os.getpid()}-{secrets.token_hex(8)}"
        # Locked under a name replayers ignore, then renamed: nobody can take the
        # file for an abandoned one in between.
        hidden = folder / f".{name}"
        fd = os.open(hidden, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        path = folder / f"{name}{SUFFIX}"
        os.rename(hidden, path)
        _sync_folder(folder)  # the new name itself survives a power cut
        self._fd, self._path = fd, path


def _our_folder() -> Path:
    """TOKEN_SPOOL_DIR, made if missing; one that others may read is tightened, and
    one that is not ours (another user's, a symlink, a file) is refused."""
    folder = directory()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    status = folder.lstat()
    if not stat.S_ISDIR(status.st_mode) or status.st_uid != os.geteuid():
        raise OSError(f"{folder} is not a directory of this user's")
    if stat.S_IMODE(status.st_mode) & 0o077:
        logger.warning("%s was readable by others; tightened to 0700", folder)
        folder.chmod(0o700)
    return folder


def _sync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def abandoned() -> Iterator[list[Entry]]:
    """The entries of every file no living process holds, oldest first, with the
    set-aside lines a key now reads.

    The files stay locked by us while the caller stores the entries. When the block
    ends without an exception they are deleted, and the lines no key reads are
    kept, set aside, for a later replay.
    """
    folder = directory()
    if not folder.is_dir():
        yield []
        return
    taken: list[tuple[Path, int]] = []
    entries: list[Entry] = []
    unreadable: list[bytes] = []
    try:
        paths = [
            path
            for suffix in (SUFFIX, UNREADABLE_SUFFIX)
            for path in folder.glob(f"*{suffix}")
        ]
        for path in sorted(paths, key=_mtime):
            fd = _open_ours(path, lock=True)
            if fd is None:
                continue
            read, unread = _parse(path, _read_lines(fd))
            if path.suffix == UNREADABLE_SUFFIX and not read:
                os.close(fd)  # still unreadable: left as it is
                continue
            taken.append((path, fd))
            entries.extend(read)
            unreadable.extend(unread)
        yield sorted(entries, key=lambda entry: entry.obtained_at)
        if unreadable:
            _set_aside(folder, unreadable)
        for path, _ in taken:
            path.unlink(missing_ok=True)
    finally:
        for _, fd in taken:
            os.close(fd)


def _open_ours(path: Path, *, lock: bool) -> int | None:
    """An fd on `path` if it is a regular file of this user's (holding its lock,
    with `lock`); None for a file whose writer lives, or that is gone, or that is
    not ours to read (a directory, a FIFO, a symlink, another user's file)."""
    try:
        # Never follow a link, never wait for a FIFO's writer.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as error:
        logger.warning("skipped %s in the token spool: %s", path.name, error.strerror)
        return None
    status = os.fstat(fd)
    if not stat.S_ISREG(status.st_mode) or status.st_uid != os.geteuid():
        logger.warning(
            "skipped %s in the token spool: not a regular file of this user's",
            path.name,
        )
        os.close(fd)
        return None
    if not lock:
        return fd
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    if not path.exists():  # replayed and deleted by someone else meanwhile
        os.close(fd)
        return None
    return fd


def _read_lines(fd: int) -> list[bytes]:
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return [line for line in b"".join(chunks).splitlines() if line.strip()]


def _parse(path: Path, lines: list[bytes]) -> tuple[list[Entry], list[bytes]]:
    """The entries the configured keys read, and the lines they do not."""
    entries, unreadable = [], []
    for number, line in enumerate(lines, start=1):
        try:
            entries.append(Entry(**json.loads(crypto.decrypt(line.decode("ascii")))))
        except (crypto.UndecryptableToken, ValueError, TypeError):
            # Written under a key removed since (or not ours at all): kept aside.
            if path.suffix == SUFFIX:
                logger.error(
                    "spool file %s: line %s cannot be decrypted; set aside in %s",
                    path.name,
                    number,
                    UNREADABLE_SUFFIX,
                )
            unreadable.append(line)
    return entries, unreadable


def _set_aside(folder: Path, lines: list[bytes]) -> None:
    """Write the lines to a new `.unreadable` file, durably, before the files they
    came from are deleted."""
    name = f"{os.getpid()}-{secrets.token_hex(8)}"
    hidden = folder / f".{name}"
    fd = os.open(hidden, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        data = b"".join(line + b"\n" for line in lines)
        if os.write(fd, data) != len(data):
            raise OSError("short write while setting spool lines aside")
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(hidden, folder / f"{name}{UNREADABLE_SUFFIX}")
    _sync_folder(folder)


def _mtime(path: Path) -> float:
    try:
        return path.lstat().st_mtime
    except FileNotFoundError:
        return 0.0
