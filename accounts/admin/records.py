"""The audit trail, EventSub revocations, and each user's page with their Twitch
connections: read-only records for staff. Other apps' admins (groups, django-axes'
sign-in records) get the same guard on URL lookups."""

from __future__ import annotations

from axes.models import AccessAttempt, AccessFailureLog, AccessLog
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.contrib.auth.models import Group
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone

from accounts.admin.filters import (
    SECRETS,
    ReadOnlyInline,
    SafeLookups,
    TokenRoleFilter,
    scope_list,
)
from accounts.db import writer_turn
from accounts.models import (
    EventSubMessage,
    EventSubRevocation,
    TokenEvent,
    TwitchToken,
)
from accounts.roles import role_label


@admin.register(TokenEvent)
class TokenEventAdmin(SafeLookups, admin.ModelAdmin):
    list_display = [
        "created_at",
        "token",
        "role",
        "action",
        "outcome",
        "source",
        "actor",
        "detail",
    ]
    list_filter = ["action", "outcome", "source", TokenRoleFilter]
    search_fields = ["token__login", "=token__twitch_user_id", "token__user__username"]
    search_help_text = "Twitch login, Twitch user id or username."
    fields = list_display
    readonly_fields = fields

    @admin.display(description="Role", ordering="token__role")
    def role(self, event: TokenEvent) -> str:
        return role_label(event.token.role)

    def get_queryset(self, request: HttpRequest) -> QuerySet[TokenEvent]:
        return (
            super()
            .get_queryset(request)
            .select_related("token", "actor")
            .defer(*(f"token__{secret}" for secret in SECRETS))
        )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(
        self, request: HttpRequest, obj: TokenEvent | None = None
    ) -> bool:
        return False

    # Deletion keeps Django's default (the delete permission, which only superusers
    # hold unless granted): deleting a user cascades to their token and its events,
    # and the admin refuses any cascade into a model whose admin denies deletion.


@admin.register(EventSubRevocation)
class EventSubRevocationAdmin(SafeLookups, admin.ModelAdmin):
    """What Twitch said when it revoked a subscription: disconnects made on Twitch
    are seen only at the next validation until `manage.py eventsub subscribe`."""

    list_display = ["received_at", "subscription_type", "reason", "subscription_id"]
    list_filter = ["reason"]
    fields = [*list_display, "subscription_version", "condition"]
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(
        self, request: HttpRequest, obj: EventSubRevocation | None = None
    ) -> bool:
        return False


@admin.register(EventSubMessage)
class EventSubMessageAdmin(SafeLookups, admin.ModelAdmin):
    """What Twitch sent to the webhook, kept TWITCH_EVENTSUB_KEEP_DAYS once
    handled: whether it was handled, its retries, and the event itself. A
    message given up on can be tried again (`manage.py eventsub process` does)."""

    list_display = [
        "received_at",
        "message_type",
        "subscription_type",
        "status",
        "attempts",
        "last_error",
        "message_id",
    ]
    list_filter = ["status", "message_type", "subscription_type"]
    search_fields = ["=message_id", "=subscription_id"]
    search_help_text = "Message id or subscription id."
    fields = [
        "received_at",
        "message_id",
        "message_type",
        "subscription_type",
        "subscription_version",
        "subscription_id",
        "status",
        "attempts",
        "next_attempt_at",
        "handled_at",
        "done",
        "last_error",
        "body",
    ]
    readonly_fields = fields
    actions = ["retry_messages"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(
        self, request: HttpRequest, obj: EventSubMessage | None = None
    ) -> bool:
        # The retry action needs it (obj is None); a message is never edited.
        return obj is None and super().has_change_permission(request)

    @admin.action(permissions=["change"], description="Handle selected messages again")
    def retry_messages(
        self, request: HttpRequest, queryset: QuerySet[EventSubMessage]
    ) -> None:
        waiting = queryset.exclude(status=EventSubMessage.Status.HANDLED)
        # A message a worker is handling now is left to it: clearing its claim
        # would let a second worker run its handlers at the same time.
        with writer_turn():
            count = waiting.exclude(claimed_until__gt=timezone.now()).update(
                status=EventSubMessage.Status.PENDING,
                attempts=0,
                next_attempt_at=None,
                claimed_until=None,
                claim="",
            )
        busy = waiting.filter(claimed_until__gt=timezone.now()).count()
        message = f"{count} message(s) will be handled at the next cron run."
        if busy:
            message += f" {busy} being handled now left alone."
        self.message_user(request, message)


class TwitchConnectionInline(ReadOnlyInline, admin.StackedInline):
    model = TwitchToken
    verbose_name = "Twitch connection"
    fields = [
        "role_name",
        "login",
        "twitch_user_id",
        "status",
        scope_list,
        "expires_at",
        "last_refreshed_at",
        "last_validated_at",
        "last_error",
    ]
    readonly_fields = fields
    show_change_link = True

    @admin.display(description="Role")
    def role_name(self, token: TwitchToken) -> str:
        return token.role_label

    def get_queryset(self, request: HttpRequest) -> QuerySet[TwitchToken]:
        # The person's own account first, then the others by name.
        return super().get_queryset(request).defer(*SECRETS).own_first("role")


User = get_user_model()
admin.site.unregister(User)


# The configured user model's admin, with the connections shown on each user's page.
@admin.register(User)
class UserAdmin(SafeLookups, BaseUserAdmin):
    inlines = [*BaseUserAdmin.inlines, TwitchConnectionInline]


# Their list pages take lookups from the URL as ours do: a malformed regular
# expression or a NUL would be a 500 there on PostgreSQL, a twelve-digit year in
# the date hierarchy on both databases.
for model in [Group, AccessAttempt, AccessLog, AccessFailureLog]:
    if admin.site.is_registered(model):
        registered = type(admin.site.get_model_admin(model))
        admin.site.unregister(model)
        admin.site.register(
            model, type(registered.__name__, (SafeLookups, registered), {})
        )
