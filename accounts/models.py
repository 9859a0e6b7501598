from __future__ import annotations

import json
from datetime import datetime, timedelta

from django.conf import settings
from django.db import models
from django.utils import timezone

from accounts import roles
from accounts.fields import EncryptedTextField, UndecryptableSecret


class TwitchTokenQuerySet(models.QuerySet["TwitchToken"]):
    """Which tokens are due for what. Each rule is written once, here, with its
    per-row twin on the model beside it (`TwitchToken.is_due_for_refresh`, ...)."""

    def active(self) -> TwitchTokenQuerySet:
        return self.filter(status=TwitchToken.Status.ACTIVE)

    def own_first(self, *then: str) -> TwitchTokenQuerySet:
        """A person's own account (the default role) before any other role, then
        ordered by `then`."""
        own = models.Case(models.When(role=roles.DEFAULT_ROLE, then=0), default=1)
        return self.order_by(own, *then)

    def missing_required_scopes(self) -> TwitchTokenQuerySet:
        """Connections that lack a scope their role requires (added since they were
        made). Scopes are matched quoted in the JSON text, as the admin's scope
        filter does, so that "user:edit" never matches "user:edit:follows"."""
        lacking = models.Q(pk__in=[])
        for role in roles.enabled_roles():
            for scope in role.scopes:
                lacking |= models.Q(role=role.name) & ~models.Q(
                    scopes__icontains=json.dumps(scope)
                )
        return self.filter(lacking)

    def claimable(self, *, lapsed_before: datetime) -> TwitchTokenQuerySet:
        """Tokens no run holds: never claimed, released, or whose lease lapsed
        before `lapsed_before`."""
        return self.filter(
            models.Q(claimed_until__isnull=True)
            | models.Q(claimed_until__lt=lapsed_before)
        )

    def due_for_refresh(
        self, *, within: timedelta | None, now: datetime
    ) -> TwitchTokenQuerySet:
        """Tokens that expire within `within` (None: every token). A token that
        does not expire (`expires_at` empty) is due only for "every token"."""
        if within is None:
            return self.all()
        return self.filter(expires_at__lte=now + within)

    def due_for_validation(
        self, *, after: timedelta | None, now: datetime
    ) -> TwitchTokenQuerySet:
        """Tokens last validated `after` ago or longer, or never (None: every token)."""
        if after is None:
            return self.all()
        return self.filter(
            models.Q(last_validated_at__isnull=True)
            | models.Q(last_validated_at__lte=now - after)
        )


class TwitchToken(models.Model):
    """One site user's connection to one Twitch account in one role (their own
    account, their bot's: accounts/roles.py), and its credentials."""

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        NEEDS_RECONNECT = "needs_reconnect", "Needs reconnect"
        REVOKED = "revoked", "Revoked"

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="twitch_tokens"
    )
    role = models.CharField(
        max_length=32,
        default=roles.DEFAULT_ROLE,
        help_text="What the connection is for: their own account, their bot's.",
    )
    twitch_user_id = models.CharField("Twitch user id", max_length=32, db_index=True)
    login = models.CharField("Twitch login", max_length=64)
    access_token = EncryptedTextField(blank=True)
    refresh_token = EncryptedTextField(blank=True)
    scopes = models.JSONField(default=list, help_text="As Twitch granted them.")
    expires_at = models.DateTimeField(null=True, blank=True)
    status = models.CharField(
        max_length=20, choices=Status.choices, default=Status.ACTIVE, db_index=True
    )
    last_refreshed_at = models.DateTimeField(null=True, blank=True)
    last_validated_at = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=200, blank=True)
    # A lease: while it lies in the future one worker owns this row's refresh, so
    # overlapping `refresh_tokens` runs never refresh a token twice.
    claimed_until = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = TwitchTokenQuerySet.as_manager()

    class Meta:
        verbose_name = "Twitch token"
        ordering = ["login"]
        permissions = [("revoke_twitchtoken", "Can revoke Twitch tokens at Twitch")]
        constraints = [
            # Reconnecting a role updates its row in place.
            models.UniqueConstraint(
                fields=["user", "role"], name="one_connection_per_user_and_role"
            ),
            # In each role, one Twitch account belongs to one site user. A revoked
            # row stays for the record and must not stop another user from
            # connecting that account.
            models.UniqueConstraint(
                fields=["twitch_user_id", "role"],
                condition=~models.Q(status="revoked"),
                name="one_live_connection_per_twitch_account_and_role",
            ),
        ]

    def __str__(self) -> str:
        if self.role == roles.DEFAULT_ROLE:
            return f"{self.login} ({self.twitch_user_id})"
        return f"{self.login} ({self.twitch_user_id}, {self.role_label.lower()})"

    def __repr__(self) -> str:
        # The default repr is __str__; spelt out so a secret can never creep in.
        return (
            f"<TwitchToken pk={self.pk} role={self.role} login={self.login!r} "
            f"status={self.status}>"
        )

    @property
    def is_undecryptable(self) -> bool:
        return isinstance(self.refresh_token, UndecryptableSecret) or isinstance(
            self.access_token, UndecryptableSecret
        )

    @property
    def role_label(self) -> str:
        return roles.role_label(self.role)

    @property
    def missing_scopes(self) -> list[str]:
        """Scopes its role requires that this connection was not granted."""
        role = roles.role_named(self.role)
        required = role.scopes if role is not None else ()
        return [s for s in required if s not in (self.scopes or [])]

    @property
    def is_usable(self) -> bool:
        """Active, with a token to act with: a refresh token, or (when Twitch sent
        none) an access token used while it lasts."""
        return self.status == self.Status.ACTIVE and bool(
            self.refresh_token or self.access_token
        )

    def is_due_for_refresh(self, *, within: timedelta | None, now: datetime) -> bool:
        """The row's answer to `TwitchTokenQuerySet.due_for_refresh`."""
        if within is None:
            return True
        return self.expires_at is not None and self.expires_at <= now + within

    def is_due_for_validation(self, *, after: timedelta | None, now: datetime) -> bool:
        """The row's answer to `TwitchTokenQuerySet.due_for_validation`."""
        if after is None or self.last_validated_at is None:
            return True
        return self.last_validated_at <= now - after

    def wipe_secrets(self) -> None:
        self.access_token = ""
        self.refresh_token = ""

    def mark_revoked(self, *, last_error: str = "") -> None:
        """Forget the secrets, end any lease, and save: the row stays for the record."""
        self.wipe_secrets()
        self.status = self.Status.REVOKED
        self.claimed_until = None
        self.last_error = last_error
        self.save(
            update_fields=[
                "access_token",
                "refresh_token",
                "status",
                "claimed_until",
                "last_error",
                "updated_at",
            ]
        )


class TokenEvent(models.Model):
    """The audit trail: one row per thing done to a token, by whom, and how it went."""

    class Action(models.TextChoices):
        CONNECT = "connect", "Connect"
        REFRESH = "refresh", "Refresh"
        VALIDATE = "validate", "Validate"
        REVOKE = "revoke", "Revoke"

    class Outcome(models.TextChoices):
        SUCCEEDED = "succeeded", "Succeeded"
        # Twitch answered that the credential is no good (any more).
        REJECTED = "rejected", "Rejected by Twitch"
        # Twitch could not be reached or failed; what we hold is unchanged.
        UNAVAILABLE = "unavailable", "Twitch unavailable"
        # Twitch was not asked: no configured key decrypts the stored token.
        UNDECRYPTABLE = "undecryptable", "Cannot decrypt (check the keys)"
        # Twitch was not asked, or its answer not used: a fault here (see the logs).
        ERROR = "error", "Error on this site"

    class Source(models.TextChoices):
        USER = "user", "The user"
        STAFF = "staff", "Staff (admin)"
        COMMAND = "command", "A management command"
        SITE = "site", "Site code"
        TWITCH = "twitch", "Twitch (EventSub)"

    token = models.ForeignKey(
        TwitchToken, on_delete=models.CASCADE, related_name="events"
    )
    action = models.CharField(max_length=20, choices=Action.choices)
    outcome = models.CharField(max_length=20, choices=Outcome.choices)
    source = models.CharField(max_length=20, choices=Source.choices)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        help_text="Who did it, when a person did.",
    )
    detail = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at", "-pk"]

    def __str__(self) -> str:
        return f"{self.get_action_display()} {self.get_outcome_display().lower()}"


class SpentOAuthState(models.Model):
    """An OAuth state that a callback has used.

    Pending states live in the browser's session, but two requests can read the same
    session at once; inserting here is what makes using a state atomic, even across
    processes. Rows older than the state lifetime are pruned as new ones arrive.
    """

    digest = models.CharField(max_length=64, primary_key=True)  # SHA-256 hex
    spent_at = models.DateTimeField(default=timezone.now, db_index=True)

    def __str__(self) -> str:
        return self.digest[:12]


class AppToken(models.Model):
    """The app access token (client-credentials grant) for one Twitch client id,
    shared by every process until shortly before it expires."""

    client_id = models.CharField(max_length=64, unique=True)
    access_token = EncryptedTextField(blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    # While it lies in the future one process is fetching a new token; the others
    # wait for it instead of asking Twitch too.
    claimed_until = models.DateTimeField(null=True, blank=True, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"App access token for {self.client_id}"

    def __repr__(self) -> str:
        return f"<AppToken client_id={self.client_id!r} expires_at={self.expires_at}>"


class EventSubMessage(models.Model):
    """A message Twitch posted to the EventSub webhook: the site's inbox.

    The webhook inserts the row (its only write) and answers; the message is
    handled after the answer, and again later by `manage.py eventsub process`
    while it fails or if the process died first. Twitch delivers at least once:
    the digest is the primary key, so a message id seen before is answered and
    not stored or handled again, by any worker. Handled rows are kept for
    TWITCH_EVENTSUB_KEEP_DAYS for staff to read, then pruned."""

    class Status(models.TextChoices):
        PENDING = "pending", "Waiting to be handled"
        HANDLED = "handled", "Handled"
        FAILED = "failed", "Failed; no more retries"

    # The SHA-256 of the message id (hex): ids of any length are compared whole.
    digest = models.CharField(max_length=64, primary_key=True)
    received_at = models.DateTimeField(default=timezone.now, db_index=True)
    message_id = models.CharField(max_length=100, blank=True)
    message_type = models.CharField(max_length=40, blank=True)
    subscription_type = models.CharField(max_length=100, blank=True, db_index=True)
    subscription_version = models.CharField(max_length=10, blank=True)
    subscription_id = models.CharField(max_length=100, blank=True)
    body = models.JSONField(default=dict, blank=True)
    status = models.CharField(
        max_length=20, choices=Status.choices, default=Status.PENDING, db_index=True
    )
    attempts = models.PositiveSmallIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    # A lease: while it lies in the future one worker is handling the message.
    claimed_until = models.DateTimeField(null=True, blank=True, editable=False)
    # That worker's token: each of its later writes holds only while it is still
    # the claim (a worker whose lease ran out has been taken over).
    claim = models.CharField(max_length=32, blank=True, editable=False)
    handled_at = models.DateTimeField(null=True, blank=True)
    # Handlers (by name) that are done with it, so a retry runs only the others.
    done = models.JSONField(default=list, blank=True)
    # The connections a `user.authorization.revoke` revoked (their ids), kept
    # until `token_revoked` receivers have been told of them.
    revoked_tokens = models.JSONField(default=list, blank=True)
    last_error = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["-received_at"]
        verbose_name = "EventSub message"
        indexes = [
            models.Index(
                fields=["status", "next_attempt_at"], name="eventsub_message_due"
            )
        ]

    def __str__(self) -> str:
        kind = self.subscription_type or self.message_type or "message"
        return f"{kind} {self.message_id or self.digest[:12]}"

    @property
    def event(self) -> dict:
        event = (self.body or {}).get("event")
        return event if isinstance(event, dict) else {}

    @property
    def condition(self) -> dict:
        subscription = (self.body or {}).get("subscription")
        condition = (
            subscription.get("condition") if isinstance(subscription, dict) else None
        )
        return condition if isinstance(condition, dict) else {}


class EventSubRevocation(models.Model):
    """Twitch revoked one of the site's EventSub subscriptions (with its reason):
    disconnects on Twitch are then seen only at the next validation again."""

    subscription_id = models.CharField(max_length=100)
    subscription_type = models.CharField(max_length=100)
    subscription_version = models.CharField(max_length=10, blank=True)
    condition = models.JSONField(default=dict, blank=True)
    reason = models.CharField(max_length=100)
    received_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-received_at"]
        verbose_name = "EventSub subscription revoked by Twitch"
        verbose_name_plural = "EventSub subscriptions revoked by Twitch"

    def __str__(self) -> str:
        return f"{self.subscription_type} revoked: {self.reason}"
