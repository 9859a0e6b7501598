"""What staff may look up and filter by in the admin, and the read-only inline
every page of ours builds on. No URL may reach a stored secret."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from django.contrib import admin
from django.core.exceptions import FieldDoesNotExist
from django.db.models import JSONField, Model, QuerySet
from django.db.models.constants import LOOKUP_SEP
from django.http import HttpRequest
from django.utils import timezone

from accounts import roles
from accounts.models import TwitchToken
from accounts.twitch import scopes as twitch_scopes

SECRETS = ("access_token", "refresh_token")


@admin.display(description="Scopes")
def scope_list(token: TwitchToken) -> str | None:
    return ", ".join(token.scopes or []) or None


# Columns no URL may filter on: a view-only staff member could otherwise read stored
# ciphertext prefix by prefix (?refresh_token__startswith=gAAAA...), or the lease.
UNFILTERABLE = frozenset({*SECRETS, "claimed_until", "password"})
# Regular expressions are the database's to parse: a malformed one is a 500 on
# PostgreSQL, and none of our filters needs them.
UNSAFE_LOOKUPS = frozenset({"regex", "iregex"})
# Parts of a date a URL may filter on (expires_at__year=2026); a number no date can
# have is a 500 when the list is fetched (a year past 9999 overflows, a year 0 does
# not exist), and so is the admin's date hierarchy reading one with int().
DATE_PARTS = frozenset(
    {"year", "iso_year", "quarter", "month", "week", "week_day", "iso_week_day"}
    | {"day", "hour", "minute", "second"}
)
# JSON containment: SQLite has none (a 500 there), and the scope filter is the
# portable way to ask which connections have a scope.
JSON_CONTAINMENT = frozenset({"contains", "contained_by"})


class SafeLookups:
    """Refuse URL lookups that touch a secret, anywhere along the path, use a
    regular expression, or that no database can answer; Django answers those with
    400 (DisallowedModelAdminLookup), where they would otherwise be a 500."""

    model: type[Model]

    def lookup_allowed(
        self, lookup: str, value: str, request: HttpRequest | None = None
    ) -> bool:
        path = lookup.split(LOOKUP_SEP)
        parts = set(path)
        if parts & UNFILTERABLE or parts & UNSAFE_LOOKUPS:
            return False
        if "\x00" in str(value):
            return False  # PostgreSQL refuses NUL in text: a 400, not a 500
        if not _a_date_can_have(path, value):
            return False
        if parts & JSON_CONTAINMENT and _is_json(self.model, path[0]):
            return False
        return super().lookup_allowed(lookup, value, request)  # type: ignore[misc]


def _a_date_can_have(path: list[str], value: str) -> bool:
    part = next((name for name in reversed(path) if name in DATE_PARTS), None)
    if part is None:
        return True
    try:
        number = int(value)
    except ValueError:
        return True  # not a number at all: Django's own "invalid filter" answer
    return (1 if part in ("year", "iso_year") else 0) <= number <= 9999


def _is_json(model: type[Model], name: str) -> bool:
    try:
        return isinstance(model._meta.get_field(name), JSONField)
    except FieldDoesNotExist:
        return False


class MissingScopesFilter(admin.SimpleListFilter):
    title = "required scopes"
    parameter_name = "required_scopes"

    def lookups(
        self, request: HttpRequest, model_admin: admin.ModelAdmin
    ) -> list[tuple[str, str]]:
        return [("missing", "Missing required scopes")]

    def queryset(
        self, request: HttpRequest, queryset: QuerySet[TwitchToken]
    ) -> QuerySet[TwitchToken]:
        if self.value() != "missing":
            return queryset
        live = queryset.exclude(status=TwitchToken.Status.REVOKED)
        return live.missing_required_scopes()


class ScopeFilter(admin.SimpleListFilter):
    title = "scope"
    parameter_name = "scope"

    def lookups(
        self, request: HttpRequest, model_admin: admin.ModelAdmin
    ) -> list[tuple[str, str]]:
        granted = TwitchToken.objects.order_by().values_list("scopes", flat=True)
        present = {scope for scopes in granted.distinct() for scope in scopes or []}
        required = {scope for role in roles.enabled_roles() for scope in role.scopes}
        return [(scope, _scope_label(scope)) for scope in sorted(present | required)]

    def queryset(
        self, request: HttpRequest, queryset: QuerySet[TwitchToken]
    ) -> QuerySet[TwitchToken]:
        if not self.value():
            return queryset
        # Containment on a JSON list is not portable (SQLite has none), but both
        # databases store the list as JSON text, where a scope appears quoted: the
        # quotes keep "user:edit" from matching "user:edit:follows".
        return queryset.filter(scopes__icontains=json.dumps(self.value()))


def _scope_label(scope: str) -> str:
    """The scope, marked when Twitch no longer has it (or never had)."""
    status = twitch_scopes.status(scope)
    if status is None:
        return f"{scope} (unknown to Twitch)"
    if status != twitch_scopes.Status.CURRENT:
        return f"{scope} ({status} since {twitch_scopes.SCOPES[scope].since})"
    return scope


class RoleFilter(admin.SimpleListFilter):
    """The roles this site has, and any other a row still has, by their labels."""

    title = "role"
    parameter_name = "role"
    field_path = "role"

    def lookups(
        self, request: HttpRequest, model_admin: admin.ModelAdmin
    ) -> list[tuple[str, str]]:
        held = TwitchToken.objects.order_by().values_list("role", flat=True)
        named = [role.name for role in roles.enabled_roles()]
        others = sorted(set(held.distinct()) - set(named))
        return [(name, roles.role_label(name)) for name in [*named, *others]]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if not self.value():
            return queryset
        return queryset.filter(**{self.field_path: self.value()})


class TokenRoleFilter(RoleFilter):
    """The role filter on the audit trail: the role of each event's connection."""

    field_path = "token__role"


class ExpiryFilter(admin.SimpleListFilter):
    title = "access token expiry"
    parameter_name = "expiry"

    def lookups(
        self, request: HttpRequest, model_admin: admin.ModelAdmin
    ) -> list[tuple[str, str]]:
        return [("hour", "Within the hour"), ("expired", "Already expired")]

    def queryset(
        self, request: HttpRequest, queryset: QuerySet[TwitchToken]
    ) -> QuerySet[TwitchToken]:
        now = timezone.now()
        # A revoked row holds no token, so nothing of it expires.
        live = queryset.exclude(status=TwitchToken.Status.REVOKED)
        if self.value() == "hour":
            return live.filter(
                expires_at__gt=now, expires_at__lte=now + timedelta(hours=1)
            )
        if self.value() == "expired":
            return live.filter(expires_at__lte=now)
        return queryset


class ReadOnlyInline(admin.options.InlineModelAdmin):
    """An inline that shows rows and never adds, changes or deletes them."""

    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
