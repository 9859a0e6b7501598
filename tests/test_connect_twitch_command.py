"""`manage.py connect_twitch USERNAME --role bot`: Twitch's Device Code Grant for an
account with no browser here, against the sandbox over real HTTP. The connection is
stored as the browser's Connect stores it: validated, encrypted, audited."""

from __future__ import annotations

import io
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
from django.core.management import CommandError, call_command
from django.db import connections

from accounts.models import TokenEvent, TwitchToken
from tests.conftest import BASE_DIR, make_token, process_env

pytestmark = pytest.mark.django_db(transaction=True)

BOT_SCOPES = ["user:bot", "user:read:chat", "user:write:chat"]


@pytest.fixture(autouse=True)
def quick_device_flow(sandbox, settings):
    settings.TWITCH_BOT_SCOPES = BOT_SCOPES
    # Twitch says 5 s between polls; the flow is the same at 1 s.
    sandbox.set_device_timing(interval=1, expires_in=60)


class Terminal(io.StringIO):
    """The command's output, readable while it runs."""

    def user_code(self, timeout: float = 10) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if match := re.search(r"enter the code (\S+)\.", self.getvalue()):
                return match.group(1)
            time.sleep(0.02)
        raise AssertionError(f"no code printed: {self.getvalue()!r}")


def run_in_background(*args: str) -> tuple[threading.Thread, Terminal, list]:
    out, failures = Terminal(), []

    def run() -> None:
        try:
            call_command("connect_twitch", *args, stdout=out, stderr=io.StringIO())
        except CommandError as error:
            failures.append(error)
        finally:
            connections.close_all()  # this thread's own

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out, failures


def test_a_bot_on_another_device_is_connected_with_a_code(alice, sandbox):
    thread, out, failures = run_in_background("alice", "--role", "bot")

    sandbox.approve_device(out.user_code(), login="alicebot")
    thread.join(timeout=20)

    assert failures == []
    printed = out.getvalue()
    assert "/activate?device-code=" in printed
    assert "Connected alicebot as alice's bot account" in printed
    token = TwitchToken.objects.get(user=alice, role="bot")
    assert token.login == "alicebot"
    assert token.scopes == BOT_SCOPES
    assert token.last_validated_at is not None
    assert sandbox.is_refresh_token_valid(token.refresh_token)
    event = token.events.get()
    assert (event.action, event.source) == ("connect", TokenEvent.Source.COMMAND)
    # Only the role's scopes were asked for, without a client secret.
    device = next(r for r in sandbox.requests if r.endpoint == "device")
    assert device.form["scopes"] == " ".join(BOT_SCOPES)
    assert "client_secret" not in device.form
    # No secret on the terminal.
    assert token.access_token not in printed and token.refresh_token not in printed


def test_connecting_again_replaces_the_connection_and_ends_the_old_grant(
    alice, sandbox
):
    old = make_token(alice, sandbox, role="bot", login="alicebot")
    sandbox.add_user("alicebot2")

    thread, out, failures = run_in_background("alice", "--role", "bot")
    sandbox.approve_device(out.user_code(), login="alicebot2")
    thread.join(timeout=20)

    token = TwitchToken.objects.get(user=alice, role="bot")
    assert failures == [] and token.pk == old.pk
    assert token.login == "alicebot2"
    deadline = time.monotonic() + 5
    while sandbox.is_access_token_valid(old.access_token):
        assert time.monotonic() < deadline, "the replaced grant stayed alive"
        time.sleep(0.05)


def test_denied_on_twitch_connects_nothing(alice, sandbox):
    thread, out, failures = run_in_background("alice", "--role", "bot")

    sandbox.deny_device(out.user_code())
    thread.join(timeout=20)

    assert [str(f) for f in failures] == [
        "The request was denied on Twitch; nothing connected."
    ]
    assert not TwitchToken.objects.exists()


def test_a_code_nobody_enters_expires_and_connects_nothing(alice, sandbox):
    sandbox.set_device_timing(interval=1, expires_in=2)

    thread, out, failures = run_in_background("alice", "--role", "bot")
    thread.join(timeout=20)

    assert "expired" in str(failures[0])
    assert not TwitchToken.objects.exists()


def test_an_account_already_another_persons_bot_is_refused_and_its_grant_ended(
    alice, bob, sandbox
):
    sandbox.add_user("sharedbot")
    make_token(
        bob,
        sandbox,
        role="bot",
        login="sharedbot",
        twitch_user_id=sandbox.add_user("sharedbot").id,
    )

    thread, out, failures = run_in_background("alice", "--role", "bot")
    sandbox.approve_device(out.user_code(), login="sharedbot")
    thread.join(timeout=20)

    assert "already another user's bot account" in str(failures[0])
    assert not TwitchToken.objects.filter(user=alice).exists()
    assert sandbox.live_tokens("sharedbot").access == []


@pytest.mark.parametrize(
    "args, message",
    [
        (["nobody"], "No user 'nobody'."),
        (
            ["alice", "--role", "ceo"],
            "This site has no role 'ceo' (it has: main, bot).",
        ),
    ],
)
def test_bad_arguments_are_refused_before_asking_twitch(alice, sandbox, args, message):
    with pytest.raises(CommandError, match=re.escape(message)) as refused:
        call_command("connect_twitch", *args, stdout=io.StringIO())

    assert refused.value.returncode == 2
    assert sandbox.requests == []


def test_twitch_down_is_a_clear_error(alice, sandbox):
    sandbox.fail("device", 503, times=None)

    with pytest.raises(CommandError, match="Twitch did not start the device flow"):
        call_command("connect_twitch", "alice", stdout=io.StringIO())


def test_ctrl_c_while_waiting_stops_at_once_and_leaves_nothing_at_twitch(
    alice, sandbox
):
    command = subprocess.Popen(
        [sys.executable, "manage.py", "connect_twitch", "alice", "--role", "bot"],
        cwd=BASE_DIR,
        env=process_env(sandbox, TWITCH_BOT_SCOPES=" ".join(BOT_SCOPES)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    printed = ""
    while "enter the code" not in printed:
        printed += command.stdout.readline()
        assert command.poll() is None, command.stderr.read()
    sandbox.wait_for_request("token")  # polling
    user_code = re.search(r"enter the code (\S+)\.", printed).group(1)

    command.send_signal(signal.SIGINT)
    started = time.monotonic()
    _, errors = command.communicate(timeout=10)

    assert command.returncode == 130
    assert time.monotonic() - started < 3
    assert "Interrupted: nothing was connected." in errors
    assert "Traceback" not in errors
    polls = sandbox.count("token")
    time.sleep(1.5)  # longer than the interval: nobody polls any more
    assert sandbox.count("token") == polls
    # Approving now grants nothing anybody holds.
    sandbox.approve_device(user_code, login="alicebot")
    assert sandbox.live_tokens("alicebot").access == []
    assert not TwitchToken.objects.exists()


def test_the_bots_eventsub_subscriptions_exist_when_the_command_ends(
    alice, sandbox, settings
):
    settings.TWITCH_EVENTSUB_CALLBACK_URL = "https://testserver/twitch/eventsub/"
    settings.TWITCH_EVENTSUB_SECRET = "a-secret-of-twenty-chars"
    settings.TWITCH_EVENTSUB_TYPES = "channel.chat.message"
    sandbox.allow_insecure_callbacks = True
    make_token(
        alice,
        sandbox,
        login="alice",
        scopes=["chat:read", "channel:bot"],
    )
    sandbox.issue_tokens(login="alice", scopes=["channel:bot"])

    thread, out, failures = run_in_background("alice", "--role", "bot")
    sandbox.approve_device(out.user_code(), login="alicebot")
    thread.join(timeout=30)

    assert failures == []
    assert [s["type"] for s in sandbox.subscriptions()] == ["channel.chat.message"]


def test_the_persons_own_account_as_their_bot_is_pointed_out(alice, sandbox):
    make_token(
        alice, sandbox, login="alice", twitch_user_id=sandbox.add_user("alice").id
    )

    thread, out, failures = run_in_background("alice", "--role", "bot")
    sandbox.approve_device(out.user_code(), login="alice")
    thread.join(timeout=20)

    assert failures == []
    assert "alice is also alice's twitch account" in out.getvalue()
