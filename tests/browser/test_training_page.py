"""Fine-tuning from the dashboard in a real browser against real processes: daphne, a runtime node on tiny-llama
(the test reads no text of the model's) and the control worker. A member uploads a chat dataset, asks for the
estimate, starts a short job on a new adapter (validated on the same file) and watches its page follow the job live
over the websocket: the progress bar to 4 / 4, the loss chart with the eval loss at the epoch's end, the events,
succeeded; the adapter's page then has the trained v1 as its
current version."""

import json
import re

import pytest
from playwright.sync_api import expect

from adapters.models import Adapter
from gpu_runtime.model_store import TINY_MODEL
from tests.helpers import sign_in
from tests.processes import wait_for, wait_until_serving
from training.models import TrainingJob

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.filterwarnings("ignore:Session-scoped fixtures defined as instance methods"
                               ":pytest.PytestRemovedIn10Warning"),
]
MODEL = TINY_MODEL
RECORDS = [{"messages": [{"role": "user", "content": f"What is the code word number {i}?"},
                         {"role": "assistant", "content": f"The code word number {i} is pelican{i}."}]}
           for i in range(8)]

# Records every change of the job page's progress text and chart, and the live badge, as the page sees them.
WATCH_JOB = """() => {
  window.jobSeen = [];
  const record = () => window.jobSeen.push({
    steps: document.getElementById("tj-step-text").textContent,
    points: Number(document.getElementById("tj-chart").dataset.points),
    live: document.getElementById("tj-live").textContent,
    status: document.getElementById("tj-status").textContent});
  const observer = new MutationObserver(record);
  for (const id of ["tj-step-text", "tj-chart", "tj-live", "tj-status"]) {
    observer.observe(document.getElementById(id), {childList: true, subtree: true, characterData: true,
                                                   attributes: true});
  }
  record();
}"""


def seen_so_far(page):
    return page.evaluate("window.jobSeen")


def test_start_a_job_and_watch_it_live(page, daphne, tiny_runtime_node, control_worker, alice):
    wait_until_serving(MODEL, tiny_runtime_node, 180)
    page.set_default_timeout(30_000)
    sign_in(page, daphne, alice.email, "/training/")
    expect(page.get_by_role("heading", level=1)).to_have_text("Training")

    # The dataset, checked line by line on upload.
    upload = page.locator("form[enctype='multipart/form-data']")
    upload.get_by_label("JSONL file").set_input_files({
        "name": "code-words.jsonl", "mimeType": "application/jsonl",
        "buffer": "\n".join(json.dumps(r) for r in RECORDS).encode()})
    upload.get_by_label("Base model").select_option(MODEL)
    upload.get_by_role("button", name="Upload dataset").click()
    expect(page.get_by_role("status").filter(has_text="Uploaded code-words.jsonl: 8 chat records")).to_be_visible()

    # The start form: a new adapter, rank 4 on q_proj and v_proj, one epoch in batches of 2, at most 4 steps.
    form = page.locator("form[data-training-start]")
    form.get_by_label("Adapter", exact=True).fill("browser-bot")
    form.get_by_label("Base model").select_option(MODEL)
    expect(form.get_by_label("Dataset", exact=True)).to_contain_text("code-words.jsonl · 8 records")
    form.get_by_label("Validation dataset").select_option(index=1)  # the same file: an eval loss after the epoch
    form.get_by_label("Learning rate").fill("0.001")
    form.get_by_label("Epochs").fill("1")
    form.get_by_label("Batch size").fill("2")
    form.get_by_label("Max steps").fill("4")
    form.get_by_label("Rank").fill("4")
    for module in ("q_proj", "v_proj"):
        form.get_by_label(module, exact=True).check()
    for module in ("k_proj", "o_proj"):
        expect(form.get_by_label(module, exact=True)).not_to_be_checked()

    form.get_by_role("button", name="Estimate cost").click()
    estimate = page.locator("[data-estimate]")
    expect(estimate.locator("[data-estimate-steps]")).to_have_text("4")
    expect(estimate.locator("[data-estimate-cost]")).to_contain_text(re.compile(r"\$0\.\d{6} \(\d+ micro-\$\)"))
    gradients = int(estimate.locator("[data-estimate-gradients]").text_content())
    assert gradients > 0 and not TrainingJob.objects.exists(), "an estimate starts nothing"

    page.locator("form[data-training-start]").get_by_role("button", name="Start training").click()
    expect(page).to_have_url(re.compile(r"/training/jobs/ftjob_[0-9a-f]{24}/#job$"))
    job = TrainingJob.objects.get()
    assert job.estimated_gradients == gradients and job.total_steps == 4
    for element in ("tj-step-text", "tj-chart", "tj-live", "tj-status"):  # the job page has what the watcher reads
        expect(page.locator(f"#{element}")).to_be_attached()
    page.evaluate(WATCH_JOB)

    # The page follows the job over the websocket, without a reload. (A node that never starts it: its log says why.)
    wait_for(lambda: TrainingJob.objects.filter(pk=job.pk, started_at__isnull=False).exists(), 180,
             "the runtime node to start the job", tiny_runtime_node)
    expect(page.locator("#tj-step-text")).to_have_text("4 / 4", timeout=300_000)
    expect(page.locator("#tj-status")).to_have_text("Succeeded", timeout=120_000)
    expect(page.locator("#tj-live")).to_have_text("Finished")
    # The loss chart is uPlot's (axes step and loss, values on hover) with every step in it and in its figures.
    chart = page.locator("#tj-chart")
    expect(chart).to_have_attribute("data-chart-ready", "true")
    expect(chart.locator("canvas")).to_have_count(1)  # uPlot draws the axes and their labels on it
    expect(chart.locator(".u-legend .u-series .u-label")).to_have_text(["Step", "Training loss", "Eval loss"])
    expect(page.locator(".tj-figures thead th")).to_have_text(["Step", "Training loss", "Eval loss"])
    points = int(chart.get_attribute("data-points"))
    assert points >= 2 and page.locator("#tj-figures tr").count() == points
    assert max(s["points"] for s in seen_so_far(page)) == points
    box = chart.locator(".u-over").bounding_box()
    page.mouse.move(box["x"] + box["width"] - 2, box["y"] + box["height"] / 2)  # the last step, under the cursor
    legend_loss = chart.locator(".u-legend .u-series").nth(1).locator(".u-value")
    expect(legend_loss).to_have_text(re.compile(r"^\d+\.\d{4}$"))
    assert page.locator("#tj-bar").evaluate("bar => [bar.value, bar.max]") == [4, 4]
    seen = seen_so_far(page)
    assert any(s["live"] == "Live" for s in seen), f"the socket never went live: {seen}"
    steps_seen = [s["steps"] for s in seen]
    assert steps_seen[-1] == "4 / 4" and len(set(steps_seen)) >= 2, f"the bar did not move live: {steps_seen}"
    events = page.locator("#tj-events")
    expect(events).to_contain_text("Step 4/4: training loss")
    assert job.validation_dataset_id == job.dataset_id
    expect(events).to_contain_text("Succeeded: browser-bot v1 is now current")
    expect(page.locator("#tj-cancel")).to_be_hidden()
    expect(page.locator("#tj-usage-steps")).to_have_text("4")
    page.screenshot(path="/tmp/training-job.png", full_page=True)

    job.refresh_from_db()
    assert job.status == "succeeded" and job.trained_steps == 4
    page.get_by_role("link", name="browser-bot v1").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("browser-bot")
    current = page.locator("tr", has=page.locator(".badge", has_text="current"))
    expect(current).to_contain_text("v1")
    expect(current).to_contain_text("Training")
    adapter = Adapter.objects.get(name="browser-bot")
    assert adapter.current_version == job.result_version and adapter.current_version.source == "training"

    # Back on the Training page the list shows the finished job.
    page.goto(f"{daphne}/training/")
    row = page.locator("[data-training-jobs] tr", has_text=job.id)
    expect(row).to_contain_text("Succeeded")
    expect(row).to_contain_text("4 / 4")
    page.screenshot(path="/tmp/training.png", full_page=True)
