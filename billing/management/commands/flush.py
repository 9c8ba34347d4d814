"""Django's ``flush`` (also what TransactionTestCase runs between tests), allowed past the ledger's SQLite DELETE
trigger: emptying the whole database is not editing the ledger."""

from django.core.management.commands.flush import Command as DjangoFlush

from billing.ledger_guard import ledger_purge


class Command(DjangoFlush):
    def handle(self, **options):
        with ledger_purge():
            return super().handle(**options)
