"""What staff may look up and filter by in the admin, and the read-only inline
every page of ours builds on. No URL may reach a stored secret."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib import admin
from django.db.models import QuerySet
from django.db.models.constants import LOOKUP_SEP
from django.http import HttpRequest
from django.utils import timezone

from accounts.models import TwitchToken

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


class SafeLookups:
    """Refuse URL lookups that touch a secret, anywhere along the path, or use a
    regular expression; Django answers those with 400 (DisallowedModelAdminLookup)."""

    def lookup_allowed(
        self, lookup: str, value: str, request: HttpRequest | None = None
    ) -> bool:
        parts = set(lookup.split(LOOKUP_SEP))
        if parts & UNFILTERABLE or parts & UNSAFE_LOOKUPS:
            return False
        if "\x00" in str(value):
            return False  # PostgreSQL refuses NUL in text: a 400, not a 500
        return super().lookup_allowed(lookup, value, request)  # type: ignore[misc]


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
        return [
            (scope, scope) for scope in sorted(present | set(settings.TWITCH_SCOPES))
        ]

    def queryset(
        self, request: HttpRequest, queryset: QuerySet[TwitchToken]
    ) -> QuerySet[TwitchToken]:
        if not self.value():
            return queryset
        # Containment on a JSON list is not portable (SQLite has none), but both
        # databases store the list as JSON text, where a scope appears quoted: the
        # quotes keep "user:edit" from matching "user:edit:follows".
        return queryset.filter(scopes__icontains=json.dumps(self.value()))


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
