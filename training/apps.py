from django.apps import AppConfig


class TrainingConfig(AppConfig):
    name = "training"
    verbose_name = "Training: datasets and fine-tuning jobs"

    def ready(self):
        from adapters import views
        from adapters.storage_quota import register_storage

        from .datasets import datasets_kept_bytes, datasets_release, versions_in_training
        from .views import version_jobs

        # adapters sits below training: the storage quota counts datasets and keeps the versions jobs train from
        register_storage(kept=datasets_kept_bytes, release=datasets_release, version_in_use=versions_in_training)
        views.detail_facts.append(version_jobs)
