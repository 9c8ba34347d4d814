from django.apps import AppConfig


class ServingConfig(AppConfig):
    name = "serving"
    verbose_name = "Serving: inference requests"

    def ready(self):
        from adapters.storage_quota import register_storage
        from fleet.failover import node_lost_signal
        from tenants import views as tenant_views

        from .access import overview_requests
        from .dispatch import versions_in_requests
        from .reroute import node_requests_reroute

        # fleet and adapters sit below serving: a lost node's requests are moved by serving's receiver, and the
        # storage quota keeps the files of versions that requests in progress run on
        node_lost_signal.connect(node_requests_reroute, dispatch_uid="serving.reroute")
        register_storage(version_in_use=versions_in_requests)
        tenant_views.overview_facts.append(overview_requests)  # tenants sits below serving
