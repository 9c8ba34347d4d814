from django.apps import AppConfig


class AdaptersConfig(AppConfig):
    name = "adapters"
    verbose_name = "Adapters: base models, adapters, versions"

    def ready(self):
        from tenants import views as tenant_views

        from .access import overview_adapters

        tenant_views.overview_facts.append(overview_adapters)  # tenants sits below adapters
