"""The playground's settings in a real browser against daphne, without a runtime node: one entry per adapter with a
version picker, every bad setting reported at once (and nothing sent), and a usable page at 420 px wide."""

import json
from pathlib import Path

import pytest
from playwright.sync_api import expect

from adapters.models import Adapter, BaseModel
from tests.factories import make_adapter
from tests.helpers import sign_in

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    pytest.mark.filterwarnings("ignore:Session-scoped fixtures defined as instance methods"
                               ":pytest.PytestRemovedIn10Warning"),
]
SCREENS = Path("/work/screens")


def screenshot(page, name):
    SCREENS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENS / name), full_page=True)


@pytest.fixture
def catalog(acme):
    base = BaseModel.objects.create(name="smollm2-135m-instruct", architecture={"layers": 2}, context_length=2048)
    make_adapter(acme, base, "support-bot", tier=Adapter.WARM, versions=3)
    make_adapter(acme, base, "a-much-longer-adapter-name-for-billing-questions", versions=1)
    return base


@pytest.fixture
def sent_frames(page):
    """Every websocket frame the page sends, as parsed JSON."""
    frames = []
    page.on("websocket", lambda ws: ws.on("framesent", lambda payload: frames.append(json.loads(payload))))
    return frames


def chats(frames):
    return [frame for frame in frames if frame.get("type") == "chat"]


def test_one_entry_per_adapter_and_a_version_picker(page, daphne, catalog, alice, sent_frames):
    page.set_default_timeout(30_000)
    sign_in(page, daphne, alice.email)
    expect(page.get_by_role("status").filter(has_text="Connected")).to_be_visible()
    model = page.get_by_label("Model", exact=True)
    labels = [text.strip() for text in model.locator("option").all_text_contents()]
    assert labels == ["smollm2-135m-instruct", "a-much-longer-adapter-name-for-billing-questions",
                      "support-bot"], labels
    version = page.get_by_label("Version")
    expect(version).to_be_hidden()

    model.select_option("support-bot")
    expect(version).to_be_visible()
    versions = [text.strip() for text in version.locator("option").all_text_contents()]
    assert versions == ["current (v3)", "v3 (current)", "v2", "v1"], versions
    expect(page.locator("#pg-tier")).to_have_text("warm")
    version.select_option("1")
    page.get_by_label("Message").fill("Hello")
    page.get_by_role("button", name="Send").click()
    expect(page.locator(".pg-msg--assistant .pg-model")).to_have_text("support-bot@v1")
    expect(page.locator("#pg-error")).to_be_visible()  # no node serves it in this test: the refusal is shown
    assert chats(sent_frames)[-1]["model"] == "support-bot@v1"

    model.select_option("smollm2-135m-instruct")
    expect(version).to_be_hidden()
    screenshot(page, "playground-versions.png")


def test_every_bad_setting_is_reported_at_once_and_nothing_is_sent(page, daphne, catalog, alice,
                                                                   sent_frames):
    page.set_default_timeout(30_000)
    sign_in(page, daphne, alice.email)
    expect(page.get_by_role("status").filter(has_text="Connected")).to_be_visible()
    page.get_by_label("Temperature").fill("5")
    page.get_by_label("Top p").fill("0")
    page.get_by_label("Max tokens").fill("0")
    page.get_by_label("Seed").fill("-1")
    page.get_by_label("Stop sequences").fill("\n".join(["a", "b", "c", "d", "e"]))
    page.get_by_label("Message").fill("Hello")
    page.get_by_role("button", name="Send").click()

    summary = page.locator("#pg-error")
    expect(summary).to_contain_text("Fix these 5 settings")
    expect(summary.locator("li")).to_have_count(5)
    for label in ("Temperature", "Top p", "Max tokens", "Seed", "Stop sequences"):
        field = page.get_by_label(label)
        expect(field).to_have_attribute("aria-invalid", "true")
        expect(page.locator(f"#{field.get_attribute('id')}-error")).to_contain_text(label)
    expect(page.get_by_label("Message")).to_have_value("Hello")  # the message waits for the fix
    expect(page.locator(".pg-msg")).to_have_count(0)
    screenshot(page, "playground-bad-settings.png")

    page.get_by_label("Temperature").fill("0.5")
    page.get_by_label("Top p").fill("0.9")
    page.get_by_label("Max tokens").fill("32")
    page.get_by_label("Seed").fill("")
    page.get_by_label("Stop sequences").fill("END")
    page.get_by_role("button", name="Send").click()
    expect(page.locator(".pg-msg--assistant")).to_have_count(1)
    expect(page.get_by_label("Temperature")).not_to_have_attribute("aria-invalid", "true")
    sent = chats(sent_frames)
    assert len(sent) == 1, sent  # only the valid one went out
    assert {k: sent[0][k] for k in ("temperature", "top_p", "max_tokens", "seed", "stop")} == {
        "temperature": 0.5, "top_p": 0.9, "max_tokens": 32, "seed": None, "stop": ["END"]}


def test_the_page_is_usable_420_px_wide(page, daphne, catalog, alice):
    page.set_viewport_size({"width": 420, "height": 900})
    page.set_default_timeout(30_000)
    sign_in(page, daphne, alice.email)
    expect(page.get_by_role("status").filter(has_text="Connected")).to_be_visible()
    page.get_by_label("Model", exact=True).select_option("a-much-longer-adapter-name-for-billing-questions")
    assert page.evaluate("document.documentElement.scrollWidth") <= 420, "the page scrolls sideways"
    for name in ("Model", "Version", "System prompt", "Temperature", "Top p", "Max tokens", "Seed", "Message"):
        box = page.get_by_label(name, exact=True).bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= 420, (name, box)
    for button in ("Send", "Stop"):
        box = page.get_by_role("button", name=button, exact=True).bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 420 and box["height"] >= 32, (button, box)
    screenshot(page, "playground-420.png")
