"""The datasets and training jobs that the inference app's migrations created, taken over with their tables as they are:
state only, nothing in the database changes."""

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
                name='Dataset',
                fields=[
                    ('id', models.CharField(max_length=40, primary_key=True, serialize=False)),
                    ('name', models.CharField(max_length=200)),
                    ('format', models.CharField(choices=[('chat', 'Chat messages'), ('completion', 'Prompt/completion')], max_length=12)),
                    ('records', models.PositiveIntegerField()),
                    ('size_bytes', models.BigIntegerField()),
                    ('tokens', models.BigIntegerField(default=0)),
                    ('tokens_exact', models.BooleanField(default=False)),
                    ('sha256', models.CharField(max_length=64)),
                    ('storage_key', models.CharField(max_length=300)),
                    ('created_at', models.DateTimeField(auto_now_add=True)),
                    ('deleted_at', models.DateTimeField(blank=True, null=True)),
                    ('created_by', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL)),
                    ('tenant', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='datasets', to='tenants.tenant')),
                ],
                options={
                    'db_table': 'inference_dataset',
                    'ordering': ['-created_at'],
                },
            ),
            migrations.CreateModel(
                name='TrainingJob',
                fields=[
                    ('id', models.CharField(max_length=40, primary_key=True, serialize=False)),
                    ('hyperparameters', models.JSONField(default=dict)),
                    ('status', models.CharField(choices=[('validating_files', 'Validating files'), ('queued', 'Queued'), ('running', 'Running'), ('succeeded', 'Succeeded'), ('failed', 'Failed'), ('cancelled', 'Cancelled')], default='validating_files', max_length=20)),
                    ('total_steps', models.PositiveIntegerField(default=0)),
                    ('trained_steps', models.PositiveIntegerField(default=0)),
                    ('trainable_params', models.BigIntegerField(default=0)),
                    ('estimated_gradients', models.BigIntegerField(default=0)),
                    ('estimated_cost_micro_usd', models.BigIntegerField(default=0)),
                    ('last_loss', models.FloatField(blank=True, null=True)),
                    ('error_code', models.CharField(blank=True, max_length=64)),
                    ('error_message', models.CharField(blank=True, max_length=2000)),
                    ('created_at', models.DateTimeField(auto_now_add=True, db_index=True)),
                    ('started_at', models.DateTimeField(blank=True, null=True)),
                    ('finished_at', models.DateTimeField(blank=True, null=True)),
                    ('cancel_requested_at', models.DateTimeField(blank=True, null=True)),
                    ('adapter', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='training_jobs', to='adapters.adapter')),
                    ('api_key', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to='tenants.apikey')),
                    ('base_model', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='+', to='adapters.basemodel')),
                    ('base_version', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.PROTECT, related_name='+', to='adapters.adapterversion')),
                    ('created_by', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL)),
                    ('dataset', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='jobs', to='training.dataset')),
                    ('node', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='training_jobs', to='fleet.node')),
                    ('result_version', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.PROTECT, related_name='+', to='adapters.adapterversion')),
                    ('tenant', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='training_jobs', to='tenants.tenant')),
                ],
                options={
                    'db_table': 'inference_trainingjob',
                    'ordering': ['-created_at'],
                },
            ),
            migrations.CreateModel(
                name='TrainingEvent',
                fields=[
                    ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                    ('level', models.CharField(choices=[('info', 'Info'), ('warning', 'Warning'), ('error', 'Error')], default='info', max_length=8)),
                    ('message', models.CharField(max_length=2000)),
                    ('step', models.PositiveIntegerField(blank=True, null=True)),
                    ('loss', models.FloatField(blank=True, null=True)),
                    ('created_at', models.DateTimeField(auto_now_add=True)),
                    ('job', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='events', to='training.trainingjob')),
                ],
                options={
                    'db_table': 'inference_trainingevent',
                    'ordering': ['id'],
                },
            ),
            migrations.CreateModel(
                name='TrainingCheckpoint',
                fields=[
                    ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                    ('step', models.PositiveIntegerField()),
                    ('uri', models.CharField(max_length=500)),
                    ('loss', models.FloatField(blank=True, null=True)),
                    ('created_at', models.DateTimeField(auto_now_add=True)),
                    ('job', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='checkpoints', to='training.trainingjob')),
                ],
                options={
                    'db_table': 'inference_trainingcheckpoint',
                    'ordering': ['job', 'step'],
                },
            ),
            migrations.CreateModel(
                name='TrainingStep',
                fields=[
                    ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                    ('step', models.PositiveIntegerField()),
                    ('gradients', models.BigIntegerField()),
                    ('micro_batches', models.PositiveIntegerField()),
                    ('tokens', models.PositiveIntegerField()),
                    ('compute_ms', models.FloatField()),
                    ('loss', models.FloatField()),
                    ('node', models.CharField(blank=True, max_length=63)),
                    ('created_at', models.DateTimeField(auto_now_add=True)),
                    ('job', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='steps', to='training.trainingjob')),
                ],
                options={
                    'db_table': 'inference_trainingstep',
                    'ordering': ['job', 'step'],
                },
            ),
            migrations.AddConstraint(
                model_name='trainingjob',
                constraint=models.UniqueConstraint(condition=models.Q(('status__in', ['validating_files', 'queued', 'running'])), fields=('adapter',), name='one_active_training_job_per_adapter'),
            ),
            migrations.AddConstraint(
                model_name='trainingcheckpoint',
                constraint=models.UniqueConstraint(fields=('job', 'step'), name='training_checkpoint_unique'),
            ),
            migrations.AddConstraint(
                model_name='trainingstep',
                constraint=models.UniqueConstraint(fields=('job', 'step'), name='training_step_unique'),
            ),
        ]),
    ]
