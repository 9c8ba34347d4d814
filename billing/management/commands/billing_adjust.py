"""A ledger correction by staff: ``manage.py billing_adjust <tenant slug> <amount> "<why>" [--key <id>]``.

A positive amount charges, a negative one refunds; it lands in the current billing month (or ``--at``'s; a month
already invoiced puts it on the tenant's next invoice, as a line for that month). With ``--key`` a rerun of the
same command records nothing new (the key is the adjustment's idempotency key)."""

from decimal import Decimal, InvalidOperation

from django.core.management.base import BaseCommand, CommandError
from django.utils.dateparse import parse_datetime

from billing.ledger import record_adjustment
from tenants.models import Tenant


class Command(BaseCommand):
    help = "Records a ledger adjustment (a charge, or a refund with a negative amount) for a tenant."

    def add_arguments(self, parser):
        parser.add_argument("tenant", help="the tenant's slug")
        parser.add_argument("amount", help="dollars, e.g. -12.50 to refund")
        parser.add_argument("description", help="why: shown on the invoice")
        parser.add_argument("--key", help="an id that makes a rerun record nothing new")
        parser.add_argument("--at", help="ISO 8601 datetime whose billing month gets it (default now)")

    def handle(self, *args, tenant, amount, description, key=None, at=None, **options):
        target = Tenant.objects.filter(slug=tenant).first()
        if target is None:
            raise CommandError(f"No tenant with slug {tenant!r}.")
        try:
            value = Decimal(amount)
        except InvalidOperation:
            raise CommandError(f"{amount!r} is not an amount in dollars.") from None
        moment = parse_datetime(at) if at else None
        if at and (moment is None or moment.tzinfo is None):
            raise CommandError(f"--at {at!r} must be an ISO 8601 datetime with an offset, e.g. 2026-11-01T00:00Z.")
        try:
            event = record_adjustment(tenant=target, amount=value, description=description, key=key, at=moment)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"{event.key}: {event.cost} for {target.slug} in {event.period:%Y-%m} ({event.description})")
