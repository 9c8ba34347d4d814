from django.apps import AppConfig


class InferenceConfig(AppConfig):
    """No models: its migrations created the tables that adapters, fleet, serving and training took over, and stay
    so that a database migrated before those apps existed migrates on."""

    name = "inference"
    verbose_name = "Inference (migrations only)"
