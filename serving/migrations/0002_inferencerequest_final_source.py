from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('serving', '0001_initial'),
    ]

    operations = [
        migrations.AddField(
            model_name='inferencerequest',
            name='final_source',
            field=models.CharField(blank=True, choices=[('control_task', 'control_task'), ('stream_sweep', 'stream_sweep'), ('throttle_retry', 'throttle_retry'), ('failover', 'failover'), ('expiry', 'expiry'), ('dispatch', 'dispatch')], max_length=16),
        ),
    ]
