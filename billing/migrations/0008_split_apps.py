"""Ledger and invoice rows point at the adapters, serving and training apps' models, which kept the inference app's
tables: state only."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('adapters', '0001_initial'),
        ('billing', '0007_gradient_per_token_price'),
        ('serving', '0001_initial'),
        ('training', '0001_initial'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(state_operations=[
            migrations.AlterField(
                model_name='invoiceline',
                name='adapter',
                field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.PROTECT, related_name='+', to='adapters.adapter'),
            ),
            migrations.AlterField(
                model_name='usageevent',
                name='adapter',
                field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.PROTECT, related_name='+', to='adapters.adapter'),
            ),
            migrations.AlterField(
                model_name='usageevent',
                name='adapter_version',
                field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.PROTECT, related_name='+', to='adapters.adapterversion'),
            ),
            migrations.AlterField(
                model_name='usageevent',
                name='job',
                field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.PROTECT, related_name='+', to='training.trainingjob'),
            ),
            migrations.AlterField(
                model_name='usageevent',
                name='request',
                field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.PROTECT, related_name='+', to='serving.inferencerequest'),
            ),
        ]),
    ]
