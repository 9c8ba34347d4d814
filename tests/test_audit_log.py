"""The audit log: each audited action writes exactly one entry with who, what, the IP and the
request id, in the action's own transaction; a refused action writes none; only owners and admins read it,
only their own tenant's, through GET /api/v1/audit-log and the dashboard page; entries cannot be changed."""

import json

import pytest
import stripe
from django.db import transaction
from django.urls import reverse
from rest_framework.exceptions import PermissionDenied

from adapters import services as adapter_services
from adapters.models import Adapter
from billing.invoices import invoice_transition
from billing.models import Invoice
from billing.webhooks import stripe_event_handle
from tenants import services
from tenants.audit import audit_record
from tenants.models import APIKey, AuditEntry, Membership
from tenants.principal import Principal
from tenants.roles import ADMIN, BILLING_VIEWER, DEVELOPER
from tests.billing_helpers import close, invoice_of, usage
from tests.factories import (
    TRAINING_HP,
    create_key,
    jsonl,
    key_client,
    make_base,
    make_dataset,
    make_job,
    make_member,
    make_principal,
    session_client,
)
from tests.helpers import assert_error, capture_sent
from training import jobs
from training.datasets import dataset_delete
from training.models import TrainingJob
from vajra.errors import Conflict, InvalidRequest

pytestmark = pytest.mark.usefixtures("local_only")

URL = "/api/v1/audit-log"
HEADERS = {"HTTP_X_REQUEST_ID": "req_audit_test_0001", "REMOTE_ADDR": "203.0.113.7"}


def only_entry(**filters):
    entries = list(AuditEntry.objects.filter(**filters))
    assert len(entries) == 1, [(e.action, e.target_id) for e in entries]
    return entries[0]




# ---- every action writes one entry ---------------------------------------------------------------------------

def test_key_created_and_revoked_from_the_dashboard(client, alice, acme):
    client.force_login(alice)
    response = client.post(reverse("api-keys"), {"name": "ci", "scopes": ["infer"]}, **HEADERS)
    assert response.status_code == 200
    key = APIKey.objects.get(tenant=acme, name="ci")
    created = only_entry(action="api_key.created")
    assert (created.tenant, created.actor_user, created.actor_email, created.target_type, created.target_id) == (
        acme, alice, "alice@acme.test", "api_key", key.prefix)
    assert created.details == {"name": "ci", "scopes": ["infer"], "expires_at": None}
    assert (created.ip, created.request_id) == ("203.0.113.7", "req_audit_test_0001")
    client.post(reverse("api-key-revoke", args=[key.prefix]), **HEADERS)
    client.post(reverse("api-key-revoke", args=[key.prefix]), **HEADERS)  # twice: one revocation
    revoked = only_entry(action="api_key.revoked")
    assert (revoked.target_id, revoked.actor_user, revoked.details) == (key.prefix, alice, {"name": "ci"})
    assert AuditEntry.objects.count() == 2


def test_key_created_over_the_api_records_the_request_id(alice_client, acme):
    response = alice_client.post("/api/v1/keys", {"name": "api", "scopes": ["infer"]}, format="json",
                                 HTTP_X_REQUEST_ID="req_from_the_caller_42")
    assert response.status_code == 201, response.json()
    assert only_entry(action="api_key.created").request_id == "req_from_the_caller_42"


def test_tier_change_records_old_and_new_by_key(alice, acme):
    key, _ = create_key(alice, acme)
    adapter = Adapter.objects.create(tenant=acme, base_model=make_base(), name="support-bot")
    principal = Principal(tenant=acme, user=alice, api_key=key)
    with transaction.atomic():
        adapter_services.adapter_set_tier(principal=principal, name=adapter.name, tier=Adapter.WARM)
        adapter_services.adapter_set_tier(principal=principal, name=adapter.name, tier=Adapter.WARM)  # no change
    entry = only_entry(action="adapter.tier_changed")
    assert (entry.target_type, entry.target_id, entry.actor_api_key, entry.actor_key_prefix) == (
        "adapter", str(adapter.pk), key, key.prefix)
    assert entry.details == {"name": "support-bot", "old": "cold", "new": "warm"}
    assert entry.ip is None and entry.request_id == ""  # no request was being served


def test_training_started_and_cancelled(alice, acme, monkeypatch, adapter_storage):
    capture_sent(monkeypatch)
    base, dataset = make_base(), make_dataset(acme)
    job = jobs.training_create(principal=make_principal(acme, alice), base_model=base, adapter_name="support-bot",
                                   dataset_ref=dataset.id, hyperparameters=TRAINING_HP)
    started = only_entry(action="training.started")
    assert (started.target_type, started.target_id, started.actor_user) == ("training_job", job.id, alice)
    assert started.details["adapter"] == "support-bot" and started.details["dataset"] == dataset.id
    assert started.details["estimated_gradients"] == job.estimated_gradients
    jobs.training_cancel(principal=make_principal(acme, alice), job_id=job.id)
    cancelled = only_entry(action="training.cancelled")
    assert (cancelled.target_id, cancelled.details) == (job.id, {"status": TrainingJob.VALIDATING})


def test_dataset_fetched_from_a_url_and_deleted(alice, acme, monkeypatch, adapter_storage, tmp_path, settings):
    capture_sent(monkeypatch)
    store = tmp_path / "store" / "acme"
    store.mkdir(parents=True)
    (store / "support.jsonl").write_bytes(jsonl(6))
    settings.VAJRA_TENANT_DATASET_URL_PREFIXES = {"acme": [f"file://{store}/"]}
    job = jobs.training_create(principal=make_principal(acme, alice), base_model=make_base(), adapter_name="bot",
                               dataset_ref=f"file://{store}/support.jsonl", hyperparameters=TRAINING_HP)
    fetched = only_entry(action="dataset.fetched")
    assert (fetched.tenant, fetched.actor_user, fetched.target_type, fetched.target_id, fetched.target_name) == (
        acme, alice, "dataset", job.dataset_id, "support.jsonl")
    assert fetched.details == {"url": f"file://{store}/support.jsonl", "records": 6, "size_bytes": len(jsonl(6)),
                               "format": "completion", "sha256": job.dataset.sha256}
    assert only_entry(action="training.started").details["dataset"] == job.dataset_id
    assert not AuditEntry.objects.filter(action="dataset.uploaded").exists()

    jobs.training_cancel(principal=make_principal(acme, alice), job_id=job.id)
    dataset_delete(principal=make_principal(acme, alice), dataset_id=job.dataset_id)
    deleted = only_entry(action="dataset.deleted")
    assert (deleted.actor_user, deleted.target_id, deleted.target_name, deleted.details) == (
        alice, job.dataset_id, "support.jsonl", {"records": 6})


def test_a_refused_url_dataset_writes_no_entry(alice, acme, monkeypatch, adapter_storage, tmp_path, settings,
                                              unchanged_db):
    capture_sent(monkeypatch)
    store = tmp_path / "store" / "acme"
    store.mkdir(parents=True)
    (store / "bad.jsonl").write_bytes(jsonl(2) + b'{"prompt": 1}\n')
    settings.VAJRA_TENANT_DATASET_URL_PREFIXES = {"acme": [f"file://{store}/"]}
    base = make_base()
    with unchanged_db(), pytest.raises(InvalidRequest):
        jobs.training_create(principal=make_principal(acme, alice), base_model=base, adapter_name="bot",
                             dataset_ref=f"file://{store}/bad.jsonl", hyperparameters=TRAINING_HP)
    assert not AuditEntry.objects.exists()


def test_cancelling_a_running_job_twice_is_one_entry(alice, acme, monkeypatch):
    capture_sent(monkeypatch)
    base = make_base()
    adapter = Adapter.objects.create(tenant=acme, base_model=base, name="bot")
    job = make_job(acme, adapter, make_dataset(acme), status=TrainingJob.RUNNING)
    for _ in range(2):
        jobs.training_cancel(principal=make_principal(acme, alice), job_id=job.id)
    assert only_entry(action="training.cancelled").details == {"status": TrainingJob.RUNNING}


@pytest.fixture
def open_invoice(acme, plan):
    usage(acme, "12.3456000000", tier="warm")
    close()
    return invoice_of(acme)


def test_period_close_records_the_finalized_invoice(open_invoice, acme):
    entry = only_entry(action="invoice.finalized")
    assert (entry.tenant, entry.target_id, entry.actor) == (acme, open_invoice.id, "system")
    assert entry.details == {"number": open_invoice.number, "total": str(open_invoice.total), "currency": "usd"}


@pytest.mark.parametrize("word,action,status", [
    ("void", "invoice.voided", Invoice.VOID),
    ("mark-uncollectible", "invoice.marked_uncollectible", Invoice.UNCOLLECTIBLE),
    ("mark-paid", "invoice.paid", Invoice.PAID),
])
def test_invoice_actions_from_the_dashboard(open_invoice, olga_client, olga, word, action, status):
    response = olga_client.post(reverse("invoice-action", args=[open_invoice.id, word]), **HEADERS)
    assert response.status_code == 302
    entry = only_entry(action=action)
    assert (entry.target_id, entry.actor_user, entry.ip) == (open_invoice.id, olga, "203.0.113.7")
    assert entry.details == {"number": open_invoice.number, "old": "open", "new": status}


def stripe_event(event_type, invoice, event_id):
    return stripe.Event.construct_from(json.loads(json.dumps({
        "id": event_id, "object": "event", "type": event_type,
        "data": {"object": {"id": invoice.stripe_invoice_id, "object": "invoice", "metadata": {},
                            "status_transitions": {"paid_at": None}}}})), "sk_test")


def test_paid_through_the_webhook_records_the_event_once(open_invoice):
    Invoice.objects.filter(pk=open_invoice.pk).update(stripe_invoice_id="in_audit_1")
    open_invoice.refresh_from_db()
    stripe_event_handle(event=stripe_event("invoice.paid", open_invoice, "evt_audit_1"))
    stripe_event_handle(event=stripe_event("invoice.paid", open_invoice, "evt_audit_1"))  # a redelivery
    stripe_event_handle(event=stripe_event("invoice.paid", open_invoice, "evt_audit_2"))  # already paid
    entry = only_entry(action="invoice.paid")
    assert entry.actor == "system" and entry.details["stripe_event"] == "evt_audit_1"


def test_member_role_change_and_removal(client, alice, bob, acme):
    client.force_login(alice)
    bob_membership = Membership.objects.get(user=bob, tenant=acme)
    key, _ = create_key(bob, acme)
    client.post(reverse("member-role", args=[bob_membership.pk]), {"role": ADMIN}, **HEADERS)
    changed = only_entry(action="member.role_changed")
    assert (changed.target_type, changed.target_id, changed.actor_user) == ("membership", str(bob_membership.pk), alice)
    assert changed.details == {"email": "bob@acme.test", "old": DEVELOPER, "new": ADMIN, "narrowed_keys": {},
                               "revoked_keys": []}
    client.post(reverse("member-remove", args=[bob_membership.pk]), **HEADERS)
    removed = only_entry(action="member.removed")
    assert removed.details == {"email": "bob@acme.test", "role": ADMIN, "left": False, "revoked_keys": [key.prefix]}


# ---- refusals write nothing ----------------------------------------------------------------------------------

def test_refused_actions_write_no_entry(client, alice, bob, acme, open_invoice, unchanged_db):
    alice_key, _ = create_key(alice, acme)
    client.force_login(bob)
    alice_membership = Membership.objects.get(user=alice, tenant=acme)
    with unchanged_db():
        assert client.post(reverse("member-role", args=[alice_membership.pk]), {"role": ADMIN}).status_code == 403
        assert client.post(reverse("member-remove", args=[alice_membership.pk])).status_code == 403
        assert client.post(reverse("api-key-revoke", args=[alice_key.prefix])).status_code == 403
        assert client.post(reverse("invoice-action", args=[open_invoice.id, "void"])).status_code == 403
        response = client.post(reverse("api-keys"), {"name": "x", "scopes": ["billing:read"]})
        assert response.status_code in (400, 403)
    with unchanged_db(), pytest.raises(Conflict, match="cannot be"):
        invoice_transition(invoice_id=open_invoice.id, to=Invoice.OPEN)
    assert not AuditEntry.objects.exclude(action="invoice.finalized").exists()


def test_a_refused_tier_change_writes_no_entry(alice, acme, unchanged_db):
    adapter = Adapter.objects.create(tenant=acme, base_model=make_base(), name="bot")
    with unchanged_db(), pytest.raises(InvalidRequest):
        adapter_services.adapter_set_tier(principal=make_principal(acme, alice), name=adapter.name, tier="lukewarm")
    with unchanged_db(), pytest.raises(PermissionDenied):
        adapter_services.adapter_set_tier(principal=Principal(tenant=acme, role=BILLING_VIEWER), name=adapter.name,
                                  tier=Adapter.WARM)


def test_an_entry_only_exists_with_its_action():
    with pytest.raises(RuntimeError, match="inside the action's transaction"):
        audit_record(tenant=1, action="api_key.created", target_type="api_key", target_id="x")


def test_entries_are_append_only(alice, acme):
    services.api_key_create(principal=make_principal(acme, alice), name="k", scopes=["infer"])
    entry = AuditEntry.objects.get()
    entry.action = "api_key.revoked"
    with pytest.raises(ValueError, match="append-only"):
        entry.save()
    with pytest.raises(ValueError, match="append-only"):
        entry.delete()


# ---- reading it ------------------------------------------------------------------------------------------------

def make_entries(tenant, user, count):
    principal = make_principal(tenant, user)
    return [services.api_key_create(principal=principal, name=f"k{i}", scopes=["infer"])[0] for i in range(count)]


def test_api_lists_newest_first_pages_and_filters(alice_client, alice, acme):
    keys = make_entries(acme, alice, 3)
    with transaction.atomic():
        services.api_key_revoke(principal=make_principal(acme, alice), prefix=keys[0].prefix)
    body = alice_client.get(URL, {"limit": 2}).json()
    assert [e["action"] for e in body["data"]] == ["api_key.revoked", "api_key.created"] and body["has_more"]
    first = body["data"][0]
    assert first["actor"] == {"user": "alice@acme.test", "api_key": None}
    assert first["target"] == {"type": "api_key", "id": keys[0].prefix} and first["object"] == "audit_entry"
    rest = alice_client.get(URL, {"limit": 2, "before": body["data"][-1]["id"]}).json()
    assert [e["target"]["id"] for e in rest["data"]] == [keys[1].prefix, keys[0].prefix] and not rest["has_more"]
    created = alice_client.get(URL, {"action": "api_key.created"}).json()["data"]
    assert [e["target"]["id"] for e in created] == [k.prefix for k in reversed(keys)]


@pytest.mark.parametrize("params,param", [
    ({"action": "key.stolen"}, "action"), ({"limit": 0}, "limit"), ({"limit": "many"}, "limit"),
    ({"before": "x"}, "before"), ({"sort": "asc"}, "sort"),
])
def test_api_bad_query_is_a_400_naming_it(alice_client, alice, acme, params, param, unchanged_db):
    with unchanged_db():
        error = assert_error(alice_client.get(URL, params), 400, param=param)
    if param == "action":
        assert "api_key.created" in error["message"]  # says what is allowed


def test_admin_reads_it_developer_and_billing_viewer_do_not(alice, bob, acme, unchanged_db):
    make_entries(acme, alice, 1)
    admin = make_member("ada@acme.test", acme, ADMIN)
    viewer = make_member("vic@acme.test", acme, BILLING_VIEWER)
    assert len(session_client(admin).get(URL).json()["data"]) == 1
    for client in (session_client(bob), session_client(viewer)):
        with unchanged_db():
            assert_error(client.get(URL), 403, code="role_forbidden")
            assert client.get(reverse("audit-log")).status_code == 403
        assert b"Audit log" not in client.get(reverse("dashboard")).content  # not in their nav


def test_api_keys_cannot_read_it(alice, acme):
    make_entries(acme, alice, 1)
    assert_error(key_client(create_key(alice, acme)[1]).get(URL), 403, code="session_required")


def test_charlie_never_sees_acme_entries(alice, acme, charlie, contoso, charlie_client):
    make_entries(contoso, charlie, 1)
    make_entries(acme, alice, 2)
    data = charlie_client.get(URL).json()["data"]
    assert len(data) == 1 and data[0]["actor"]["user"] == "charlie@contoso.test"
    acme_newest = AuditEntry.objects.filter(tenant=acme).order_by("-id").first()
    assert charlie_client.get(URL, {"before": acme_newest.id + 1}).json()["data"] == data
    page = charlie_client.get(reverse("audit-log")).content.decode()
    assert "charlie@contoso.test" in page and "alice@acme.test" not in page


def test_dashboard_page_lists_and_filters(alice_client, alice, acme):
    keys = make_entries(acme, alice, 2)
    page = alice_client.get(reverse("audit-log")).content.decode()
    assert all(k.prefix in page for k in keys) and "api_key.created" in page
    assert 'href="/audit-log/"' in alice_client.get(reverse("dashboard")).content.decode()  # in alice's nav
    assert alice_client.get(reverse("audit-log"), {"action": "invoice.paid"}).content.decode().count(
        "Nothing recorded for this action") == 1
    response = alice_client.get(reverse("audit-log"), {"action": "nope"})
    assert response.status_code == 400 and b"is not an audit action" in response.content


def test_django_admin_is_read_only(client, alice, acme):
    make_entries(acme, alice, 1)
    alice.is_staff = alice.is_superuser = True
    alice.save()
    client.force_login(alice)
    entry = AuditEntry.objects.get()
    assert client.get(reverse("admin:tenants_auditentry_changelist")).status_code == 200
    assert client.get(reverse("admin:tenants_auditentry_change", args=[entry.pk])).status_code == 200
    assert client.get(reverse("admin:tenants_auditentry_add")).status_code == 403
    assert client.post(reverse("admin:tenants_auditentry_delete", args=[entry.pk]), {"post": "yes"}).status_code == 403
    assert AuditEntry.objects.count() == 1
