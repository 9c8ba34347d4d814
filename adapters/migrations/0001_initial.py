"""The base models, adapters and versions that the inference app's migrations created, taken over with their tables as
they are: state only, nothing in the database changes."""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):

    initial = True

    dependencies = [
        ('tenants', '0002_audit_log'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
        ('inference', '0004_request_failover'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(state_operations=[
            migrations.CreateModel(
                name='BaseModel',
                fields=[
                    ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                    ('name', models.CharField(max_length=100, unique=True)),
                    ('aliases', models.JSONField(blank=True, default=list)),
                    ('architecture', models.JSONField(default=dict)),
                    ('context_length', models.PositiveIntegerField(default=2048)),
                    ('created_at', models.DateTimeField(auto_now_add=True)),
                ],
                options={
                    'db_table': 'inference_basemodel',
                },
            ),
            migrations.CreateModel(
                name='Adapter',
                fields=[
                    ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                    ('name', models.CharField(max_length=64)),
                    ('description', models.CharField(blank=True, max_length=500)),
                    ('tier', models.CharField(choices=[('cold', 'Cold'), ('warm', 'Warm'), ('hot', 'Hot')], default='cold', max_length=8)),
                    ('created_at', models.DateTimeField(auto_now_add=True)),
                    ('deleted_at', models.DateTimeField(blank=True, null=True)),
                    ('tenant', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='adapters', to='tenants.tenant')),
                ],
                options={
                    'db_table': 'inference_adapter',
                },
            ),
            migrations.CreateModel(
                name='AdapterVersion',
                fields=[
                    ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                    ('number', models.PositiveIntegerField()),
                    ('status', models.CharField(choices=[('validating', 'Validating'), ('ready', 'Ready'), ('failed', 'Failed')], default='validating', max_length=12)),
                    ('source', models.CharField(choices=[('upload', 'Upload'), ('training', 'Training')], default='upload', max_length=10)),
                    ('sha256', models.CharField(max_length=64)),
                    ('size_bytes', models.BigIntegerField()),
                    ('rank', models.PositiveIntegerField()),
                    ('alpha', models.FloatField()),
                    ('target_modules', models.JSONField(default=list)),
                    ('dtype', models.CharField(max_length=8)),
                    ('storage_key', models.CharField(max_length=300)),
                    ('error_code', models.CharField(blank=True, max_length=64)),
                    ('error_message', models.CharField(blank=True, max_length=500)),
                    ('created_at', models.DateTimeField(auto_now_add=True)),
                    ('adapter', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='versions', to='adapters.adapter')),
                    ('created_by', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL)),
                ],
                options={
                    'db_table': 'inference_adapterversion',
                    'ordering': ['adapter', '-number'],
                },
            ),
            migrations.AddField(
                model_name='adapter',
                name='current_version',
                field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.PROTECT, related_name='+', to='adapters.adapterversion'),
            ),
            migrations.AddField(
                model_name='adapter',
                name='base_model',
                field=models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='adapters', to='adapters.basemodel'),
            ),
            migrations.AddConstraint(
                model_name='adapterversion',
                constraint=models.UniqueConstraint(fields=('adapter', 'number'), name='adapter_version_unique'),
            ),
            migrations.AddConstraint(
                model_name='adapter',
                constraint=models.UniqueConstraint(condition=models.Q(('deleted_at__isnull', True)), fields=('tenant', 'name'), name='adapter_name_unique_per_tenant'),
            ),
        ]),
    ]
