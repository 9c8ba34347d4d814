"""Named people (healthchecks' convention): alice owns tenant acme, bob is a developer in acme,
charlie owns contoso and must never see anything of acme's. The rows tests build are made by tests/factories.py;
the other shared fixtures come from the plugins in tests/fixtures/ (real processes, billing, adapters, engines,
serving without a runtime, training)."""

import os
from pathlib import Path

import pytest

from tenants.roles import DEVELOPER, OWNER
from tests.factories import create_key, key_client, make_member, make_tenant, session_client
from tests.helpers import db_snapshot
from vajra.redis import get_redis

TESTS = Path(__file__).resolve().parent
pytest_plugins = ["tests.fixtures.live", "tests.fixtures.billing", "tests.fixtures.adapters", "tests.fixtures.engine",
                  "tests.fixtures.serving", "tests.fixtures.training"]


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


@pytest.fixture
def acme(db):
    return make_tenant("acme")


@pytest.fixture
def contoso(db):
    return make_tenant("contoso")


@pytest.fixture
def alice(acme):
    return make_member("alice@acme.test", acme, OWNER)


@pytest.fixture
def alice_api(alice, acme):
    """A DRF client with a key of alice's in acme, every scope."""
    return key_client(create_key(alice, acme)[1])


@pytest.fixture
def bob(acme, alice):
    return make_member("bob@acme.test", acme, DEVELOPER)


@pytest.fixture
def charlie(contoso):
    return make_member("charlie@contoso.test", contoso, OWNER)


@pytest.fixture
def alice_client(alice):
    return session_client(alice)


@pytest.fixture
def bob_client(bob):
    return session_client(bob)


@pytest.fixture
def charlie_client(charlie):
    return session_client(charlie)


@pytest.fixture
def alice_key(alice, acme):
    return create_key(alice, acme)


@pytest.fixture
def charlie_key(charlie, contoso):
    return create_key(charlie, contoso)


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


@pytest.fixture
def redis_client():
    """A client of the suite's Redis (the one the web, the runtime and Celery use)."""
    import redis

    return redis.Redis.from_url(os.environ["REDIS_URL"])


@pytest.fixture(autouse=True)
def _fast_password_hashing(request):
    """MD5 instead of PBKDF2 for people made in tests that run in this process alone: a suite of API and page
    tests creates hundreds, and PBKDF2 costs most of a second each on two busy cores.

    Not for tests/integration and tests/browser: their other processes (daphne) check those passwords with the real
    hashers, which do not know MD5.
    """
    if not any(request.node.path.is_relative_to(TESTS / folder) for folder in ("integration", "browser")):
        settings = request.getfixturevalue("settings")
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
