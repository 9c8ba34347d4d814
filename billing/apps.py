from django.apps import AppConfig


class BillingConfig(AppConfig):
    name = "billing"
    verbose_name = "Billing: ledger, invoices, Stripe"

    def ready(self):
        from django.db.backends.signals import connection_created

        from tenants import views as tenant_views

        from .caps import overview_spend
        from .invoices import connect_guards
        from .ledger_guard import register_sqlite_function

        connect_guards()  # a finalized invoice and its lines refuse every save and delete that would change them
        # SQLite's ledger DELETE trigger calls this function (billing/ledger_guard.py)
        connection_created.connect(register_sqlite_function, dispatch_uid="billing.ledger_guard")
        tenant_views.overview_facts.append(overview_spend)  # tenants sits below billing
