from django.apps import AppConfig


class BillingConfig(AppConfig):
    name = "billing"
    verbose_name = "Billing: ledger, invoices, Stripe"

    def ready(self):
        from .invoices import connect_guards

        connect_guards()  # a finalized invoice and its lines refuse every save and delete that would change them
