"""EventSub message ids are kept as their SHA-256, so that ids are compared whole
(they were cut to 100 characters)."""

import hashlib

from django.db import migrations, models


def digest_the_ids(apps, schema_editor):
    # The rows of the last twenty minutes: a redelivery of one of them must still
    # be known after the deploy.
    EventSubMessage = apps.get_model("accounts", "EventSubMessage")
    messages = EventSubMessage.objects.using(schema_editor.connection.alias)
    for message_id in list(messages.values_list("message_id", flat=True)):
        digest = hashlib.sha256(message_id.encode()).hexdigest()
        messages.filter(message_id=message_id).update(message_id=digest)


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0005_eventsub"),
    ]

    operations = [
        # Backwards the digests stay: no id they would match arrives again, and
        # they are pruned with the rest.
        migrations.RunPython(digest_the_ids, migrations.RunPython.noop),
        migrations.RenameField(
            model_name="eventsubmessage", old_name="message_id", new_name="digest"
        ),
        migrations.AlterField(
            model_name="eventsubmessage",
            name="digest",
            field=models.CharField(max_length=64, primary_key=True, serialize=False),
        ),
    ]
