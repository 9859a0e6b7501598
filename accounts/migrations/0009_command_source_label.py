"""The audit trail names every management command's work alike (connect_twitch too)."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0008_eventsub_inbox"),
    ]

    operations = [
        migrations.AlterField(
            model_name="tokenevent",
            name="source",
            field=models.CharField(
                choices=[
                    ("user", "The user"),
                    ("staff", "Staff (admin)"),
                    ("command", "A management command"),
                    ("site", "Site code"),
                    ("twitch", "Twitch (EventSub)"),
                ],
                max_length=20,
            ),
        ),
    ]
