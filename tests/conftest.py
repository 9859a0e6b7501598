"""Fixtures: a real Twitch sandbox over HTTP, users, a browser that approves on it;
plain HTTP and a webhook callback for the sandbox's own tests."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import html
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from email.message import Message
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit

import aiohttp
import pytest
from asgiref.sync import sync_to_async
from django.conf import settings as django_settings
from django.contrib.auth.models import User
from django.db import connection, connections
from django.test import AsyncClient
from django.utils import timezone

from accounts import twitch
from accounts.models import TwitchToken
from twitch_sandbox import Sandbox

# A failing test's report blanks the sandbox's tokens: they are credentials.
pytest_plugins = ["tests.redaction"]

BASE_DIR = Path(__file__).resolve().parent.parent
CLIENT_ID = "sandbox-client-id"
CLIENT_SECRET = "sandbox-client-secret"
REDIRECT_URI = "http://testserver/twitch/callback/"
# What the served site signs EventSub messages with (tests/test_eventsub_served.py).
EVENTSUB_SECRET = "served-site-eventsub-secret"


@pytest.fixture(scope="session")
def sandbox() -> Iterator[Sandbox]:
    sandbox = Sandbox(
        client_id=CLIENT_ID, client_secret=CLIENT_SECRET, redirect_uris=[REDIRECT_URI]
    )
    sandbox.start(host="127.0.0.1", port=0)
    yield sandbox
    sandbox.stop()


@pytest.fixture(autouse=True)
def twitch_settings(sandbox: Sandbox, settings, tmp_path: Path) -> Sandbox:
    """Every test starts with a fresh sandbox that the site talks to, and an empty
    token spool of its own."""
    sandbox.reset()
    sandbox.redirect_uris[:] = [REDIRECT_URI]
    # As strict as Twitch (https on 443) unless a test says otherwise: reset()
    # keeps this switch, and a test that turned it on must not lend it to others.
    sandbox.allow_insecure_callbacks = False
    settings.TWITCH_AUTH_BASE_URL = sandbox.auth_base_url
    settings.TWITCH_API_BASE_URL = sandbox.api_base_url
    settings.TOKEN_SPOOL_DIR = tmp_path / "spool"
    # Twitch's keys are fetched as a new process would (each test's sandbox
    # starts again from its first key).
    twitch.oidc.forget_keys()
    return sandbox


@pytest.fixture(scope="session", autouse=True)
async def _close_connections(django_db_setup) -> AsyncIterator[None]:
    yield
    await twitch.close_http_session()
    # The async ORM's thread holds its own database connection; close it before
    # the test database is dropped.
    await sync_to_async(connections.close_all)()


@pytest.fixture
def short_timeout(monkeypatch) -> None:
    """Twitch calls time out after 0.5 s (8 s in production) and retry at once."""
    monkeypatch.setattr(twitch.http, "TIMEOUT", aiohttp.ClientTimeout(total=0.5))
    monkeypatch.setattr(twitch.http, "RETRY_BASE_DELAY", 0.01)


@pytest.fixture
def alice(django_user_model: type[User]) -> User:
    return django_user_model.objects.create_user("alice", "alice@example.com", "pw")


@pytest.fixture
def bob(django_user_model: type[User]) -> User:
    return django_user_model.objects.create_user("bob", "bob@example.com", "pw")


@pytest.fixture
async def alice_client(alice: User) -> AsyncClient:
    client = AsyncClient()
    await client.aforce_login(alice)
    return client


class _Form(HTMLParser):
    """The consent page's form: its action and its input fields."""

    def __init__(self) -> None:
        super().__init__()
        self.action = ""
        self.fields: dict[str, str] = {}
        self.buttons: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if tag == "form":
            self.action = values.get("action", "")
        elif tag == "input" and values.get("name"):
            self.fields[values["name"]] = values.get("value", "")
        elif tag == "button" and values.get("name"):
            self.buttons[values.get("value", "")] = values["name"]


async def approve_on_twitch(
    authorize_url: str, *, login: str, approve: bool = True
) -> str:
    """Do what a person does on Twitch's consent page; return where Twitch sends them.

    Real HTTP to the sandbox: GET the consent page, submit its form.
    """
    async with aiohttp.ClientSession() as browser:
        async with browser.get(authorize_url, allow_redirects=False) as page:
            if page.status == 302:
                return page.headers["Location"]
            assert page.status == 200, await page.text()
            form = _Form()
            form.feed(await page.text())
        data = dict(form.fields, login=login)
        choice = "authorize" if approve else "cancel"
        button = next(
            (name for value, name in form.buttons.items() if value.lower() == choice),
            None,
        )
        if button:
            data[button] = choice
        action = form.action or urlsplit(authorize_url).path
        base = authorize_url[: authorize_url.index("/oauth2/")]
        async with browser.post(
            base + action if action.startswith("/") else action,
            data=data,
            allow_redirects=False,
        ) as answer:
            assert answer.status == 302, await answer.text()
            return answer.headers["Location"]


async def connect_twitch(
    client: AsyncClient,
    *,
    login: str,
    approve: bool = True,
    next_url: str = "",
    scopes: str = "",
    role: str = "",
):
    """The whole Connect Twitch flow as a browser runs it; the callback's answer."""
    form = {"next": next_url} if next_url else {}
    if scopes:
        form["scopes"] = scopes
    if role:
        form["role"] = role
    started = await client.post("/twitch/connect/", form)
    assert started.status_code == 302, started.content
    back = await approve_on_twitch(started["Location"], login=login, approve=approve)
    return await callback(client, back)


async def callback(client: AsyncClient, url: str):
    parts = urlsplit(url)
    assert parts.path == "/twitch/callback/", url
    return await client.get(parts.path, dict(parse_qsl(parts.query)))


async def start_connect(client: AsyncClient, role: str = "") -> dict[str, str]:
    """Press Connect Twitch; the query of the authorize URL it sends the browser to."""
    response = await client.post("/twitch/connect/", {"role": role} if role else {})
    assert response.status_code == 302
    return {k: v[0] for k, v in parse_qs(urlsplit(response["Location"]).query).items()}


def make_token(user: User, sandbox: Sandbox, *, expires_in: int = 14400, **fields):
    """A stored connection whose tokens the sandbox really issued."""
    issued = sandbox.issue_tokens(login=user.username, scopes=["chat:read"])
    twitch_user = sandbox.add_user(user.username)
    values = {
        "twitch_user_id": twitch_user.id,
        "login": twitch_user.login,
        "access_token": issued["access_token"],
        "refresh_token": issued["refresh_token"],
        "scopes": issued["scope"],
        "expires_at": timezone.now() + timedelta(seconds=expires_in),
        "last_validated_at": timezone.now(),
    }
    values.update(fields)
    return TwitchToken.objects.create(user=user, **values)


def page(response) -> str:
    """The text a person reads on a rendered page (entities decoded)."""
    return html.unescape(response.content.decode())


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def process_env(sandbox: Sandbox, **extra: str) -> dict[str, str]:
    """The environment for a site process a test starts: same database, sandbox,
    keys and spool as the test itself."""
    return dict(
        os.environ,
        DJANGO_SETTINGS_MODULE="tests.settings",
        DATABASE_URL=database_url(),
        TWITCH_AUTH_BASE_URL=sandbox.auth_base_url,
        TWITCH_API_BASE_URL=sandbox.api_base_url,
        TOKEN_ENCRYPTION_KEYS=",".join(django_settings.TOKEN_ENCRYPTION_KEYS),
        TOKEN_SPOOL_DIR=str(django_settings.TOKEN_SPOOL_DIR),
        **extra,
    )


def database_url() -> str:
    """The test database, for processes the tests start (they see committed rows)."""
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    return f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"


class Site(str):
    """The served site's base URL, and the pid of its uvicorn master."""

    pid: int


@pytest.fixture
def site(sandbox: Sandbox, request: pytest.FixtureRequest) -> Iterator[Site]:
    """The site served by uvicorn with two workers, on the test database.

    Parametrized indirectly, a dict sets `workers` and environment variables."""
    options = dict(getattr(request, "param", {}))
    workers = options.pop("workers", 2)
    port = free_port()
    base = f"http://localhost:{port}"
    sandbox.redirect_uris[:] = [f"{base}/twitch/callback/"]
    env = process_env(
        sandbox,
        ALLOWED_HOSTS="localhost",
        TWITCH_REDIRECT_URI=f"{base}/twitch/callback/",
        TWITCH_EVENTSUB_CALLBACK_URL=f"{base}/twitch/eventsub/",
        TWITCH_EVENTSUB_SECRET=EVENTSUB_SECRET,
        **options,
    )
    yield from _served(port, env, workers=workers)


def _served(port: int, env: dict[str, str], *, workers: int = 2) -> Iterator[Site]:
    """uvicorn serving the site on `port` until the fixture using it ends."""
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "twitchauth_site.asgi:application"]
        + ["--port", str(port), "--workers", str(workers), "--log-level", "warning"],
        cwd=BASE_DIR,
        env=env,
    )
    try:
        wait_until_listening(port, server)
        served = Site(f"http://localhost:{port}")
        served.pid = server.pid
        yield served
    finally:
        server.terminate()
        server.wait(timeout=10)


def wait_until_listening(port: int, server: subprocess.Popen) -> None:
    """Until something listens on `port`; `server` must not exit meanwhile."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert server.poll() is None, "uvicorn exited"
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError("uvicorn did not start")


@pytest.fixture(scope="module")
def deployed_site(
    sandbox: Sandbox, django_db_setup, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Site]:
    """The site as deployed: the real settings (DEBUG off), `collectstatic` run into
    a STATIC_ROOT of its own, then uvicorn with two workers, on the test database."""
    port = free_port()
    env = process_env(sandbox, ALLOWED_HOSTS="localhost")
    env.update(
        DJANGO_SETTINGS_MODULE="twitchauth_site.settings",
        STATIC_ROOT=str(tmp_path_factory.mktemp("staticfiles")),
        TOKEN_SPOOL_DIR=str(tmp_path_factory.mktemp("spool")),
    )
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "--verbosity=0"],
        cwd=BASE_DIR,
        env=env,
        check=True,
    )
    yield from _served(port, env)


@contextlib.contextmanager
def database_refuses_token_writes(*, only_column: str | None = None) -> Iterator[None]:
    """The database refuses to write Twitch tokens: a real DatabaseError, raised by a
    trigger. Every INSERT and UPDATE, or only UPDATEs that set `only_column`."""
    if connection.vendor == "sqlite":
        of = f" OF {only_column}" if only_column else ""
        raise_it = "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
        create = [
            f"CREATE TRIGGER refuse_update BEFORE UPDATE{of} "
            f"ON accounts_twitchtoken {raise_it}"
        ]
        if not only_column:
            create.append(
                f"CREATE TRIGGER refuse_insert BEFORE INSERT "
                f"ON accounts_twitchtoken {raise_it}"
            )
        drop = [
            "DROP TRIGGER IF EXISTS refuse_update",
            "DROP TRIGGER IF EXISTS refuse_insert",
        ]
    else:
        events = f"UPDATE OF {only_column}" if only_column else "INSERT OR UPDATE"
        create = [
            "CREATE OR REPLACE FUNCTION refuse_by_test() RETURNS trigger AS $$ "
            "BEGIN RAISE EXCEPTION 'refused by the test'; END $$ LANGUAGE plpgsql",
            f"CREATE TRIGGER refuse BEFORE {events} ON accounts_twitchtoken "
            "FOR EACH ROW EXECUTE FUNCTION refuse_by_test()",
        ]
        drop = [
            "DROP TRIGGER IF EXISTS refuse ON accounts_twitchtoken",
            "DROP FUNCTION IF EXISTS refuse_by_test()",
        ]
    with connection.cursor() as cursor:
        for statement in create:
            cursor.execute(statement)
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            for statement in drop:
                cursor.execute(statement)


@contextlib.asynccontextmanager
async def adatabase_refuses_token_writes(**options: str) -> AsyncIterator[None]:
    refusing = database_refuses_token_writes(**options)
    await sync_to_async(refusing.__enter__)()
    try:
        yield
    finally:
        await sync_to_async(refusing.__exit__)(None, None, None)


@contextlib.contextmanager
def database_write_lock(
    table: str = "accounts_twitchtoken", *, readers_wait: bool = False
) -> Iterator[None]:
    """Another connection holds the write lock, as a long transaction would (on
    PostgreSQL, on `table`). With `readers_wait`, the lock a migration takes
    (PostgreSQL: ACCESS EXCLUSIVE, which even readers wait for; SQLite: EXCLUSIVE,
    which its WAL readers still read past)."""
    if connection.vendor == "sqlite":
        import sqlite3

        holder = sqlite3.connect(connection.settings_dict["NAME"], isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE" if readers_wait else "BEGIN IMMEDIATE")
        try:
            yield
        finally:
            holder.execute("ROLLBACK")
            holder.close()
    else:
        import psycopg

        with psycopg.connect(database_url()) as holder:
            mode = "ACCESS EXCLUSIVE" if readers_wait else "SHARE ROW EXCLUSIVE"
            holder.execute(f"LOCK TABLE {table} IN {mode} MODE")
            yield
            holder.rollback()


def impatient_database() -> None:
    """This thread's connection gives up on a lock after half a second (a database
    that does not answer in time), instead of 20 s (SQLite) or 30 s (PostgreSQL)."""
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute("PRAGMA busy_timeout = 500")
        else:
            cursor.execute("SET statement_timeout = 500")


@contextlib.contextmanager
def listening(signal, receiver) -> Iterator[None]:
    """`receiver` connected to `signal` for the block."""
    signal.connect(receiver)
    try:
        yield
    finally:
        signal.disconnect(receiver)


# The sandbox's own tests (tests/test_sandbox_*.py): plain HTTP to it, and a webhook
# callback for its EventSub side. ------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: Message
    body: bytes

    def json(self) -> object:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode()

    @property
    def location(self) -> tuple[str, dict[str, str]]:
        """Where a redirect goes: the URI without its query, and the query."""
        parts = urlsplit(self.headers["Location"])
        query = {k: v[0] for k, v in parse_qs(parts.query, True).items()}
        return parts._replace(query="").geturl(), query


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None  # a redirect is the answer under test, not a place to go


_opener = urllib.request.build_opener(_NoRedirects)


def http(
    sandbox: Sandbox,
    method: str,
    path: str,
    *,
    query: Mapping[str, str] | None = None,
    form: Mapping[str, str] | None = None,
    json_body: object = None,
    data: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 5.0,
) -> Reply:
    url = sandbox.base_url + path + (f"?{urlencode(query)}" if query else "")
    all_headers = dict(headers or {})
    if form is not None:
        data = urlencode(form).encode()
        all_headers["Content-Type"] = "application/x-www-form-urlencoded"
    elif json_body is not None:
        data = json.dumps(json_body).encode()
        all_headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=data, method=method, headers=all_headers)
    try:
        with _opener.open(request, timeout=timeout) as response:
            return Reply(response.status, response.headers, response.read())
    except urllib.error.HTTPError as error:
        with error:
            return Reply(error.code, error.headers, error.read())


def refresh(sandbox: Sandbox, refresh_token: str) -> Reply:
    form = {
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "grant_type": "refresh_token",
        "refresh_token": refresh_token,
    }
    return http(sandbox, "POST", "oauth2/token", form=form)


def validate(sandbox: Sandbox, token: str, scheme: str = "OAuth") -> Reply:
    headers = {"Authorization": f"{scheme} {token}"}
    return http(sandbox, "GET", "oauth2/validate", headers=headers)


def helix_users(
    sandbox: Sandbox,
    token: str,
    *,
    client_id: str = CLIENT_ID,
    query: Mapping[str, str] | None = None,
) -> Reply:
    headers = {"Authorization": f"Bearer {token}", "Client-Id": client_id}
    return http(sandbox, "GET", "helix/users", query=query, headers=headers)


REVOKE = "user.authorization.revoke"
# What the sandbox's own EventSub tests subscribe with.
SECRET = "the-eventsub-secret"
ENABLED = "enabled"
FAILED = "webhook_callback_verification_failed"
SUBSCRIPTIONS = "helix/eventsub/subscriptions"
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z")


@dataclass
class Received:
    headers: Message
    body: bytes

    def json(self) -> dict[str, object]:
        return json.loads(self.body)

    @property
    def type(self) -> str:
        return self.headers["Twitch-Eventsub-Message-Type"]


Answer = Callable[[Received], tuple[int, str]]


def echo_challenge(message: Received) -> tuple[int, str]:
    if message.type == "webhook_callback_verification":
        return 200, message.json()["challenge"]
    return 204, ""


def signature(secret: str, headers: Mapping[str, str], body: bytes) -> str:
    signed = (
        headers["Twitch-Eventsub-Message-Id"]
        + headers["Twitch-Eventsub-Message-Timestamp"]
    ).encode() + body
    return "sha256=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


class Receiver:
    """A webhook callback served from a thread: it records every message and
    answers what ``answer`` says, as ``content_type``."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.answer: Answer = echo_challenge
        self.content_type = "text/plain"
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                message = Received(self.headers, self.rfile.read(length))
                receiver.received.append(message)
                status, text = receiver.answer(message)
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", receiver.content_type)
                    self.send_header("Content-Length", str(len(text.encode())))
                    self.end_headers()
                    self.wfile.write(text.encode())
                except ConnectionError:
                    pass  # the sandbox gave up waiting: a timeout test

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/twitch/eventsub/"


@pytest.fixture(scope="module")
def callback_server() -> Iterator[Receiver]:
    receiver = Receiver()
    thread = threading.Thread(target=receiver.server.serve_forever, daemon=True)
    thread.start()
    yield receiver
    receiver.server.shutdown()
    receiver.server.server_close()


@pytest.fixture
def receiver(callback_server: Receiver, sandbox: Sandbox) -> Iterator[Receiver]:
    callback_server.received.clear()
    callback_server.answer = echo_challenge
    callback_server.content_type = "text/plain"
    sandbox.allow_insecure_callbacks = True  # the receiver is plain http
    yield callback_server
    sandbox.allow_insecure_callbacks = False


def app_token(sandbox: Sandbox) -> str:
    form = {
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "grant_type": "client_credentials",
    }
    return http(sandbox, "POST", "oauth2/token", form=form).json()["access_token"]


def helix_headers(token: str, client_id: str = CLIENT_ID) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Client-Id": client_id}


def subscription_body(callback: str, secret: str = SECRET) -> dict[str, object]:
    return {
        "type": REVOKE,
        "version": "1",
        "condition": {"client_id": CLIENT_ID},
        "transport": {"method": "webhook", "callback": callback, "secret": secret},
    }


def create_subscription(
    sandbox: Sandbox, callback: str, *, token: str | None = None, **changes: object
) -> Reply:
    body = {**subscription_body(callback), **changes}
    headers = helix_headers(token or app_token(sandbox))
    return http(sandbox, "POST", SUBSCRIPTIONS, json_body=body, headers=headers)


def subscribe(sandbox: Sandbox, callback: str, status: str = ENABLED) -> dict:
    """A subscription whose verification is over and ended in ``status``."""
    reply = create_subscription(sandbox, callback)
    assert reply.status == 202, reply.text
    subscription_id = reply.json()["data"][0]["id"]
    return sandbox.wait_for_subscription_status(subscription_id, status)


def list_subscriptions(sandbox: Sandbox, **query: str) -> Reply:
    headers = helix_headers(app_token(sandbox))
    return http(sandbox, "GET", SUBSCRIPTIONS, query=query, headers=headers)
