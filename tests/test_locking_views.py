"""Views that lock a row (SELECT ... FOR UPDATE) run it inside a transaction. Tests wrapped in a
transaction cannot see the difference, so these run in autocommit, as production does; PostgreSQL (CI)
refuses FOR UPDATE outside a transaction with a 500."""

import pytest

from adapters.models import Adapter, BaseModel
from tenants import services
from tenants.keys import principal_from_membership
from tenants.models import Invite, Membership
from tests.factories import create_key

pytestmark = pytest.mark.django_db(transaction=True)


def test_key_member_and_invite_endpoints_lock_inside_a_transaction(alice, bob, acme, alice_client):
    key, _ = create_key(alice, acme)
    assert alice_client.delete(f"/api/v1/keys/{key.prefix}").status_code == 200
    bob_membership = Membership.objects.get(user=bob, tenant=acme)
    assert alice_client.patch(f"/api/v1/members/{bob_membership.pk}", {"role": "admin"},
                              format="json").status_code == 200
    invite, _ = services.invite_create(principal=principal_from_membership(Membership.objects.get(user=alice)),
                                       email="dora@acme.test", role="developer", accept_url_for=lambda t: t)
    assert alice_client.delete(f"/api/v1/invites/{invite.pk}").status_code == 200
    assert Invite.objects.get(pk=invite.pk).state == "revoked"
    assert alice_client.delete(f"/api/v1/members/{bob_membership.pk}").status_code == 204


def test_adapter_endpoints_lock_inside_a_transaction(alice, acme, alice_client):
    base = BaseModel.objects.create(name="tiny-llama", architecture={})
    Adapter.objects.create(tenant=acme, base_model=base, name="bot")
    assert alice_client.patch("/api/v1/adapters/bot", {"tier": "warm"}, format="json").status_code == 200
    assert alice_client.delete("/api/v1/adapters/bot").status_code == 204


@pytest.fixture
def locks(monkeypatch):
    """Every SELECT ... FOR UPDATE built while the test runs, as whether it was inside a transaction."""
    from django.db import connection
    from django.db.models.query import QuerySet

    seen, real = [], QuerySet.select_for_update

    def checked(self, *args, **kwargs):
        seen.append(connection.in_atomic_block)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(QuerySet, "select_for_update", checked)
    return seen


def test_the_dashboards_writes_lock_inside_the_services_transaction(alice, bob, acme, alice_client, locks):
    from django.test import Client

    client = Client()
    client.force_login(alice)
    key, _ = create_key(alice, acme)
    bob_membership = Membership.objects.get(user=bob, tenant=acme)
    invite, _ = services.invite_create(principal=principal_from_membership(Membership.objects.get(user=alice)),
                                       email="dora@acme.test", role="developer", accept_url_for=lambda t: t)
    base = BaseModel.objects.create(name="tiny-llama", architecture={})
    Adapter.objects.create(tenant=acme, base_model=base, name="bot")
    assert client.post(f"/keys/{key.prefix}/revoke/").status_code == 302
    assert client.post(f"/members/{bob_membership.pk}/role/", {"role": "admin"}).status_code == 302
    assert client.post(f"/invites/{invite.pk}/revoke/").status_code == 302
    assert client.post(f"/members/{bob_membership.pk}/remove/").status_code == 302
    assert client.post("/adapters/bot/tier/", {"tier": "warm"}).status_code == 302
    assert client.post("/adapters/bot/delete/").status_code == 302
    assert len(locks) >= 6 and all(locks), locks
    assert Invite.objects.get(pk=invite.pk).state == "revoked" and Adapter.objects.get().deleted_at is not None


def test_dataset_delete_and_job_cancel_lock_inside_the_services_transaction(alice, acme, alice_client, locks,
                                                                          adapter_storage):
    from tests.factories import make_adapter, make_dataset, make_job
    from training.models import Dataset, TrainingJob

    base = BaseModel.objects.create(name="tiny-llama", architecture={})
    job = make_job(acme, make_adapter(acme, base), make_dataset(acme))
    spare = make_dataset(acme, records=3)
    in_use = job.dataset_id
    assert alice_client.post(f"/v1/training/jobs/{job.id}/cancel").status_code == 200
    assert alice_client.delete(f"/api/v1/datasets/{spare.id}").status_code == 204
    assert alice_client.delete(f"/api/v1/datasets/{in_use}").status_code == 204  # its job was cancelled
    assert len(locks) >= 3 and all(locks), locks
    assert TrainingJob.objects.get().status == TrainingJob.CANCELLED
    assert not Dataset.objects.filter(deleted_at__isnull=True).exists()
