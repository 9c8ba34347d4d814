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
