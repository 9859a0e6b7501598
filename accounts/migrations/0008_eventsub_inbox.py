"""EventSubMessage becomes the webhook's inbox: the message itself, whether it
was handled, its retries. Rows already there were handled before this deploy
(the old webhook handled a message before answering): they become "handled", so
a redelivery is still known and nothing is handled twice."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0007_connection_roles"),
    ]

    operations = [
        migrations.AlterModelOptions(
            name="eventsubmessage",
            options={"ordering": ["-received_at"], "verbose_name": "EventSub message"},
        ),
        migrations.AddField(
            model_name="eventsubmessage",
            name="attempts",
            field=models.PositiveSmallIntegerField(default=0),
        ),
        migrations.AddField(
            model_name="eventsubmessage",
            name="body",
            field=models.JSONField(blank=True, default=dict),
        ),
        migrations.AddField(
            model_name="eventsubmessage",
            name="claimed_until",
            field=models.DateTimeField(blank=True, editable=False, null=True),
        ),
        migrations.AddField(
            model_name="eventsubmessage",
            name="done",
            field=models.JSONField(blank=True, default=list),
        ),
        migrations.AddField(
            model_name="eventsubmessage",
            name="handled_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="eventsubmessage",
            name="last_error",
            field=models.CharField(blank=True, max_length=200),
        ),
        migrations.AddField(
            model_name="eventsubmessage",
            name="message_id",
            field=models.CharField(blank=True, max_length=100),
        ),
        migrations.AddField(
            model_name="eventsubmessage",
            name="message_type",
            field=models.CharField(blank=True, max_length=40),
        ),
        migrations.AddField(
            model_name="eventsubmessage",
            name="next_attempt_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="eventsubmessage",
            name="status",
            # Every row there now was handled; new ones start pending (below).
            field=models.CharField(default="handled", max_length=20),
        ),
        migrations.AlterField(
            model_name="eventsubmessage",
            name="status",
            field=models.CharField(
                choices=[
                    ("pending", "Waiting to be handled"),
                    ("handled", "Handled"),
                    ("failed", "Failed; no more retries"),
                ],
                db_index=True,
                default="pending",
                max_length=20,
            ),
        ),
        migrations.AddField(
            model_name="eventsubmessage",
            name="subscription_id",
            field=models.CharField(blank=True, max_length=100),
        ),
        migrations.AddField(
            model_name="eventsubmessage",
            name="subscription_type",
            field=models.CharField(blank=True, db_index=True, max_length=100),
        ),
        migrations.AddField(
            model_name="eventsubmessage",
            name="subscription_version",
            field=models.CharField(blank=True, max_length=10),
        ),
        migrations.AddField(
            model_name="eventsubrevocation",
            name="condition",
            field=models.JSONField(blank=True, default=dict),
        ),
        migrations.AddField(
            model_name="eventsubrevocation",
            name="subscription_version",
            field=models.CharField(blank=True, max_length=10),
        ),
        migrations.AddIndex(
            model_name="eventsubmessage",
            index=models.Index(
                fields=["status", "next_attempt_at"], name="eventsub_message_due"
            ),
        ),
    ]
