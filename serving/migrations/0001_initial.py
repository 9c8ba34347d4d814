"""The inference requests that the inference app's migrations created, taken over with their tables as they are: state
only, nothing in the database changes."""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):

    initial = True

    dependencies = [
        ('adapters', '0001_initial'),
        ('fleet', '0001_initial'),
        ('tenants', '0002_audit_log'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
        ('inference', '0004_request_failover'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(state_operations=[
            migrations.CreateModel(
                name='InferenceRequest',
                fields=[
                    ('id', models.CharField(max_length=40, primary_key=True, serialize=False)),
                    ('tier', models.CharField(choices=[('cold', 'Cold'), ('warm', 'Warm'), ('hot', 'Hot')], max_length=8)),
                    ('api', models.CharField(default='infer', max_length=16)),
                    ('status', models.CharField(choices=[('queued', 'Queued'), ('running', 'Running'), ('succeeded', 'Succeeded'), ('failed', 'Failed'), ('cancelled', 'Cancelled')], default='queued', max_length=10)),
                    ('max_tokens', models.PositiveIntegerField()),
                    ('prompt_tokens', models.PositiveIntegerField(default=0)),
                    ('completion_tokens', models.PositiveIntegerField(default=0)),
                    ('cached_tokens', models.PositiveIntegerField(default=0)),
                    ('finish_reason', models.CharField(blank=True, max_length=12)),
                    ('error_code', models.CharField(blank=True, max_length=64)),
                    ('error_message', models.CharField(blank=True, max_length=500)),
                    ('queued_ms', models.FloatField(null=True)),
                    ('adapter_ready_ms', models.FloatField(null=True)),
                    ('first_token_ms', models.FloatField(null=True)),
                    ('total_ms', models.FloatField(null=True)),
                    ('gpu_ms', models.FloatField(null=True)),
                    ('guarantee_broken', models.BooleanField(default=False)),
                    ('attempt', models.PositiveSmallIntegerField(default=1)),
                    ('payload', models.JSONField(blank=True, null=True)),
                    ('created_at', models.DateTimeField(auto_now_add=True, db_index=True)),
                    ('finished_at', models.DateTimeField(blank=True, null=True)),
                    ('adapter_version', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.PROTECT, related_name='requests', to='adapters.adapterversion')),
                    ('api_key', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to='tenants.apikey')),
                    ('base_model', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='+', to='adapters.basemodel')),
                    ('node', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='requests', to='fleet.node')),
                    ('tenant', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='inference_requests', to='tenants.tenant')),
                    ('user', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL)),
                ],
                options={
                    'db_table': 'inference_inferencerequest',
                    'indexes': [models.Index(fields=['tenant', '-created_at'], name='inference_i_tenant__eb8ee5_idx'), models.Index(fields=['tenant', 'tier'], name='inference_i_tenant__1febd4_idx'), models.Index(fields=['node', 'status'], name='inference_i_node_id_68d807_idx')],
                },
            ),
        ]),
    ]
