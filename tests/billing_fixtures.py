"""Fixtures for invoice and Stripe tests (``pytest_plugins = ["tests.billing_fixtures"]``): ledger rows written
directly, a billing viewer (dana, in alice's tenant acme), platform staff (olga, an operator), sent Celery tasks
captured, and the Stripe fake
(tests/stripe_fake.py: localstripe over real HTTP, one process per test session on a free port, reset before
each test). Its state is pickled to the session's own temporary directory, not localstripe's fixed
/tmp/localstripe.pickle, so a stock ``localstripe`` running elsewhere on the machine does not share it.

PYTEST_DONT_REWRITE: nothing here asserts, and the test modules import it before pytest loads it as a plugin."""

import hashlib
import hmac
import itertools
import time
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from adapters.models import Adapter, BaseModel
from billing.models import Invoice, UsageEvent
from billing.plans import ensure_default_plan
from tenants.roles import BILLING_VIEWER
from tests.conftest import make_member, session_client
from training.models import Dataset, TrainingJob

PERIOD = date(2026, 10, 1)  # a closed month: "now" in these tests is in November 2026
NOW = datetime(2026, 11, 3, 7, 0, tzinfo=UTC)
WEBHOOK_SECRET = "whsec_vajra_test"
_keys = itertools.count(1)


@pytest.fixture
def dana(acme, alice):
    return make_member("dana@acme.test", acme, BILLING_VIEWER)


@pytest.fixture
def dana_client(dana):
    return session_client(dana)


@pytest.fixture
def olga(acme, alice):
    """Platform staff (an operator), a billing viewer in acme so the dashboard shows her its invoices."""
    user = make_member("olga@vajra.test", acme, BILLING_VIEWER)
    user.is_staff = True
    user.save(update_fields=["is_staff"])
    return user


@pytest.fixture
def olga_client(olga):
    return session_client(olga)


@pytest.fixture
def plan(db):
    return ensure_default_plan()


def usage(tenant, cost, *, kind=UsageEvent.INFERENCE, period=PERIOD, key=None, **fields):
    """One ledger row with the given exact ``cost``, written directly (no pricing)."""
    occurred = datetime(period.year, period.month, 15, 12, 0, tzinfo=UTC)
    return UsageEvent.objects.create(key=key or f"{kind}:test-{next(_keys)}", tenant=tenant, kind=kind,
                                     plan=ensure_default_plan(), occurred_at=occurred, period=period,
                                     cost=Decimal(cost), **fields)


def make_adapter(tenant, name, tier=Adapter.COLD):
    base = BaseModel.objects.get_or_create(name="tiny-llama")[0]
    return Adapter.objects.create(tenant=tenant, base_model=base, name=name, tier=tier)


def make_job(tenant, adapter, job_id):
    dataset = Dataset.objects.create(id=f"ds_{job_id}", tenant=tenant, name="chat.jsonl", format=Dataset.CHAT,
                                     records=10, size_bytes=100, sha256="0" * 64, storage_key=f"datasets/{job_id}")
    return TrainingJob.objects.create(id=job_id, tenant=tenant, base_model=adapter.base_model, adapter=adapter,
                                      dataset=dataset, status=TrainingJob.SUCCEEDED)


def close(period=PERIOD, *, limit=100, seconds=60):
    from billing.invoices import invoices_close_period

    return invoices_close_period(period=period, limit=limit, seconds=seconds, now=NOW)


def invoice_of(tenant, period=PERIOD):
    return Invoice.objects.get(tenant=tenant, period=period)


@pytest.fixture
def sent_tasks(monkeypatch):
    """Celery tasks sent by name, as (name, args) instead of going to the broker."""
    from vajra.celery import app

    sent = []
    monkeypatch.setattr(app, "send_task", lambda name, args=None, **kwargs: sent.append((name, args)))
    return sent


@pytest.fixture(scope="session")
def stripe_fake(tmp_path_factory):
    from tests.stripe_fake import StripeFake

    fake = StripeFake(tmp_path_factory.mktemp("stripe_fake"))
    yield fake
    fake.stop()


@pytest.fixture
def stripe_on(settings, stripe_fake):
    """Stripe connected, to a freshly reset fake."""
    stripe_fake.reset()
    settings.STRIPE_SECRET_KEY = "sk_test_vajra"
    settings.STRIPE_API_BASE = stripe_fake.url
    settings.STRIPE_WEBHOOK_SECRET = WEBHOOK_SECRET
    settings.STRIPE_MAX_NETWORK_RETRIES = 0
    return stripe_fake


@pytest.fixture
def local_only(settings):
    settings.STRIPE_SECRET_KEY = ""
    settings.STRIPE_WEBHOOK_SECRET = ""


def stripe_signature(payload, secret=WEBHOOK_SECRET, timestamp=None):
    """Stripe's webhook signature header: t=<unix time>,v1=HMAC-SHA256(secret, "<t>.<payload>")."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"
