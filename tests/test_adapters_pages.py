"""Dashboard pages for adapters (list, upload with and without JavaScript, detail, tier, delete) and the
tier-guarantee numbers on the Usage page."""

import re
from datetime import timedelta

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from adapters.models import Adapter, AdapterVersion
from billing.metering_lag import percentile
from serving.models import InferenceRequest
from tenants.roles import BILLING_VIEWER
from tests.adapter_files import stored_files, zipped
from tests.factories import make_member, make_node

# The API tests' fixtures: the tiny Llama's catalog row, real PEFT adapters, crafted bad ones, private storage.

pytestmark = pytest.mark.usefixtures("adapter_storage")

LIST = reverse("adapters")


def web(user):
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def alice_web(alice):
    return web(alice)


def post_upload(client, files, *, name="support-bot", base_model="tiny-llama", json=False, **fields):
    data = {"name": name, "base_model": base_model, "description": "", **fields,
            "file": [SimpleUploadedFile(n, d) for n, d in files]}
    headers = {"Accept": "application/json", "X-Requested-With": "XMLHttpRequest"} if json else {}
    return client.post(LIST, data, headers=headers)


@pytest.fixture
def uploaded(alice_web, tiny_llama, peft_v1):
    response = post_upload(alice_web, zipped(peft_v1))
    assert response.status_code == 302, response.content[:2000]
    return Adapter.objects.get(name="support-bot")


def detail_url(name="support-bot", action=None):
    return reverse({None: "adapter-detail", "tier": "adapter-tier", "delete": "adapter-delete"}[action], args=[name])


def text(response):
    return response.content.decode()


# The list and the upload form

def test_list_page_shows_the_adapters_and_the_upload_form(alice_web, uploaded):
    response = alice_web.get(LIST)
    assert response.status_code == 200
    html = text(response)
    assert f'href="{detail_url()}"' in html
    version = uploaded.current_version
    row = re.search(r"<tr>\s*<td><a href=\"/adapters/support-bot/\">.*?</tr>", html, re.S).group(0)
    for cell in ("tiny-llama", "v1", f"<td>{version.rank}</td>", "8.0\xa0KB", "badge--tier-cold", "(1&nbsp;unit)",
                 "$0.0001", "≤ 2000 ms"):
        assert cell in row, cell
    assert 'enctype="multipart/form-data"' in html and "data-upload" in html
    assert 'type="file" name="file"' in html and "multiple" in html and 'accept=".zip,.tar,.tar.gz,.tgz' in html
    assert '<option value="tiny-llama">' in html
    assert "<progress" in html and "vajra/upload.js" in html
    for price in ("$0.0001", "$0.0005", "$0.0020"):  # the tiers table, from the settings
        assert price in html


def test_list_page_when_empty(alice_web, tiny_llama):
    assert "No adapters yet" in text(alice_web.get(LIST))


def test_upload_form_needs_a_base_model(alice_web, db):
    html = text(alice_web.get(LIST))
    assert "No base model is available yet" in html and "data-upload" not in html


def test_upload_without_javascript(alice_web, tiny_llama, peft_v1, adapter_storage):
    response = post_upload(alice_web, zipped(peft_v1))
    assert response.status_code == 302 and response.url == LIST
    html = text(alice_web.get(LIST))
    assert "Uploaded support-bot v1: rank 4 on q_proj, v_proj, for tiny-llama." in html
    assert AdapterVersion.objects.get().adapter.name == "support-bot"
    assert len(stored_files(adapter_storage)) == 2


def test_upload_the_two_files_without_javascript(alice_web, tiny_llama, peft_v1):
    assert post_upload(alice_web, list(peft_v1.items())).status_code == 302
    assert AdapterVersion.objects.get().rank == 4


def test_validator_error_on_the_page(alice_web, tiny_llama, bad_adapters, adapter_storage, unchanged_db):
    with unchanged_db():
        response = post_upload(alice_web, bad_adapters["unknown_target_modules"])
    assert response.status_code == 400
    html = text(response)
    assert "[unknown_target_modules]" in html and "qkv_proj" in html
    assert 'class="field field--invalid"' in html
    assert 'value="support-bot"' in html  # the name is kept for the next try
    assert stored_files(adapter_storage) == []


def test_form_errors_on_the_page(alice_web, tiny_llama, peft_v1, unchanged_db):
    with unchanged_db():
        response = post_upload(alice_web, zipped(peft_v1), name="Not A Name", base_model="gpt-9")
        assert response.status_code == 400
        assert "Use 1-64 lowercase letters" in text(response) and "Select a valid choice" in text(response)
        assert "This field is required" in text(post_upload(alice_web, []))


def test_upload_with_javascript_answers_json(alice_web, tiny_llama, peft_v1):
    response = post_upload(alice_web, zipped(peft_v1), json=True)
    assert response.status_code == 201
    assert response.json() == {"adapter": "support-bot", "version": 1, "redirect": LIST, "url": detail_url()}
    assert "Uploaded support-bot v1" in text(alice_web.get(LIST))  # the page it reloads shows the message


def test_upload_errors_with_javascript_are_json(alice_web, tiny_llama, bad_adapters, peft_v1, unchanged_db):
    with unchanged_db():
        response = post_upload(alice_web, bad_adapters["bad_rank"], json=True)
        assert response.status_code == 400
        error = response.json()["error"]
        assert (error["code"], error["param"]) == ("bad_rank", "file") and "rank" in error["message"]

        response = post_upload(alice_web, zipped(peft_v1), name="Bad Name", json=True)
        assert response.status_code == 400
        error = response.json()["error"]
        assert (error["code"], error["param"]) == ("invalid", "name") and error["message"].startswith("Name: ")

        unsafe = [("a.zip", b"PK\x03\x04 not really")]
        error = post_upload(alice_web, unsafe, json=True).json()["error"]
        assert error["code"] == "invalid_archive" and "a.zip could not be opened" in error["message"]
        assert not re.search(r"\b[A-Z]\w*(Error|File|Exception)\b", error["message"]), "no Python exception names"


def test_upload_needs_the_csrf_token(alice, tiny_llama, peft_v1, unchanged_db):
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    with unchanged_db():
        assert post_upload(client, zipped(peft_v1), json=True).status_code == 403
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', text(client.get(LIST))).group(1)
    assert post_upload(client, zipped(peft_v1), json=True, csrfmiddlewaretoken=token).status_code == 201


# The detail page, tiers and delete

def test_detail_page_lists_versions_and_tiers(alice_web, uploaded, peft_v2):
    post_upload(alice_web, list(peft_v2.items()))
    response = alice_web.get(detail_url())
    assert response.status_code == 200
    html = text(response)
    v1, v2 = AdapterVersion.objects.get(number=1), AdapterVersion.objects.get(number=2)
    assert html.index(f">{v2.sha256[:12]}<") < html.index(f">{v1.sha256[:12]}<")  # newest first
    assert v1.sha256 not in html.replace(f'title="{v1.sha256}"', "")  # only the short form is shown
    assert re.search(r"v2 <span class=\"badge badge--active\">current</span>", html)
    for chip in ("q_proj", "k_proj", "v_proj", "o_proj"):
        assert f'<span class="chip">{chip}</span>' in html
    assert '"adapter_id": "support-bot"' in html
    assert 'value="cold" checked' in html
    tiers = (("hot", "$0.0020", "10 ms"), ("warm", "$0.0005", "100 ms"), ("cold", "$0.0001", "2000 ms"))
    for tier, price, ready in tiers:
        assert f'id="tier-{tier}"' in html and price in html and f"adapter ready within {ready}" in html
    assert f'action="{detail_url(action="delete")}"' in html and "data-confirm=" in html


def test_tier_change_through_the_form(alice_web, uploaded):
    response = alice_web.post(detail_url(action="tier"), {"tier": "warm"})
    assert response.status_code == 302 and response.url == detail_url()
    assert Adapter.objects.get().tier == "warm"
    html = text(alice_web.get(detail_url()))
    assert "support-bot is now warm: 5 units per query, adapter ready within 100 ms." in html
    assert 'value="warm" checked' in html


def test_hot_without_capacity_shows_why(alice_web, uploaded, unchanged_db):
    with unchanged_db():
        response = alice_web.post(detail_url(action="tier"), {"tier": "hot"})
    assert response.status_code == 409
    assert "No node serving tiny-llama has hot capacity left" in text(response)
    assert 'value="hot" checked' in text(response)  # what they asked for stays selected


def test_hot_with_capacity_through_the_form(alice_web, uploaded):
    make_node("test-pages-roomy")
    assert alice_web.post(detail_url(action="tier"), {"tier": "hot"}).status_code == 302
    assert Adapter.objects.get().tier == "hot"


def test_invalid_tier_through_the_form(alice_web, uploaded, unchanged_db):
    with unchanged_db():
        response = alice_web.post(detail_url(action="tier"), {"tier": "platinum"})
    assert response.status_code == 400 and "Select a valid choice" in text(response)


def test_delete_through_the_form(alice_web, uploaded):
    response = alice_web.post(detail_url(action="delete"))
    assert response.status_code == 302 and response.url == LIST
    html = text(alice_web.get(LIST))
    assert "Deleted support-bot" in html and f'href="{detail_url()}"' not in html
    assert Adapter.objects.get().deleted_at is not None and AdapterVersion.objects.count() == 1
    assert alice_web.get(detail_url()).status_code == 404


def test_tier_and_delete_need_post(alice_web, uploaded):
    assert alice_web.get(detail_url(action="tier")).status_code == 405
    assert alice_web.get(detail_url(action="delete")).status_code == 405


# Who sees what

def test_other_tenant_gets_404(charlie, uploaded, unchanged_db):
    client = web(charlie)
    with unchanged_db():
        assert client.get(detail_url()).status_code == 404
        assert client.post(detail_url(action="tier"), {"tier": "warm"}).status_code == 404
        assert client.post(detail_url(action="delete")).status_code == 404
        assert "support-bot" not in text(client.get(LIST))


def test_developer_sees_and_uploads(bob, uploaded, peft_v2):
    client = web(bob)
    assert "support-bot" in text(client.get(LIST))
    assert client.get(detail_url()).status_code == 200
    assert "Upload an adapter" in text(client.get(LIST))
    assert post_upload(client, list(peft_v2.items()), name="bobs").status_code == 302


def test_billing_viewer_is_refused(acme, alice, uploaded, peft_v1, unchanged_db):
    client = web(make_member("vera@acme.test", acme, BILLING_VIEWER))
    with unchanged_db():
        response = client.get(LIST)
        assert response.status_code == 403 and "does not include adapters" in text(response)
        assert client.get(detail_url()).status_code == 403
        assert post_upload(client, zipped(peft_v1), name="vera").status_code == 403
        assert client.post(detail_url(action="delete")).status_code == 403


# Usage: tier guarantees

def test_percentile_is_nearest_rank():
    assert percentile([], 50) is None
    assert percentile([7.0], 95) == 7.0
    assert (percentile([1, 2, 3, 4], 50), percentile([1, 2, 3, 4], 95)) == (2, 4)
    values = list(range(1, 101))
    assert (percentile(values, 50), percentile(values, 95), percentile(values, 100)) == (50, 95, 100)


def add_requests(tenant, base_model, specs):
    """specs: (id, tier, adapter_ready_ms, first_token_ms, age). The guarantee flag as the intake for finals sets it."""
    from django.conf import settings

    rows = InferenceRequest.objects.bulk_create([
        InferenceRequest(id=rid, tenant=tenant, base_model=base_model, tier=tier, max_tokens=16, status="succeeded",
                         prompt_tokens=5, completion_tokens=7, adapter_ready_ms=ready, first_token_ms=first,
                         guarantee_broken=ready is not None and ready > settings.VAJRA_TIER_READY_MS[tier])
        for rid, tier, ready, first, _ in specs])
    now = timezone.now()
    for (rid, *_, age) in specs:  # created_at is auto_now_add: set the age afterwards
        InferenceRequest.objects.filter(pk=rid).update(created_at=now - age)
    return rows


def test_usage_shows_percentiles_per_tier(alice_web, acme, contoso, tiny_llama):
    hour = timedelta(hours=1)
    add_requests(acme, tiny_llama, [(f"req_hot{i:03d}", "hot", float(i), 2.0 * i, hour) for i in range(1, 101)])
    add_requests(acme, tiny_llama, [
        ("req_cold1", "cold", 100.0, 400.0, timedelta(days=3)), ("req_cold2", "cold", 200.0, 500.0, timedelta(days=3)),
        ("req_cold3", "cold", 3000.0, 600.0, timedelta(days=2)),
        ("req_cold_old", "cold", 9.0, 9.0, timedelta(days=8)),  # outside both windows
        ("req_warm_none", "warm", None, None, hour),  # failed before its adapter was ready: counted, no timing
    ])
    add_requests(contoso, tiny_llama, [("req_charlie", "hot", 5000.0, 5000.0, hour)])

    response = alice_web.get(reverse("usage"))
    assert response.status_code == 200
    day, week = ({t["tier"]: t for t in w["tiers"]} for w in response.context["windows"])
    assert (day["hot"]["requests"], day["hot"]["ready_p50"], day["hot"]["ready_p95"]) == (100, 50.0, 95.0)
    assert (day["hot"]["first_p50"], day["hot"]["first_p95"], day["hot"]["broken"]) == (100.0, 190.0, 90)
    assert day["hot"]["p95_over"] and day["hot"]["adapter_ready_ms_guarantee"] == 10
    assert (day["cold"]["requests"], day["cold"]["ready_p50"]) == (0, None)
    assert (day["warm"]["requests"], day["warm"]["ready_p95"]) == (1, None)
    assert (week["cold"]["requests"], week["cold"]["ready_p50"], week["cold"]["ready_p95"]) == (3, 200.0, 3000.0)
    assert (week["cold"]["broken"], week["cold"]["first_p95"]) == (1, 600.0)
    assert week["hot"]["requests"] == 100

    days = response.context["days"]
    assert [(d["tier"], d["requests"]) for d in days] == [("hot", 100), ("warm", 1), ("cold", 1), ("cold", 2)]
    assert days[0]["ready_p95"] == 95.0 and days[0]["day"] == timezone.localdate(timezone.now() - hour)

    html = text(response)
    assert "95.0" in html and "190.0" in html and "≤ 10 ms" in html
    recent = response.context["recent"]
    assert len(recent) == 20 and all(r.tenant_id == acme.pk for r in recent)
    assert html.count(">broken</span>") == sum(r.guarantee_broken for r in recent) > 0
    assert "req_charlie" not in html and "5000" not in html


def test_usage_rows_are_bounded(alice_web, acme, tiny_llama, monkeypatch):
    from serving import views

    monkeypatch.setattr(views, "USAGE_ROWS_CAP", 5)
    add_requests(acme, tiny_llama, [(f"req_{i}", "cold", float(i), float(i), timedelta(minutes=i)) for i in range(8)])
    response = alice_web.get(reverse("usage"))
    day = {t["tier"]: t for t in response.context["windows"][0]["tiers"]}
    assert day["cold"]["requests"] == 5 and day["cold"]["ready_p95"] == 4.0  # the newest five
    assert "Computed over the newest 5 requests" in text(response)


def test_usage_page_when_there_are_no_requests(alice_web):
    html = text(alice_web.get(reverse("usage")))
    assert "No requests in the last 7 days" in html and "No requests yet" in html


def test_usage_page_for_every_role(bob, acme, alice):
    for user in (bob, make_member("vera@acme.test", acme, BILLING_VIEWER)):
        assert web(user).get(reverse("usage")).status_code == 200


def test_list_page_shows_storage_used_of_the_plans_quota(alice_web, acme, uploaded):
    from tests.factories import put_on_plan

    put_on_plan(acme, storage_max_bytes=10 << 20)
    page = " ".join(text(alice_web.get(reverse("adapters"))).replace("\xa0", " ").split())
    size = uploaded.current_version.size_bytes
    assert f"Storage used by adapters and datasets: {size / 1024:.1f} KB of 10.0 MB" in page


# The audit log names what was uploaded, made current and deleted

def test_upload_make_current_and_delete_are_audited_by_name(alice_web, uploaded, peft_v2, acme):
    from tenants.models import AuditEntry

    post_upload(alice_web, list(peft_v2.items()))
    assert alice_web.post(reverse("adapter-rollback", args=["support-bot"]), {"version": "1"}).status_code == 302
    assert alice_web.post(detail_url(action="delete")).status_code == 302
    entries = list(AuditEntry.objects.filter(tenant=acme).order_by("id"))
    assert [(e.action, e.target_name) for e in entries] == [
        ("adapter.uploaded", "support-bot@v1"), ("adapter.uploaded", "support-bot@v2"),
        ("adapter.made_current", "support-bot@v1"), ("adapter.deleted", "support-bot")]
    v2 = AdapterVersion.objects.get(number=2)
    assert entries[1].details == {"base_model": "tiny-llama", "rank": v2.rank, "size_bytes": v2.size_bytes,
                                  "sha256": v2.sha256}
    assert entries[2].details == {"previous": "v2"} and entries[3].details["current"] == 1
    assert all(e.actor_user.email == "alice@acme.test" for e in entries)
    page = text(alice_web.get(reverse("audit-log")))
    for label in ("Adapter version uploaded", "Adapter version made current", "Adapter deleted"):
        assert label in page
    assert ">support-bot@v2</span>" in page and ">support-bot</span>" in page
    assert f">adapter {uploaded.pk}<" not in page, "targets are named, not numbered (the id is on hover)"


def test_a_refused_upload_is_not_audited(alice_web, tiny_llama, unchanged_db):
    with unchanged_db():
        assert post_upload(alice_web, [("a.zip", b"PK\x03\x04 not really")]).status_code == 400
