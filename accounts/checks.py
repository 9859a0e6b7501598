"""System checks: `manage.py check` names each misconfigured variable and its fix."""

from __future__ import annotations

import difflib
import re
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib.staticfiles.storage import ManifestFilesMixin
from django.core import checks
from django.urls import Resolver404, resolve
from django.utils.module_loading import import_string

from accounts import crypto, roles
from accounts.tokens import spool
from accounts.twitch import scopes as twitch_scopes


@checks.register(checks.Tags.security)
def check_twitch_credentials(**kwargs: Any) -> list[checks.CheckMessage]:
    missing = [
        name
        for name in ("TWITCH_CLIENT_ID", "TWITCH_CLIENT_SECRET")
        if not getattr(settings, name, "")
    ]
    if not missing:
        return []
    return [
        checks.Error(
            f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set.",
            hint="Register an application at https://dev.twitch.tv/console and set "
            "TWITCH_CLIENT_ID and TWITCH_CLIENT_SECRET (or run the README's "
            "development command, which uses the built-in sandbox).",
            id="accounts.E001",
        )
    ]


@checks.register()
def check_redirect_uri(**kwargs: Any) -> list[checks.CheckMessage]:
    uri = settings.TWITCH_REDIRECT_URI
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return [
            checks.Error(
                f"TWITCH_REDIRECT_URI must be an absolute http(s) URL, not {uri!r}.",
                hint="For example https://example.com/twitch/callback/, exactly as "
                "registered with your Twitch application.",
                id="accounts.E002",
            )
        ]
    try:
        match = resolve(parts.path)
    except Resolver404:
        match = None
    if match is None or match.url_name != "twitch_callback":
        return [
            checks.Error(
                f"TWITCH_REDIRECT_URI's path {parts.path!r} does not route to the "
                "Twitch callback view.",
                hint="Its path must be /twitch/callback/.",
                id="accounts.E003",
            )
        ]
    return []


# Twitch's scope strings: lowercase words joined by ":" (and "_" or "-").
SCOPE_RE = re.compile(r"[a-z0-9_.\-]+(:[a-z0-9_.\-]+)*")


@checks.register()
def check_scopes(**kwargs: Any) -> list[checks.CheckMessage]:
    messages: list[checks.CheckMessage] = []
    for name, scopes in _scope_settings():
        if malformed := [s for s in scopes if not SCOPE_RE.fullmatch(s)]:
            messages.append(
                checks.Error(
                    f"{name} has malformed scope(s): {', '.join(malformed)}.",
                    hint="Use Twitch's scope strings, separated by spaces, e.g. "
                    "'chat:read chat:edit'.",
                    id="accounts.E004",
                )
            )
            continue
        messages.extend(_scopes_twitch_lacks(name, scopes))
    if not settings.TWITCH_SCOPES:
        messages.append(
            checks.Warning(
                "TWITCH_SCOPES is empty: tokens will only identify the user.",
                hint="Set TWITCH_SCOPES to the scopes your site's features need.",
                id="accounts.W004",
            )
        )
    return messages


def _scope_settings() -> list[tuple[str, list[str]]]:
    """Every list of scopes the site may ask for, named as an operator sets it."""
    named = [
        (name, list(getattr(settings, name)))
        for name in (
            "TWITCH_SCOPES",
            "TWITCH_OPTIONAL_SCOPES",
            "TWITCH_BOT_SCOPES",
            "TWITCH_BOT_OPTIONAL_SCOPES",
        )
    ]
    extra = settings.TWITCH_EXTRA_ROLES
    for role, declared in extra.items() if isinstance(extra, dict) else []:
        for key in ("scopes", "optional_scopes"):
            scopes = declared.get(key, []) if isinstance(declared, dict) else []
            if isinstance(scopes, list | tuple) and all(
                isinstance(s, str) for s in scopes
            ):
                named.append((f"TWITCH_EXTRA_ROLES[{role!r}][{key!r}]", list(scopes)))
    return named


@checks.register()
def check_extra_roles(**kwargs: Any) -> list[checks.CheckMessage]:
    """TWITCH_EXTRA_ROLES: {name: {"label": str, "scopes": [...],
    "optional_scopes": [...]}} (accounts/roles.py)."""
    extra = settings.TWITCH_EXTRA_ROLES
    hint = (
        'For example {"editor": {"label": "Editor account", "scopes": '
        '["channel:manage:broadcast"], "optional_scopes": []}}; see accounts/roles.py.'
    )
    if not isinstance(extra, dict):
        return [
            checks.Error(
                "TWITCH_EXTRA_ROLES must be a dict of role name to its declaration.",
                hint=hint,
                id="accounts.E013",
            )
        ]
    messages: list[checks.CheckMessage] = []
    for name, declared in extra.items():
        problem = None
        if not isinstance(name, str) or not roles.ROLE_NAME_RE.fullmatch(name):
            problem = "is not a role name (lowercase letters, digits, _; 32 at most)"
        elif name in (roles.DEFAULT_ROLE, roles.BOT_ROLE):
            problem = "is built in (TWITCH_SCOPES, TWITCH_BOT_SCOPES)"
        elif not isinstance(declared, dict) or set(declared) - {
            "label",
            "scopes",
            "optional_scopes",
        }:
            problem = "must map to a dict of label, scopes and optional_scopes"
        elif not all(
            isinstance(declared.get(key, []), list | tuple)
            and all(isinstance(s, str) for s in declared.get(key, []))
            for key in ("scopes", "optional_scopes")
        ):
            problem = "has scopes that are not a list of strings"
        if problem:
            messages.append(
                checks.Error(
                    f"TWITCH_EXTRA_ROLES: {name!r} {problem}.",
                    hint=hint,
                    id="accounts.E013",
                )
            )
    return messages


@checks.register()
def check_roles_switched_on(**kwargs: Any) -> list[checks.CheckMessage]:
    """Role settings that do nothing, most likely by mistake."""
    messages: list[checks.CheckMessage] = []
    if settings.TWITCH_BOT_OPTIONAL_SCOPES and not settings.TWITCH_BOT_SCOPES:
        messages.append(
            checks.Warning(
                "TWITCH_BOT_OPTIONAL_SCOPES is set but TWITCH_BOT_SCOPES is empty, so "
                "the bot role is off.",
                hint="Set TWITCH_BOT_SCOPES (e.g. 'user:bot user:read:chat "
                "user:write:chat') to switch the bot role on.",
                id="accounts.W016",
            )
        )
    extra = settings.TWITCH_EXTRA_ROLES
    for name, declared in extra.items() if isinstance(extra, dict) else []:
        if isinstance(declared, dict) and not declared.get("scopes"):
            messages.append(
                checks.Warning(
                    f"TWITCH_EXTRA_ROLES: {name!r} asks for no scopes, so its "
                    "connections can only say who the account is.",
                    hint="Give it the scopes the code using that role needs.",
                    id="accounts.W016",
                )
            )
    return messages


def _scopes_twitch_lacks(name: str, scopes: list[str]) -> list[checks.CheckMessage]:
    """Scopes Twitch refuses (never had, or removed) are errors: Connect would fail
    in production. Deprecated ones are a warning. A scope Twitch has and twitchAPI
    does not know is fine: it is requested and stored all the same."""
    status = twitch_scopes.status
    messages: list[checks.CheckMessage] = []
    if unknown := [s for s in scopes if status(s) is None]:
        named = ", ".join(_with_guess(s) for s in unknown)
        messages.append(
            checks.Error(
                f"{name} has scope(s) Twitch does not have: {named}.",
                hint="Twitch refuses the whole authorization for one unknown scope. "
                f"Use a scope from {twitch_scopes.SOURCE} (as read on "
                f"{twitch_scopes.READ_ON}; accounts/twitch/scopes.py).",
                id="accounts.E011",
            )
        )
    removed = [twitch_scopes.SCOPES[s] for s in scopes if status(s) == "removed"]
    if removed:
        messages.append(
            checks.Error(
                f"{name} has scope(s) Twitch has removed: "
                f"{', '.join(f'{s.name} (since {s.since})' for s in removed)}.",
                hint="Twitch refuses the whole authorization for them. Use their "
                f"successors from {twitch_scopes.SOURCE}.",
                id="accounts.E012",
            )
        )
    deprecated = [twitch_scopes.SCOPES[s] for s in scopes if status(s) == "deprecated"]
    if deprecated:
        messages.append(
            checks.Warning(
                f"{name} has scope(s) Twitch has deprecated: "
                f"{', '.join(f'{s.name} (since {s.since})' for s in deprecated)}.",
                hint="Twitch no longer documents them and may start refusing them "
                "(and with them the whole authorization); drop them.",
                id="accounts.W013",
            )
        )
    return messages


def _with_guess(scope: str) -> str:
    """'chat:raed (did you mean chat:read?)': most unknown scopes are typos."""
    current = [s.name for s in twitch_scopes.SCOPES.values() if s.status == "current"]
    close = difflib.get_close_matches(scope, current, n=1)
    return f"{scope} (did you mean {close[0]}?)" if close else scope


@checks.register(checks.Tags.security)
def check_encryption_keys(**kwargs: Any) -> list[checks.CheckMessage]:
    keys = settings.TOKEN_ENCRYPTION_KEYS
    if not keys:
        return [
            checks.Error(
                "TOKEN_ENCRYPTION_KEYS is not set: Twitch tokens cannot be stored "
                "encrypted.",
                hint='Generate a key with: python -c "from cryptography.fernet import '
                'Fernet; print(Fernet.generate_key().decode())"',
                id="accounts.E006",
            )
        ]
    return [
        checks.Error(
            f"TOKEN_ENCRYPTION_KEYS: {problem}.",
            hint="Each comma-separated key must be 32 url-safe base64-encoded bytes, "
            "as made by Fernet.generate_key().",
            id="accounts.E005",
        )
        for problem in crypto.key_errors(keys)
    ]


@checks.register()
def check_base_urls(**kwargs: Any) -> list[checks.CheckMessage]:
    errors = []
    for name in ("TWITCH_AUTH_BASE_URL", "TWITCH_API_BASE_URL"):
        url = getattr(settings, name)
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc or url[-1] != "/":
            errors.append(
                checks.Error(
                    f"{name} must be an absolute http(s) URL ending in '/', "
                    f"not {url!r}.",
                    hint="Leave it unset for Twitch itself.",
                    id="accounts.E007",
                )
            )
    return errors


@checks.register(checks.Tags.security, deploy=True)
def check_https_to_twitch(**kwargs: Any) -> list[checks.CheckMessage]:
    """Outside DEBUG, Twitch is reached and returned to over HTTPS only: the code,
    the client secret and every token travel on these URLs."""
    if settings.DEBUG:
        return []
    warnings = []
    if urlsplit(settings.TWITCH_REDIRECT_URI).scheme == "http":
        warnings.append(
            checks.Warning(
                "TWITCH_REDIRECT_URI is http://: the OAuth code reaches the site "
                "unencrypted.",
                hint="Use an https:// URL (Twitch allows http only for localhost).",
                id="accounts.W006",
            )
        )
    for name in ("TWITCH_AUTH_BASE_URL", "TWITCH_API_BASE_URL"):
        if urlsplit(getattr(settings, name)).scheme == "http":
            warnings.append(
                checks.Warning(
                    f"{name} is http://: the client secret and tokens would travel "
                    "unencrypted.",
                    hint="Leave it unset for Twitch itself (https).",
                    id="accounts.W007",
                )
            )
    return warnings


@checks.register(checks.Tags.staticfiles, deploy=True)
def check_static_files_collected(**kwargs: Any) -> list[checks.CheckMessage]:
    """Outside DEBUG, pages link the hashed names `collectstatic` writes down in
    STATIC_ROOT's manifest: without it, every admin page is a 500."""
    if settings.DEBUG:
        return []
    storage = import_string(settings.STORAGES["staticfiles"]["BACKEND"])
    manifest = Path(settings.STATIC_ROOT) / "staticfiles.json"
    if issubclass(storage, ManifestFilesMixin) and not manifest.exists():
        return [
            checks.Warning(
                f"{manifest} does not exist: admin pages will fail until static "
                "files are collected.",
                hint="Run `manage.py collectstatic --noinput` as part of each deploy.",
                id="accounts.W011",
            )
        ]
    return []


@checks.register()
def check_spool_readable(**kwargs: Any) -> list[checks.CheckMessage]:
    """Token pairs set aside because no configured key decrypts them: Twitch may
    have rotated the refresh tokens they replaced, so they are the only working
    copies until a key reads them."""
    if not (count := spool.unreadable_count()):
        return []
    return [
        checks.Warning(
            f"{count} token pair(s) in TOKEN_SPOOL_DIR cannot be decrypted with "
            "TOKEN_ENCRYPTION_KEYS; they are kept aside until a key reads them.",
            hint="Put the key they were written with back in TOKEN_ENCRYPTION_KEYS "
            f"(after the current one) and run refresh_tokens; delete "
            f"{spool.directory()}/*{spool.UNREADABLE_SUFFIX} only to give them up.",
            id="accounts.W012",
        )
    ]


@checks.register()
def check_validation_interval(**kwargs: Any) -> list[checks.CheckMessage]:
    """Twitch requires every kept token to be validated at least once an hour, and
    `refresh_tokens` runs only every few minutes on top of the interval."""
    after = settings.TOKEN_VALIDATE_AFTER
    if timedelta(minutes=1) <= after < timedelta(hours=1):
        return []
    return [
        checks.Error(
            "TOKEN_VALIDATE_AFTER_MINUTES must be at least 1 and under 60 (Twitch "
            "requires a validation at least hourly), not "
            f"{after.total_seconds() / 60:g}.",
            hint="Keep it plus cron's interval under an hour: 40 with cron every "
            "15 minutes, the default.",
            id="accounts.E010",
        )
    ]
