"""The inference app's models now live in adapters, fleet, serving and training (same tables): removed from this app's
state only."""

from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ('inference', '0004_request_failover'),
        ('billing', '0008_split_apps'),
        ('adapters', '0001_initial'),
        ('fleet', '0001_initial'),
        ('serving', '0001_initial'),
        ('training', '0001_initial'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(state_operations=[
            migrations.RemoveField(
                model_name='adapter',
                name='base_model',
            ),
            migrations.RemoveField(
                model_name='adapter',
                name='current_version',
            ),
            migrations.RemoveField(
                model_name='adapter',
                name='tenant',
            ),
            migrations.RemoveField(
                model_name='trainingjob',
                name='adapter',
            ),
            migrations.RemoveField(
                model_name='adapterversion',
                name='adapter',
            ),
            migrations.RemoveField(
                model_name='adapterversion',
                name='created_by',
            ),
            migrations.RemoveField(
                model_name='trainingjob',
                name='base_version',
            ),
            migrations.RemoveField(
                model_name='trainingjob',
                name='result_version',
            ),
            migrations.RemoveField(
                model_name='inferencerequest',
                name='adapter_version',
            ),
            migrations.RemoveField(
                model_name='trainingjob',
                name='base_model',
            ),
            migrations.RemoveField(
                model_name='inferencerequest',
                name='base_model',
            ),
            migrations.RemoveField(
                model_name='dataset',
                name='created_by',
            ),
            migrations.RemoveField(
                model_name='dataset',
                name='tenant',
            ),
            migrations.RemoveField(
                model_name='trainingjob',
                name='dataset',
            ),
            migrations.RemoveField(
                model_name='inferencerequest',
                name='api_key',
            ),
            migrations.RemoveField(
                model_name='inferencerequest',
                name='node',
            ),
            migrations.RemoveField(
                model_name='inferencerequest',
                name='tenant',
            ),
            migrations.RemoveField(
                model_name='inferencerequest',
                name='user',
            ),
            migrations.RemoveField(
                model_name='trainingjob',
                name='node',
            ),
            migrations.DeleteModel(
                name='ScaleUpSignal',
            ),
            migrations.RemoveField(
                model_name='trainingcheckpoint',
                name='job',
            ),
            migrations.RemoveField(
                model_name='trainingevent',
                name='job',
            ),
            migrations.RemoveField(
                model_name='trainingjob',
                name='api_key',
            ),
            migrations.RemoveField(
                model_name='trainingjob',
                name='created_by',
            ),
            migrations.RemoveField(
                model_name='trainingjob',
                name='tenant',
            ),
            migrations.RemoveField(
                model_name='trainingstep',
                name='job',
            ),
            migrations.DeleteModel(
                name='Adapter',
            ),
            migrations.DeleteModel(
                name='AdapterVersion',
            ),
            migrations.DeleteModel(
                name='BaseModel',
            ),
            migrations.DeleteModel(
                name='Dataset',
            ),
            migrations.DeleteModel(
                name='InferenceRequest',
            ),
            migrations.DeleteModel(
                name='Node',
            ),
            migrations.DeleteModel(
                name='TrainingCheckpoint',
            ),
            migrations.DeleteModel(
                name='TrainingEvent',
            ),
            migrations.DeleteModel(
                name='TrainingJob',
            ),
            migrations.DeleteModel(
                name='TrainingStep',
            ),
        ]),
    ]
