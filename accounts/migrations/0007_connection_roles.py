"""Connections get a role (accounts/roles.py): a person may now hold one per role.
Every existing connection becomes the default role, "main", with its tokens and
history untouched; the one-account-one-user rule now holds within each role."""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0006_eventsub_message_digest"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.RemoveConstraint(
            model_name="twitchtoken",
            name="one_live_connection_per_twitch_account",
        ),
        migrations.AddField(
            model_name="twitchtoken",
            name="role",
            field=models.CharField(
                default="main",
                help_text="What the connection is for: their own account, their bot's.",
                max_length=32,
            ),
        ),
        migrations.AlterField(
            model_name="twitchtoken",
            name="user",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.CASCADE,
                related_name="twitch_tokens",
                to=settings.AUTH_USER_MODEL,
            ),
        ),
        migrations.AddConstraint(
            model_name="twitchtoken",
            constraint=models.UniqueConstraint(
                fields=("user", "role"), name="one_connection_per_user_and_role"
            ),
        ),
        migrations.AddConstraint(
            model_name="twitchtoken",
            constraint=models.UniqueConstraint(
                condition=models.Q(("status", "revoked"), _negated=True),
                fields=("twitch_user_id", "role"),
                name="one_live_connection_per_twitch_account_and_role",
            ),
        ),
    ]
