"""Connections get a role (accounts/roles.py): a person may now hold one per role.
Every existing connection becomes the default role, "main", with its tokens and
history untouched; the one-account-one-user rule now holds within each role."""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


def refuse_to_undo_roles(apps, schema_editor):
    """Going back to one connection per person would drop bots (and an account
    that is one person's own and another's bot): refuse, with a sentence."""
    TwitchToken = apps.get_model("accounts", "TwitchToken")
    if TwitchToken.objects.exclude(role="main").exists():
        raise RuntimeError(
            "Connections in roles other than 'main' exist (bots): revoke and delete "
            "them in the admin before migrating accounts back before 0007."
        )


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
        # Last, so that undoing the migration checks first.
        migrations.RunPython(migrations.RunPython.noop, refuse_to_undo_roles),
    ]
