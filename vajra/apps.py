from django.apps import AppConfig


class VajraConfig(AppConfig):
    name = "vajra"

    def ready(self):
        from . import checks  # noqa: F401 (registers the project's system checks)
