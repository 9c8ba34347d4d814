"""The nodes and scale-up signals that the inference app's migrations created, taken over with their tables as they are:
state only, nothing in the database changes."""

from django.db import migrations, models


class Migration(migrations.Migration):

    initial = True

    dependencies = [
        ('inference', '0004_request_failover'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(state_operations=[
            migrations.CreateModel(
                name='Node',
                fields=[
                    ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                    ('name', models.CharField(max_length=63, unique=True)),
                    ('status', models.CharField(choices=[('up', 'Up'), ('down', 'Down')], default='up', max_length=8)),
                    ('base_model', models.CharField(blank=True, max_length=100)),
                    ('device', models.CharField(blank=True, max_length=40)),
                    ('state', models.JSONField(default=dict)),
                    ('started_at', models.DateTimeField(null=True)),
                    ('last_heartbeat_at', models.DateTimeField()),
                ],
                options={
                    'db_table': 'inference_node',
                    'ordering': ['name'],
                },
            ),
            migrations.CreateModel(
                name='ScaleUpSignal',
                fields=[
                    ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                    ('base_model', models.CharField(max_length=100)),
                    ('reason', models.CharField(max_length=200)),
                    ('created_at', models.DateTimeField(auto_now_add=True, db_index=True)),
                ],
                options={
                    'db_table': 'inference_scaleupsignal',
                },
            ),
        ]),
    ]
