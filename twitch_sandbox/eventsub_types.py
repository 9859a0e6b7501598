"""The EventSub subscription types the sandbox knows, as Twitch documents them
("EventSub subscription types"): each version's condition fields, and which
user named in the condition must have authorized the app with which scopes.

Twitch checks that authorization when a webhook subscription is created with
an app access token; so does the sandbox, against the user's live grants.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from .ledger import Rejected

SECRET_LENGTHS = range(10, 101)
# user id -> the scopes that user granted the app (None: no live grant).
Authorizations = Callable[[str], "frozenset[str] | None"]


@dataclass(frozen=True)
class TypeSpec:
    """One type and version."""

    name: str
    version: str
    # Every condition field Twitch requires; ``one_of`` lists fields of which
    # exactly one is given instead (channel.raid's from/to).
    fields: tuple[str, ...]
    # Condition field -> scopes the user it names must have granted the app.
    scopes: dict[str, tuple[str, ...]] = field(default_factory=dict)
    one_of: tuple[str, ...] = ()
    # Fields that must name the same user (channel.follow's moderator is the
    # broadcaster in the sandbox, which has no moderators).
    same_user: tuple[str, ...] = ()

    @property
    def needs_authorization(self) -> bool:
        return bool(self.scopes)


def _spec(name: str, version: str, *fields: str, **kwargs: object) -> TypeSpec:
    return TypeSpec(name, version, tuple(fields), **kwargs)  # type: ignore[arg-type]


BROADCASTER = "broadcaster_user_id"
SUBSCRIPTIONS_READ = ("channel:read:subscriptions",)

TYPES: dict[tuple[str, str], TypeSpec] = {
    (spec.name, spec.version): spec
    for spec in [
        _spec("user.authorization.revoke", "1", "client_id"),
        _spec("user.authorization.grant", "1", "client_id"),
        _spec("user.update", "1", "user_id"),
        _spec("stream.online", "1", BROADCASTER),
        _spec("stream.offline", "1", BROADCASTER),
        _spec("channel.update", "2", BROADCASTER),
        _spec(
            "channel.follow",
            "2",
            BROADCASTER,
            "moderator_user_id",
            scopes={"moderator_user_id": ("moderator:read:followers",)},
            same_user=(BROADCASTER, "moderator_user_id"),
        ),
        _spec(
            "channel.subscribe",
            "1",
            BROADCASTER,
            scopes={BROADCASTER: SUBSCRIPTIONS_READ},
        ),
        _spec(
            "channel.subscription.gift",
            "1",
            BROADCASTER,
            scopes={BROADCASTER: SUBSCRIPTIONS_READ},
        ),
        _spec(
            "channel.subscription.message",
            "1",
            BROADCASTER,
            scopes={BROADCASTER: SUBSCRIPTIONS_READ},
        ),
        _spec("channel.cheer", "1", BROADCASTER, scopes={BROADCASTER: ("bits:read",)}),
        _spec(
            "channel.raid",
            "1",
            one_of=("from_broadcaster_user_id", "to_broadcaster_user_id"),
        ),
        # Read as the bot (user_id): it needs user:read:chat, and with an app
        # token user:bot too; the broadcaster channel:bot (or the bot is one of
        # their moderators, which the sandbox does not model).
        _spec(
            "channel.chat.message",
            "1",
            BROADCASTER,
            "user_id",
            scopes={
                "user_id": ("user:read:chat", "user:bot"),
                BROADCASTER: ("channel:bot",),
            },
        ),
    ]
}


def known(name: str) -> list[str]:
    """The versions of a type the sandbox knows."""
    return sorted(version for kind, version in TYPES if kind == name)


# Checking a Create EventSub Subscription body ----------------------------------


def check_create(
    body: object, *, client_id: str, insecure: bool
) -> tuple[TypeSpec, dict[str, str], str, str]:
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object")
    kind, version = body.get("type"), body.get("version")
    if not isinstance(kind, str) or not kind:
        raise bad_request('Missing required parameter "type"')
    if not isinstance(version, str) or not version:
        raise bad_request('Missing required parameter "version"')
    spec = TYPES.get((kind, version))
    if spec is None:
        versions = known(kind)
        raise bad_request(
            f"type {kind!r} version {version!r} is not supported"
            + (f" (versions: {', '.join(versions)})" if versions else "")
        )
    condition = check_condition(spec, body.get("condition"), client_id=client_id)
    transport = body.get("transport")
    if not isinstance(transport, dict) or transport.get("method") != "webhook":
        raise bad_request('transport method must be "webhook"')
    secret = transport.get("secret")
    if (
        not isinstance(secret, str)
        or len(secret) not in SECRET_LENGTHS
        or not secret.isascii()
    ):
        raise bad_request("transport secret must be 10 to 100 ASCII characters")
    callback = transport.get("callback")
    if not isinstance(callback, str) or not acceptable_callback(
        callback, insecure=insecure
    ):
        raise bad_request("transport callback must be an https URL on port 443")
    return spec, condition, callback, secret


def check_condition(
    spec: TypeSpec, condition: object, *, client_id: str
) -> dict[str, str]:
    if not isinstance(condition, dict) or not all(
        isinstance(value, str) and value for value in condition.values()
    ):
        raise bad_request("condition must be an object of non-empty strings")
    given = set(condition)
    allowed = set(spec.fields) | set(spec.one_of)
    missing = set(spec.fields) - given
    chosen = given & set(spec.one_of)
    if missing or not given <= allowed or (spec.one_of and len(chosen) != 1):
        fields = ", ".join(spec.fields or (f"one of {' or '.join(spec.one_of)}",))
        raise bad_request(f"condition for {spec.name} must have exactly: {fields}")
    if "client_id" in condition and condition["client_id"] != client_id:
        raise bad_request(
            'condition must be {"client_id": <the client id of the token>}'
        )
    if spec.same_user and len({condition[f] for f in spec.same_user}) != 1:
        raise Rejected(
            403, f"{spec.same_user[1]} is not a moderator of the broadcaster"
        )
    return dict(condition)


def check_authorized(
    spec: TypeSpec, condition: dict[str, str], authorizations: Authorizations
) -> None:
    """Twitch's rule for an app access token: each user the condition names for
    a scope must have authorized this client id with it."""
    for field_name, scopes in spec.scopes.items():
        granted = authorizations(condition[field_name])
        if granted is None or not set(scopes) <= granted:
            raise Rejected(403, "subscription missing proper authorization")


def cost_of(
    spec: TypeSpec, condition: dict[str, str], authorizations: Authorizations
) -> int:
    """0 when the type needs a user's authorization (which it has, or creating
    it failed), or a user in the condition has authorized the app; else 1."""
    if spec.needs_authorization or "client_id" in condition:
        return 0
    users = [v for k, v in condition.items() if k.endswith("user_id")]
    return 0 if any(authorizations(user) is not None for user in users) else 1


def acceptable_callback(callback: str, *, insecure: bool) -> bool:
    parts = urlsplit(callback)
    try:
        port = parts.port
    except ValueError:
        return False
    if not parts.hostname:
        return False
    if parts.scheme == "https" and port in (None, 443):
        return True
    # For a test's or a developer's local http site.
    return insecure and parts.scheme in ("http", "https")


def bad_request(message: str) -> Rejected:
    return Rejected(400, message, error="Bad Request")
