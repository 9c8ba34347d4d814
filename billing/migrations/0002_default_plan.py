"""The 'standard' price plan, version 1: the model's defaults (the papers' numbers), in effect from 2020-01-01 UTC."""

from datetime import UTC, datetime

from django.db import migrations


def create_default_plan(apps, schema_editor):
    PricePlan = apps.get_model("billing", "PricePlan")
    PricePlan.objects.get_or_create(name="standard", version=1,
                                    defaults={"effective_from": datetime(2020, 1, 1, tzinfo=UTC)})


class Migration(migrations.Migration):

    dependencies = [
        ("billing", "0001_ledger"),
    ]

    operations = [
        migrations.RunPython(create_default_plan, migrations.RunPython.noop),
    ]
