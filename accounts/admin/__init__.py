"""Staff's view of the Twitch connections, and the three things staff may do to them.

No page ever shows, or even decrypts, an access or refresh token: the querysets
defer both (revoking reads them inside `services`, to hand them to Twitch). Nothing
is edited by hand either; revoke, refresh and validate go through `services`, which
record each one as a `TokenEvent`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from enum import Enum
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.auth import get_permission_codename
from django.db import DatabaseError
from django.db.models import QuerySet
from django.forms.models import BaseInlineFormSet
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html

from accounts import services

# The read-only records (audit trail, revocations, users) register on import.
from accounts.admin import records  # noqa: F401
from accounts.admin.filters import (
    SECRETS,
    ExpiryFilter,
    MissingScopesFilter,
    ReadOnlyInline,
    RoleFilter,
    SafeLookups,
    ScopeFilter,
    scope_list,
)
from accounts.models import TokenEvent, TwitchToken
from accounts.templatetags.twitchauth import expires_in
from accounts.tokens import engine

BADGE = (
    '<span style="background: {}; color: #fff; border-radius: 4px; '
    'padding: 1px 6px; white-space: nowrap">{}</span>'
)
MISSING_SCOPES_COLOUR = "#7a5c00"
STATUS_COLOURS = {
    TwitchToken.Status.ACTIVE: "#2e7d32",
    TwitchToken.Status.NEEDS_RECONNECT: "#e65100",
    TwitchToken.Status.REVOKED: "#616161",
}
# Hourly validation adds a row an hour per token; the page shows the latest ones and
# links to the rest.
EVENTS_SHOWN = 50

# The order the message lists them in; the revoke outcomes' values read well as is.
REVOKE_LABELS = {
    outcome: outcome.value
    for outcome in [
        services.RevokeOutcome.REVOKED,
        services.RevokeOutcome.ALREADY_INVALID,
        services.RevokeOutcome.ALREADY_REVOKED,
        services.RevokeOutcome.REVOKED_LOCALLY,
    ]
}
# Admin actions (revoke, refresh, validate) start Twitch calls only this long into
# the request.
ACTION_START_BUDGET = 2.0  # seconds
DATABASE_DOWN = (
    "The database refused writes, so nothing was done; what Twitch already answered "
    "is kept for the next cron run. Try again in a minute."
)
MAINTAIN_LABELS = {
    engine.Outcome.REFRESHED: "refreshed",
    engine.Outcome.VALIDATED: "validated",
    engine.Outcome.NEEDS_RECONNECT: "rejected by Twitch (the user must reconnect)",
    engine.Outcome.FAILED: "failed (see Last error; try again later)",
    engine.Outcome.SKIPPED: "skipped (not active, or busy in another run)",
}


class LatestEventsFormSet(BaseInlineFormSet):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Sliced once here, not in get_queryset(), which the formset calls per form.
        self.queryset = self.queryset[:EVENTS_SHOWN]


class TokenEventInline(ReadOnlyInline, admin.TabularInline):
    model = TokenEvent
    formset = LatestEventsFormSet
    verbose_name_plural = f"Audit trail (latest {EVENTS_SHOWN})"
    fields = ["created_at", "action", "outcome", "source", "actor", "detail"]
    readonly_fields = fields
    ordering = ["-created_at", "-pk"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[TokenEvent]:
        return super().get_queryset(request).select_related("actor")

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # The trail is part of the token's page: whoever may see the token sees it.
        return self.admin_site.get_model_admin(TwitchToken).has_view_permission(
            request, obj
        )


@admin.register(TwitchToken)
class TwitchTokenAdmin(SafeLookups, admin.ModelAdmin):
    list_display = [
        "user",
        "role_name",
        "twitch_account",
        "status_badge",
        scope_list,
        "expires",
        "last_refreshed_at",
        "last_validated_at",
        "last_error",
    ]
    list_filter = ["status", RoleFilter, MissingScopesFilter, ScopeFilter, ExpiryFilter]
    list_select_related = ["user"]
    list_per_page = 50
    ordering = ["login", "pk"]
    search_fields = ["user__username", "user__email", "login", "=twitch_user_id"]
    search_help_text = "Username, e-mail, Twitch login or Twitch user id."
    # A whitelist: a field added to the model later is not shown until listed here;
    # the secrets are excluded outright besides.
    fieldsets = [
        (
            None,
            {
                "fields": [
                    "user",
                    "role_name",
                    "login",
                    "twitch_user_id",
                    "status_badge",
                    scope_list,
                ]
            },
        ),
        (
            "Access token",
            {
                "fields": [
                    "expires_at",
                    "expires",
                    "last_refreshed_at",
                    "last_validated_at",
                    "last_error",
                ]
            },
        ),
        ("Record", {"fields": ["created_at", "updated_at", "all_events"]}),
    ]
    readonly_fields = [name for _, options in fieldsets for name in options["fields"]]
    exclude = [*SECRETS, "claimed_until"]
    inlines = [TokenEventInline]
    actions = ["revoke_tokens", "refresh_tokens", "validate_tokens"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[TwitchToken]:
        return super().get_queryset(request).defer(*SECRETS)

    def has_add_permission(self, request: HttpRequest) -> bool:
        # Tokens only come from a user connecting at Twitch.
        return False

    def has_change_permission(
        self, request: HttpRequest, obj: TwitchToken | None = None
    ) -> bool:
        # The change permission grants the refresh and validate actions (obj is
        # None), never editing a row by hand: each token's page is view-only.
        return obj is None and super().has_change_permission(request)

    def has_delete_permission(
        self, request: HttpRequest, obj: TwitchToken | None = None
    ) -> bool:
        # Deleting a row that still holds a token would forget it without telling
        # Twitch: revoke first. A revoked row may go (with its user, say).
        return (
            obj is not None
            and obj.status == TwitchToken.Status.REVOKED
            and super().has_delete_permission(request, obj)
        )

    def has_revoke_permission(self, request: HttpRequest) -> bool:
        codename = get_permission_codename("revoke", self.opts)
        return request.user.has_perm(f"{self.opts.app_label}.{codename}")

    @admin.display(description="Role", ordering="role")
    def role_name(self, token: TwitchToken) -> str:
        return token.role_label

    @admin.display(description="Twitch login", ordering="login")
    def twitch_account(self, token: TwitchToken) -> str:
        return f"{token.login} ({token.twitch_user_id})"

    @admin.display(description="Status", ordering="status")
    def status_badge(self, token: TwitchToken) -> str:
        badge = format_html(
            BADGE, STATUS_COLOURS.get(token.status, "#000"), token.get_status_display()
        )
        if token.status == TwitchToken.Status.ACTIVE and token.missing_scopes:
            # Healthy, but granted before its role's scopes grew.
            badge += format_html(
                " " + BADGE, MISSING_SCOPES_COLOUR, "Missing required scopes"
            )
        return badge

    @admin.display(description="Expires", ordering="expires_at")
    def expires(self, token: TwitchToken) -> str:
        if token.status == TwitchToken.Status.REVOKED:
            return self.get_empty_value_display()
        return expires_in(token.expires_at)

    @admin.display(description="All events")
    def all_events(self, token: TwitchToken) -> str:
        url = reverse(f"{self.admin_site.name}:accounts_tokenevent_changelist")
        count = token.events.count()
        return format_html(
            '<a href="{}?token__id__exact={}">{} event{}</a>',
            url,
            token.pk,
            count,
            "" if count == 1 else "s",
        )

    @admin.action(
        permissions=["revoke"], description="Revoke selected tokens at Twitch"
    )
    def revoke_tokens(
        self, request: HttpRequest, queryset: QuerySet[TwitchToken]
    ) -> TemplateResponse | None:
        # Django's delete_selected convention: the first POST asks, post=yes acts.
        if not request.POST.get("post"):
            return self._confirm_revocation(request, queryset)
        try:
            counts = services.revoke_tokens(
                # Secrets stay deferred: revoke_token reads each row afresh itself.
                tokens=list(queryset),
                source=TokenEvent.Source.STAFF,
                actor=request.user,
                # Started within the first two seconds, one call to Twitch each
                # (8 s at most): the request ends in about ten.
                budget=ACTION_START_BUDGET,
            )
        except DatabaseError:
            self.message_user(request, DATABASE_DOWN, messages.ERROR)
            return None
        unreachable = counts[services.RevokeOutcome.REVOKED_LOCALLY]
        left = counts[services.RevokeOutcome.NOT_STARTED]
        message = _summary(counts, REVOKE_LABELS)
        if unreachable:
            message += (
                " Twitch could not be told: those users should also disconnect the "
                "app in their Twitch settings."
            )
        if left:
            # No cron run revokes: the rest is staff's to ask for again.
            message += (
                f" {left} not revoked yet (Twitch is slow just now) and still "
                "connected: select them again and run the action to continue "
                "(those already revoked are skipped)."
            )
        self.message_user(
            request,
            message,
            messages.WARNING if unreachable or left else messages.SUCCESS,
        )
        return None

    @admin.action(permissions=["change"], description="Refresh selected tokens now")
    def refresh_tokens(
        self, request: HttpRequest, queryset: QuerySet[TwitchToken]
    ) -> None:
        self._maintain(
            request, queryset, engine.Plan(refresh_within=None, validate=False)
        )

    @admin.action(permissions=["change"], description="Validate selected tokens now")
    def validate_tokens(
        self, request: HttpRequest, queryset: QuerySet[TwitchToken]
    ) -> None:
        self._maintain(
            request, queryset, engine.Plan(refresh=False, validate_after=None)
        )

    def _maintain(
        self,
        request: HttpRequest,
        queryset: QuerySet[TwitchToken],
        plan: engine.Plan,
    ) -> None:
        """What `manage.py refresh_tokens` does, to the selected tokens only,
        within about ten seconds: what cannot start in time is left to cron."""
        try:
            report = engine.maintain_tokens(
                pks=list(queryset.values_list("pk", flat=True)),
                plan=plan,
                source=TokenEvent.Source.STAFF,
                actor=request.user,
                # One attempt each (8 s at most), started within the first two
                # seconds: the request ends in about ten.
                attempts=1,
                budget=ACTION_START_BUDGET,
                store_patience=ACTION_START_BUDGET,
            )
        except DatabaseError:
            self.message_user(request, DATABASE_DOWN, messages.ERROR)
            return
        troubled = (
            report.counts[engine.Outcome.FAILED]
            + report.counts[engine.Outcome.NEEDS_RECONNECT]
            + report.left
        )
        message = _summary(report.counts, MAINTAIN_LABELS)
        if report.left:
            done = sum(report.counts.values())
            message += (
                f" {done} done, {report.left} left for the next cron run "
                "(Twitch is slow just now)."
            )
        self.message_user(
            request, message, messages.WARNING if troubled else messages.SUCCESS
        )

    def _confirm_revocation(
        self, request: HttpRequest, queryset: QuerySet[TwitchToken]
    ) -> TemplateResponse:
        opts = self.opts
        request.current_app = self.admin_site.name
        return TemplateResponse(
            request,
            f"admin/{opts.app_label}/{opts.model_name}/revoke_confirmation.html",
            {
                **self.admin_site.each_context(request),
                "title": "Revoke Twitch tokens",
                "subtitle": None,
                "tokens": queryset.select_related("user"),
                "opts": opts,
                "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
                "media": self.media,
            },
        )


def _summary(counts: Counter[Any], labels: Mapping[Enum, str]) -> str:
    """'2 revoked, 1 already revoked.': the non-zero counts, in the labels' order."""
    return (
        ", ".join(
            f"{counts[outcome]} {label}"
            for outcome, label in labels.items()
            if counts[outcome]
        )
        + "."
    )
