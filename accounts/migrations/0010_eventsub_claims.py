"""EventSub messages: the claim token of the worker handling one (its writes
hold only while it is still the claim), and the connections a revoke revoked,
kept until `token_revoked` receivers have been told."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0009_command_source_label"),
    ]

    operations = [
        migrations.AddField(
            model_name="eventsubmessage",
            name="claim",
            field=models.CharField(blank=True, editable=False, max_length=32),
        ),
        migrations.AddField(
            model_name="eventsubmessage",
            name="revoked_tokens",
            field=models.JSONField(blank=True, default=list),
        ),
    ]
