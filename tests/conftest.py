"""Named people (healthchecks' convention): alice owns tenant acme, bob is a developer in acme,
charlie owns contoso and must never see anything of acme's."""

import pytest
from django.apps import apps
from rest_framework.test import APIClient

from tenants.models import Membership, Tenant, User
from tenants.roles import DEVELOPER, OWNER, SCOPES
from vajra.redis import get_redis

PASSWORD = "correct horse battery staple"


@pytest.fixture(autouse=True)
def _fresh_plan_cache():
    # billing.plans caches plans per process; a test's rollback or flush sends no signal to drop them
    from billing.plans import _forget_display_plans

    _forget_display_plans()
    yield
    _forget_display_plans()


@pytest.fixture(autouse=True)
def _fresh_channel_layer():
    """Each test talks to the channel layer from its own event loop (async_to_sync, the communicators).
    channels_redis keeps per-channel asyncio locks on the layer object, shared by every consumer of the
    process; one left held by a loop that ended with its test is "bound to a different event loop" in the next
    (CI saw it once in tests/test_ws.py). A fresh layer object per test; daphne runs one loop and is unaffected."""
    from channels.layers import channel_layers

    channel_layers.backends.clear()
    yield
    channel_layers.backends.clear()


@pytest.fixture(autouse=True)
def _clean_redis_limits():
    r = get_redis()
    for pattern in ("vajra:rl:*", "vajra:login:*", "vajra:hot-pin:*"):
        keys = list(r.scan_iter(pattern))
        if keys:
            r.delete(*keys)
    yield


def put_on_plan(tenant, name="small", **quotas):
    """Puts ``tenant`` on a plan ``name`` (v1, in effect since 2020) with these quotas; the rest default."""
    from datetime import UTC, datetime

    from billing.models import BillingAccount, PricePlan

    plan = PricePlan.objects.create(name=name, version=1, effective_from=datetime(2020, 1, 1, tzinfo=UTC), **quotas)
    BillingAccount.objects.update_or_create(tenant=tenant, defaults={"plan_name": name})
    return plan


def make_member(email, tenant, role):
    user = User.objects.filter(email=email).first() or User.objects.create_user(email=email, password=PASSWORD)
    Membership.objects.create(user=user, tenant=tenant, role=role)
    return user


@pytest.fixture
def acme(db):
    return Tenant.objects.create(name="Acme", slug="acme")


@pytest.fixture
def contoso(db):
    return Tenant.objects.create(name="Contoso", slug="contoso")


@pytest.fixture
def alice(acme):
    return make_member("alice@acme.test", acme, OWNER)


@pytest.fixture
def bob(acme, alice):
    return make_member("bob@acme.test", acme, DEVELOPER)


@pytest.fixture
def charlie(contoso):
    return make_member("charlie@contoso.test", contoso, OWNER)


def session_client(user):
    client = APIClient()
    client.force_login(user)
    return client


@pytest.fixture
def alice_client(alice):
    return session_client(alice)


@pytest.fixture
def bob_client(bob):
    return session_client(bob)


@pytest.fixture
def charlie_client(charlie):
    return session_client(charlie)


def create_key(user, tenant, scopes=tuple(SCOPES), **kwargs):
    from tenants.models import APIKey

    key, secret = APIKey.objects.create_key(name=f"{user.email} key", tenant=tenant, created_by=user,
                                            scopes=list(scopes), **kwargs)
    return key, secret


def key_client(secret):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


@pytest.fixture
def alice_key(alice, acme):
    return create_key(alice, acme)


@pytest.fixture
def charlie_key(charlie, contoso):
    return create_key(charlie, contoso)


def db_snapshot():
    """Every row of VAJRA's own models, to assert that a refused request wrote nothing.

    ``last_used_at`` is left out: presenting a valid key records its use even when the request is then
    refused for a missing scope, which is what an operator wants to see. Runtime nodes are left out too:
    a live node's heartbeats rewrite its row every second, whatever the request did.
    """
    snapshot = {}
    for label in ("tenants", "adapters", "fleet", "serving", "training", "billing"):
        for model in apps.get_app_config(label).get_models():
            if model._meta.label == "fleet.Node":
                continue
            rows = list(model.objects.order_by("pk").values())
            for row in rows:
                row.pop("last_used_at", None)
            snapshot[model._meta.label] = rows
    return snapshot


@pytest.fixture
def unchanged_db(db):
    """Use as ``with unchanged_db(): <refused request>``."""
    from contextlib import contextmanager

    @contextmanager
    def check():
        before = db_snapshot()
        yield
        assert db_snapshot() == before, "a refused request changed the database"

    return check


def assert_error(response, status, code=None, param=None):
    """The one error shape, the status, and optionally the machine-readable code and param."""
    assert response.status_code == status, (response.status_code, getattr(response, "content", b"")[:500])
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["message"], body
    if code is not None:
        assert body["error"]["code"] == code, body
    if param is not None:
        assert body["error"]["param"] == param, body
    assert response.headers.get("x-request-id"), "every response carries x-request-id"
    return body["error"]


@pytest.fixture
def fast_password_hashing(settings):
    """MD5 instead of PBKDF2 for people made in the test: a suite of API tests creates hundreds.

    Opt-in per module (``pytestmark = pytest.mark.usefixtures("fast_password_hashing")``), never for
    tests whose other processes (daphne in tests/integration) check those passwords with the real hashers.
    """
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


SUBMIT_FINAL = {"finish_reason": "stop", "usage": {"prompt_tokens": 3, "completion_tokens": 1, "cached_tokens": 0},
                "timings": {"queued_ms": 1.0, "adapter_ready_ms": 0.0, "first_token_ms": 2.0, "total_ms": 3.0},
                "gpu_ms": 2.0, "error": None}


@pytest.fixture
def sent(monkeypatch):
    """The tasks the web sends: (name, args, options, thread name); the token stream faked ("Hi", then a final)."""
    import threading

    from serving import relay
    from vajra.celery import app

    calls = []

    def send_task(name, args=None, **options):
        calls.append((name, args, options, threading.current_thread().name))

    async def events(request_id, last_id="0", **kwargs):
        yield "1-0", "delta", {"text": "Hi"}
        yield "2-0", "final", SUBMIT_FINAL

    monkeypatch.setattr(app, "send_task", send_task)
    monkeypatch.setattr(relay, "events", events)
    return calls
