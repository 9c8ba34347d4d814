"""The dashboard read and used in a browser, signed in with some data: charts with axes and values under the
cursor, the usage range and its CSV, requests paged and filtered, copy buttons and code tabs, drag-and-drop upload
with errors in the user's words, Make current, the playground's code, the API reference, and no page that scrolls
sideways at 1280 or 420 px. Screenshots go to /work/screens/ when that folder can be written."""

import os
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from adapters.models import Adapter, AdapterVersion
from billing.models import UsageEvent
from billing.plans import ensure_default_plan, period_of
from fleet.models import Node
from serving.models import InferenceRequest
from tenants.audit import audit_record
from tests.factories import PASSWORD, make_base, make_job
from training.models import TrainingJob

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    pytest.mark.filterwarnings("ignore:Session-scoped fixtures defined as instance methods"
                               ":pytest.PytestRemovedIn10Warning"),
]

SCREENS = Path(os.environ.get("VAJRA_SCREENS", "/work/screens"))
PAGES = ["/", "/adapters/", "/adapters/support-bot-with-a-rather-long-name/", "/adapters/summarizer/",
         "/playground/", "/training/", "/training/jobs/ftjob_ui_1/", "/keys/", "/members/", "/usage/", "/billing/",
         "/billing/plan/", "/audit-log/", "/nodes/", "/api/docs/"]


def shot(page, name):
    if SCREENS.is_dir() and os.access(SCREENS, os.W_OK):
        page.screenshot(path=str(SCREENS / f"{name}.png"), full_page=True)


def version(adapter, number, **fields):
    return AdapterVersion.objects.create(adapter=adapter, number=number, status=AdapterVersion.READY,
                                         sha256=f"{number:064x}", size_bytes=1_860_000, rank=8, alpha=16,
                                         target_modules=["q_proj", "v_proj"], dtype="F32",
                                         storage_key=f"adapters/ui/{adapter.pk}-{number}", **fields)


@pytest.fixture
def seeded(alice, acme):
    """acme with a long-named warm adapter (two versions, the newer one trained), a hot adapter pinned on a node,
    30 requests, a month of usage and a few audit entries."""
    alice.is_staff = True
    alice.save()
    now = timezone.now()
    base = make_base("tiny-llama")  # with its architecture, as a node's catalog entry has
    bot = Adapter.objects.create(tenant=acme, base_model=base, name="support-bot-with-a-rather-long-name",
                                 tier=Adapter.WARM)
    v1 = version(bot, 1)
    job = make_job(acme, bot, job_id="ftjob_ui_1", status=TrainingJob.SUCCEEDED)
    v2 = version(bot, 2, source=AdapterVersion.TRAINING)
    job.result_version = v2
    job.save()
    bot.current_version = v2
    bot.save()
    summarizer = Adapter.objects.create(tenant=acme, base_model=base, name="summarizer", tier=Adapter.HOT)
    summarizer.current_version = version(summarizer, 1)
    summarizer.save()
    Node.objects.create(name="node-a", base_model="tiny-llama", device="cpu", last_heartbeat_at=now,
                        state={"resident": {"pinned": [f"a{summarizer.pk}:1"], "host": [f"a{bot.pk}:2"]}})
    for i in range(30):
        InferenceRequest.objects.create(
            id=f"req_ui_{i:02d}_{'f' * 24}", tenant=acme, base_model=base, adapter_version=v2 if i % 2 else v1,
            tier="warm", max_tokens=64, prompt_tokens=1200 + i, completion_tokens=64,
            status="failed" if i % 5 == 0 else "succeeded", adapter_ready_ms=12.5 + i, first_token_ms=80.0 + i)
    plan = ensure_default_plan()
    start = now.replace(day=1, hour=0, minute=1, second=0, microsecond=0)
    for day in range((now - start).days + 1):
        UsageEvent.objects.create(key=f"inference:ui-{day}", tenant=acme, kind=UsageEvent.INFERENCE, plan=plan,
                                  occurred_at=min(start + timedelta(days=day), now), period=period_of(now),
                                  tier="warm", adapter=bot, cost=Decimal("1234.5") + day)
    from django.db import transaction

    with transaction.atomic():
        audit_record(tenant=acme, action="adapter.uploaded", target_type="adapter_version", target_id=v1.pk,
                     target_name=f"{bot.name}@v1", details={"rank": 8, "sha256": v1.sha256})
        audit_record(tenant=acme, action="adapter.made_current", target_type="adapter_version", target_id=v2.pk,
                     target_name=f"{bot.name}@v2", details={"previous": "v1"})
    return {"bot": bot, "summarizer": summarizer}


@pytest.fixture
def signed_in(page, live_server, seeded):
    page.goto(f"{live_server.url}/login/")
    page.get_by_label("Email").fill("alice@acme.test")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Acme")
    return page


@pytest.mark.parametrize("width", [1280, 420])
def test_no_page_scrolls_sideways(signed_in, live_server, width):
    page = signed_in
    page.set_viewport_size({"width": width, "height": 900})
    for path in PAGES:
        response = page.goto(f"{live_server.url}{path}")
        assert response.status == 200, path
        expect(page.locator("main")).to_be_visible()
        if path == "/usage/":
            expect(page.locator("[data-chart-ready]")).to_have_count(4)
        if path == "/api/docs/":
            expect(page.locator(".opblock-tag").first).to_be_visible()
        overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0, f"{path} scrolls sideways by {overflow}px at {width}px"
        shot(page, f"{width}{path.strip('/').replace('/', '_') or '_overview'}")


def test_usage_charts_range_csv_and_requests(signed_in, live_server):
    page = signed_in
    page.goto(f"{live_server.url}/usage/")
    daily = page.locator('[data-chart="chart-day"]')
    expect(daily.locator("canvas")).to_have_count(1)
    expect(daily.locator(".u-axis")).to_have_count(2)  # x and y axes
    daily.scroll_into_view_if_needed()
    box = daily.locator(".u-over").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.move(box["x"] + 2, box["y"] + box["height"] / 2)  # over the first day
    expect(daily.locator(".u-legend .u-series").nth(1).locator(".u-value")).to_have_text("$1,234.5000")
    expect(page.locator("[data-period-spend]")).to_contain_text(",")  # thousands separators

    today = timezone.now().date()
    page.get_by_role("textbox", name="From").fill(today.isoformat())
    page.get_by_role("textbox", name="To").fill(today.isoformat())
    page.get_by_role("button", name="Show").click()
    expect(page.get_by_role("heading", name=f"Cost from {today:%-d %b %Y} to {today:%-d %b %Y}")).to_be_visible()
    with page.expect_download() as download:
        page.get_by_role("link", name="Export CSV").click()
    lines = Path(download.value.path()).read_text().splitlines()
    assert lines[0].startswith("bucket,kind,tier,adapter,requests")
    assert lines[1:] and all(line.startswith(today.isoformat()) for line in lines[1:]), lines

    table = page.locator("[data-requests]")
    expect(table.locator("tbody tr")).to_have_count(20)
    first = table.locator("tbody tr").first
    expect(first.locator("code")).to_have_attribute("title", "req_ui_29_" + "f" * 24)
    row_height = first.bounding_box()["height"]
    assert row_height < 60, f"a request row is {row_height}px tall: the model name wraps"
    expect(page.get_by_text("Page 1 of 2 · 30 requests")).to_be_visible()
    page.get_by_role("link", name="Older →").click()
    expect(table.locator("tbody tr")).to_have_count(10)
    page.get_by_label("Status").select_option("failed")
    page.get_by_role("button", name="Filter").click()
    expect(table.locator("tbody tr")).to_have_count(6)
    expect(page.get_by_text("Page 1 of 1 · 6 requests")).to_be_visible()
    shot(page, "usage_filtered")


def test_code_blocks_copy_and_adapter_tabs(signed_in, live_server, seeded):
    page = signed_in
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    bot = seeded["bot"]
    page.goto(f"{live_server.url}/adapters/{bot.name}/")
    page.get_by_role("tab", name="OpenAI SDK").click()
    sdk = page.get_by_role("tabpanel")
    expect(sdk).to_contain_text(f'model="{bot.name}"')
    expect(page.locator("#use-curl")).to_be_hidden()
    sdk.get_by_role("button", name="Copy this code").click()
    expect(sdk.get_by_role("button", name="Copy this code")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()").startswith("import os\nfrom openai import OpenAI")

    expect(page.locator("[data-residence]")).to_contain_text("node-a")  # warm: held in host RAM there
    expect(page.get_by_role("link", name="Training job")).to_have_attribute("href", "/training/jobs/ftjob_ui_1/")
    expect(page.get_by_role("button", name="Roll back")).to_have_count(0)
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Make v1 current").click()
    expect(page.get_by_role("status")).to_contain_text("v1 is current again")
    expect(page.get_by_role("button", name="Make v2 current")).to_be_visible()
    shot(page, "adapter_detail")

    page.goto(f"{live_server.url}/adapters/summarizer/")
    expect(page.locator("[data-residence]")).to_contain_text("Pinned on node")
    expect(page.locator("[data-residence]")).to_contain_text("node-a")

    page.goto(f"{live_server.url}/")
    expect(page.locator(".code-block button")).to_have_count(1)  # the overview's curl
    expect(page.locator("[data-rate-limit]")).to_have_text("3,000")


def test_drag_and_drop_upload_reports_errors_in_plain_words(signed_in, live_server):
    page = signed_in
    page.goto(f"{live_server.url}/adapters/")
    page.get_by_label("Name", exact=True).fill("dropped")
    page.locator("[data-dropzone]").evaluate("""zone => {
        const data = new DataTransfer();
        data.items.add(new File(["PK\\u0003\\u0004 not an archive"], "broken.zip", {type: "application/zip"}));
        zone.dispatchEvent(new DragEvent("drop", {dataTransfer: data, bubbles: true, cancelable: true}));
    }""")
    expect(page.locator("[data-dropzone-files]")).to_contain_text("broken.zip")
    page.get_by_role("button", name="Upload adapter").click()
    expect(page.locator(".form-errors")).to_contain_text("Please correct the fields marked below")
    error = page.locator(".field--invalid .field-error")
    expect(error).to_contain_text("broken.zip could not be opened as a .zip, .tar, .tar.gz or .tgz archive")
    expect(error).not_to_contain_text("BadZipFile")
    shot(page, "adapters_upload_error")


def test_playground_view_code_follows_the_settings(signed_in, live_server, seeded):
    page = signed_in
    page.goto(f"{live_server.url}/playground/")
    page.get_by_label("Model").select_option("summarizer")
    page.get_by_label("Temperature").fill("0.2")
    page.get_by_role("button", name="View code").click()
    code = page.locator("#pg-code-curl")
    expect(code).to_contain_text('"model": "summarizer"')
    expect(code).to_contain_text('"temperature": 0.2')
    page.get_by_label("Max tokens").fill("32")
    expect(code).to_contain_text('"max_tokens": 32')
    page.locator("#pg-tab-openai").click()
    expect(page.locator("#pg-code-openai")).to_contain_text("max_tokens=32")
    shot(page, "playground_code")


def test_api_reference_lists_the_inference_api_and_links_back(signed_in, live_server):
    page = signed_in
    page.goto(f"{live_server.url}/")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="API reference").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("API reference")
    for path in ("/v1/chat/completions", "/v1/models/{model_id}/infer", "/api/v1/keys"):
        expect(page.locator(".opblock-summary-path", has_text=path).first).to_be_visible()
    page.locator(".opblock-summary-path", has_text="/v1/chat/completions").first.click()
    expect(page.locator(".opblock-body").first).to_contain_text("messages")
    shot(page, "api_docs")
    page.get_by_role("link", name="← Dashboard").click()
    expect(page).to_have_url(f"{live_server.url}/")
