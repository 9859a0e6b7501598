"""scripts/dev, run for real in a copy of the project: secrets readable by the owner
only, demo credentials that work, and Ctrl-C or SIGTERM stops all it started."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from http.cookiejar import CookieJar
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import pytest
from cryptography.fernet import Fernet

from tests.conftest import BASE_DIR, free_port

pytestmark = pytest.mark.skipif(
    shutil.which("bash") is None,
    reason="scripts/dev is a bash script and bash is not installed",
)

# What a newcomer's checkout holds; no .venv, .env or database.
PROJECT = [
    "manage.py",
    "requirements.txt",
    "accounts",
    "twitch_sandbox",
    "twitchauth_site",
    "templates",
    "scripts",
]
DATABASE_FILES = ["db.sqlite3", "db.sqlite3-wal", "db.sqlite3-shm"]
OWNER_ONLY = 0o600


class DevRun:
    """One run of scripts/dev, in a session of its own as a terminal starts it."""

    def __init__(self, project: Path, *, number: int) -> None:
        self.port = free_port()
        self.sandbox_port = free_port()
        while self.sandbox_port == self.port:
            self.sandbox_port = free_port()
        self.log = project.parent / f"dev-{number}.log"
        # A newcomer's shell: none of this test run's settings, database or Twitch
        # configuration; the venv the tests run in, so nothing is downloaded.
        env = {
            "PATH": os.environ["PATH"],
            "HOME": os.environ.get("HOME", str(project.parent)),
            "LANG": "C.UTF-8",
            "VENV": sys.prefix,
            "PORT": str(self.port),
            "SANDBOX_PORT": str(self.sandbox_port),
        }
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                ["bash", "scripts/dev"],
                cwd=project,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started: set[int] = set()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_until_serving(self) -> None:
        """Until uvicorn listens; then note every process the script started."""
        deadline = time.monotonic() + 20
        while not _listening(self.port):
            assert self.process.poll() is None, f"scripts/dev exited:\n{self.output()}"
            assert time.monotonic() < deadline, f"no uvicorn:\n{self.output()}"
            time.sleep(0.05)
        assert _listening(self.sandbox_port), self.output()
        self.started = _descendants(self.process.pid)

    def credentials(self) -> tuple[str, str]:
        found = re.search(r"username '([^']+)', password '([^']+)'", self.output())
        assert found, self.output()
        return found[1], found[2]

    def stop(self, signum: int = signal.SIGTERM, *, group: bool = False) -> None:
        """Send the signal, as `kill` does (or, with group, as Ctrl-C does)."""
        if group:
            os.killpg(self.process.pid, signum)
        else:
            self.process.send_signal(signum)

    def assert_everything_stopped(self, *, within: float) -> None:
        deadline = time.monotonic() + within
        try:
            self.process.wait(timeout=within)
        except subprocess.TimeoutExpired:
            pytest.fail(f"scripts/dev still runs after {within} s:\n{self.output()}")
        while time.monotonic() < deadline:
            survivors = {pid for pid in self.started if _running(pid)}
            busy = [p for p in (self.port, self.sandbox_port) if not _free(p)]
            if not survivors and not busy:
                return
            time.sleep(0.05)
        pytest.fail(f"still running: {survivors}, ports still taken: {busy}")

    def kill(self) -> None:
        """Whatever a failed test left behind: the script's own clean-up first."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        for pid in self.started:
            if _running(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    copy = tmp_path / "project"
    copy.mkdir()
    for name in PROJECT:
        if (BASE_DIR / name).is_dir():
            shutil.copytree(
                BASE_DIR / name,
                copy / name,
                ignore=shutil.ignore_patterns("__pycache__"),
            )
        else:
            shutil.copy2(BASE_DIR / name, copy / name)
    return copy


@pytest.fixture
def start_dev(project: Path) -> Iterator[Callable[[], DevRun]]:
    runs: list[DevRun] = []

    def start() -> DevRun:
        run = DevRun(project, number=len(runs) + 1)
        runs.append(run)
        run.wait_until_serving()
        return run

    yield start
    for run in runs:
        run.kill()


def test_dev_script_writes_env_and_database_readable_by_the_owner_only(
    project, start_dev
):
    start_dev()

    assert _mode(project / ".env") == OWNER_ONLY
    for name in DATABASE_FILES:
        if (project / name).exists():
            assert _mode(project / name) == OWNER_ONLY, name
    assert (project / "db.sqlite3").exists()


def test_dev_script_makes_env_and_database_an_earlier_run_left_readable_owner_only(
    project, start_dev
):
    env = project / ".env"
    env.write_text(
        "DEBUG=True\n"
        "SECRET_KEY=left-by-an-earlier-run\n"
        f"TOKEN_ENCRYPTION_KEYS={Fernet.generate_key().decode()}\n"
    )
    # A database someone has open (a DB browser, say) keeps its -wal and -shm files.
    database = sqlite3.connect(project / "db.sqlite3")
    try:
        database.execute("PRAGMA journal_mode=WAL")
        database.execute("CREATE TABLE notes (text)")
        database.commit()
        for path in [env, *(project / name for name in DATABASE_FILES)]:
            path.chmod(0o644)

        start_dev()

        assert _mode(env) == OWNER_ONLY
        for name in DATABASE_FILES:
            assert _mode(project / name) == OWNER_ONLY, name
    finally:
        database.close()


def test_dev_script_prints_demo_credentials_that_work_on_every_run(start_dev):
    first = start_dev()
    username, first_password = first.credentials()
    assert username == "demo"
    assert _signs_in(first.base_url, username, first_password)
    first.stop()
    first.assert_everything_stopped(within=10)

    second = start_dev()

    username, password = second.credentials()
    assert "Reset demo account" in second.output()
    assert _signs_in(second.base_url, username, password)
    assert not _signs_in(second.base_url, username, first_password)


def test_dev_script_serves_the_admin_s_stylesheets(start_dev):
    run = start_dev()

    with urllib.request.urlopen(f"{run.base_url}/admin/login/", timeout=10) as page:
        found = re.search(r'href="(/static/admin/css/base\.css)"', page.read().decode())
    assert found, "the admin links no base.css"
    with urllib.request.urlopen(run.base_url + found[1], timeout=10) as stylesheet:
        assert stylesheet.headers["Content-Type"].startswith("text/css")


def test_dev_script_stops_everything_it_started_on_sigterm(start_dev):
    run = start_dev()
    assert len(run.started) >= 2, "the sandbox and uvicorn"

    run.stop(signal.SIGTERM)

    run.assert_everything_stopped(within=10)


def test_dev_script_stops_everything_it_started_on_ctrl_c(start_dev):
    run = start_dev()
    assert len(run.started) >= 2, "the sandbox and uvicorn"

    run.stop(signal.SIGINT, group=True)

    run.assert_everything_stopped(within=10)
    assert run.process.returncode == 130


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _free(port: int) -> bool:
    """Whether a server could listen on the port again (as uvicorn binds it)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _descendants(root: int) -> set[int]:
    table = subprocess.run(
        ["ps", "-A", "-o", "pid=", "-o", "ppid="],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    children: dict[int, list[int]] = {}
    for line in table.splitlines():
        pid, ppid = map(int, line.split())
        children.setdefault(ppid, []).append(pid)
    found: set[int] = set()
    waiting = [root]
    while waiting:
        for child in children.get(waiting.pop(), []):
            found.add(child)
            waiting.append(child)
    return found


def _running(pid: int) -> bool:
    """Alive and not a zombie waiting to be reaped."""
    state = subprocess.run(
        ["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True
    ).stdout.strip()
    return bool(state) and not state.startswith("Z")


def _signs_in(base_url: str, username: str, password: str) -> bool:
    """Sign in on the login page as a browser does; whether it let us in."""
    browser = urllib.request.build_opener(
        urllib.request.HTTPCookieProcessor(CookieJar())
    )
    with browser.open(f"{base_url}/accounts/login/", timeout=10) as page:
        found = re.search(
            r'name="csrfmiddlewaretoken" value="([^"]+)"', page.read().decode()
        )
    assert found, "no CSRF token on the login page"
    form = {"csrfmiddlewaretoken": found[1], "username": username, "password": password}
    with browser.open(
        f"{base_url}/accounts/login/", data=urlencode(form).encode(), timeout=10
    ) as answer:
        return urlsplit(answer.url).path == "/"
