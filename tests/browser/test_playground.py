"""The playground in a real browser against real processes: daphne, a runtime node with SmolLM2 and the control
worker. A member signs in, picks the base model, asks a question and watches the answer stream in."""

import json
import re
from decimal import ROUND_HALF_EVEN, Decimal

import pytest
from playwright.sync_api import expect

from billing.models import UsageEvent
from serving.models import InferenceRequest
from tests.helpers import sign_in
from tests.processes import wait_for, wait_until_serving

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.filterwarnings("ignore:Session-scoped fixtures defined as instance methods"
                               ":pytest.PytestRemovedIn10Warning"),
]
MODEL = "smollm2-135m-instruct"

# Records, at every change of the transcript, the last reply's text length, whether its done line is there, and
# whether Stop can be pressed.
WATCH_REPLY = """() => {
  window.replySeen = [];
  const transcript = document.getElementById("pg-transcript");
  new MutationObserver(() => {
    const replies = transcript.querySelectorAll(".pg-msg--assistant");
    const reply = replies[replies.length - 1];
    if (!reply) return;
    window.replySeen.push({at: performance.now(), length: reply.querySelector(".pg-text").textContent.length,
                           done: reply.querySelector(".pg-stats") !== null,
                           stoppable: !document.getElementById("pg-stop").disabled});
  }).observe(transcript, {childList: true, subtree: true, characterData: true});
}"""


def test_chat_streams_tokens_live_with_stats(page, daphne, runtime_node, control_worker, alice):
    wait_until_serving(MODEL, runtime_node, 180)
    page.set_default_timeout(30_000)
    sign_in(page, daphne, alice.email)
    expect(page.get_by_role("heading", level=1)).to_have_text("Playground")
    expect(page.get_by_role("status").filter(has_text="Connected")).to_be_visible()

    page.get_by_label("Model", exact=True).select_option(MODEL)
    expect(page.locator("#pg-tier")).to_have_text("cold")
    expect(page.locator("#pg-units")).to_have_text("1")
    expect(page.locator("#pg-usd")).to_have_text("$0.0001")
    page.get_by_label("Temperature").fill("0")
    page.get_by_label("Max tokens").fill("48")
    page.get_by_label("Message").fill("What is the capital of France?")
    page.evaluate(WATCH_REPLY)
    page.get_by_role("button", name="Send").click()

    reply = page.locator(".pg-msg--assistant").last
    text, stats = reply.locator(".pg-text"), reply.locator(".pg-stats")
    expect(stats).to_be_visible(timeout=120_000)
    seen = page.evaluate("window.replySeen")
    streaming = [s for s in seen if not s["done"]]
    lengths = [s["length"] for s in streaming if s["length"]]
    assert len(set(lengths)) >= 3, f"the answer did not arrive token by token: {seen}"
    assert lengths == sorted(lengths), "streamed text only ever grows"
    assert streaming[-1]["at"] > streaming[0]["at"] and seen[-1]["done"], "the done line came after the tokens"
    assert all(s["stoppable"] for s in streaming if s["length"]), "Stop works while tokens arrive"

    expect(stats).to_contain_text(re.compile(r"first token \d+ ms \(server \d+ ms\)"))
    expect(stats).to_contain_text(re.compile(r"[\d.]+ tokens/s · \d+ tokens · 1 unit · \$\d+\.\d+"))
    assert "Paris" in text.text_content()
    expect(page.get_by_role("button", name="Stop")).to_be_disabled()
    expect(page.get_by_role("button", name="Send")).to_be_enabled()

    row = wait_for(lambda: InferenceRequest.objects.filter(api="playground", status="succeeded").first(), 60,
                   "the control worker to record the playground request")
    assert row.tenant.slug == "acme" and row.adapter_version is None and row.completion_tokens > 0
    # What the page showed when the reply ended is what the ledger bills for it (the GPU time is added to the
    # tier's units, so the figure is the final's, not the quote's), at the page's micro-dollar precision.
    billed = wait_for(lambda: UsageEvent.objects.filter(request=row).first(), 60, "the request's ledger row")
    shown = re.search(r"\$(\d+\.\d+)", stats.text_content()).group(1)
    assert Decimal(shown) == billed.cost.quantize(Decimal("0.000001"), rounding=ROUND_HALF_EVEN), (shown, billed.cost)
    page.screenshot(path="/tmp/playground.png", full_page=True)

    # Multi-turn: the second question goes with the first exchange, and the reply streams in the same way.
    page.get_by_label("Message").fill("And what is its population?")
    page.get_by_label("Message").press("Enter")
    expect(page.locator(".pg-msg--assistant")).to_have_count(2)
    expect(page.locator(".pg-msg--assistant").last.locator(".pg-stats")).to_contain_text("tokens", timeout=120_000)
    second = InferenceRequest.objects.filter(api="playground").exclude(pk=row.pk).get()
    wait_for(lambda: InferenceRequest.objects.filter(pk=second.pk, status="succeeded").exists(), 60,
             "the second request to finish")
    assert InferenceRequest.objects.get(pk=second.pk).prompt_tokens > row.prompt_tokens, "the history went along"

    page.set_viewport_size({"width": 390, "height": 844})
    page.screenshot(path="/tmp/playground-phone.png", full_page=True)


def test_generating_state_and_a_stopped_reply_left_out_unless_kept(page, daphne, runtime_node, control_worker,
                                                                    alice):
    wait_until_serving(MODEL, runtime_node, 180)
    page.set_default_timeout(30_000)
    frames = []
    page.on("websocket", lambda ws: ws.on("framesent", lambda payload: frames.append(json.loads(payload))))
    sign_in(page, daphne, alice.email)
    expect(page.get_by_role("status").filter(has_text="Connected")).to_be_visible()
    page.get_by_label("Model", exact=True).select_option(MODEL)
    page.get_by_label("Temperature").fill("0")
    page.get_by_label("Max tokens").fill("400")
    page.get_by_label("Message").fill("Write a long story about a dragon who learns to cook.")
    page.get_by_role("button", name="Send").click()

    busy, first = page.locator("#pg-busy"), page.locator(".pg-msg--assistant").first
    expect(busy).to_have_text("Generating…")  # from the moment it is sent, before any token
    expect(first.locator(".pg-generating")).to_be_visible()
    expect(first.locator(".pg-text")).not_to_have_text("", timeout=120_000)
    expect(busy).to_be_visible()
    page.get_by_role("button", name="Stop").click()
    expect(first).to_have_class(re.compile(r"pg-msg--stopped"), timeout=120_000)
    expect(first.locator(".pg-role")).to_contain_text("Stopped")
    expect(first.locator(".pg-stats")).to_contain_text("stopped")
    expect(busy).to_be_hidden()
    expect(first.locator(".pg-generating")).to_have_count(0)
    keep = first.get_by_label("Keep in context")
    expect(keep).not_to_be_checked()
    stopped_text = first.locator(".pg-text").text_content()
    page.screenshot(path="/work/screens/playground-stopped.png", full_page=True)

    # Left out: the next message goes with the first question only. Settings go along as set.
    page.get_by_label("System prompt").fill("You answer in one short sentence.")
    page.get_by_label("Max tokens").fill("24")
    page.get_by_label("Seed").fill("7")
    page.get_by_label("Top p").fill("0.9")
    page.get_by_label("Stop sequences").fill(".")
    page.get_by_label("Message").fill("What is a dragon?")
    page.get_by_role("button", name="Send").click()
    second = page.locator(".pg-msg--assistant").nth(1)
    expect(second.locator(".pg-stats")).to_be_visible(timeout=120_000)
    sent = [frame for frame in frames if frame.get("type") == "chat"]
    assert [m["role"] for m in sent[1]["messages"]] == ["system", "user", "user"], sent[1]["messages"]
    assert (sent[1]["seed"], sent[1]["top_p"], sent[1]["stop"]) == (7, 0.9, ["."])
    assert "." not in second.locator(".pg-text").text_content(), "the stop sequence ended the reply"

    # Kept: ticked, the stopped reply goes with the next message, where it was.
    keep.check()
    page.get_by_label("Message").fill("Go on.")
    page.get_by_role("button", name="Send").click()
    expect(page.locator(".pg-msg--assistant").nth(2).locator(".pg-stats")).to_be_visible(timeout=120_000)
    third = [frame for frame in frames if frame.get("type") == "chat"][2]["messages"]
    assert [m["role"] for m in third] == ["system", "user", "assistant", "user", "assistant", "user"], third
    assert third[2]["content"] == stopped_text
