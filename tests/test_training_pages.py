"""The Training page's start form (estimate, then start) and jobs list, and a job's page (progress, loss chart,
events, cancel): the same services as the train API, so refusals write nothing and send no task; billing viewers
see no jobs; charlie (contoso) never reaches acme's jobs."""

import json

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from adapters.models import Adapter
from gpu_runtime.contract import cancel_key
from tenants.roles import BILLING_VIEWER
from tests import factories
from tests.factories import make_adapter, make_base, make_dataset, make_member, store_version
from tests.helpers import capture_sent
from training.jobs import event, new_job_id
from training.models import TrainingEvent, TrainingJob, TrainingStep
from training.views import loss_chart
from vajra.redis import get_redis

pytestmark = pytest.mark.usefixtures("adapter_storage")
BASE = "tiny-llama"
RECORDS = 10

PAGE = reverse("training")
START = reverse("training-start")


def web(user):
    client = Client()
    client.force_login(user)
    return client


def make_job(*args, **fields):
    """A job with an id of its own: cancel flags in Redis outlive a test, and must not meet another test's job."""
    return factories.make_job(*args, job_id=new_job_id(), **fields)


def job_page(job):
    return reverse("training-job", args=[job.id])


def form(training_set, /, action="start", **fields):
    """The start form as a browser posts it (its fields carry the ``job-`` prefix)."""
    values = {"adapter_id": "support-bot", "base_model": BASE, "dataset": training_set.id, "learning_rate": "0.0001",
              "epochs": "3", "batch_size": "4", "max_steps": "", "seed": "0", "rank": "4", "alpha": "8",
              "target_modules": ["q_proj", "v_proj"], **fields}
    return {"action": action, **{f"job-{name}": value for name, value in values.items()}}


@pytest.fixture
def sent(monkeypatch):
    return capture_sent(monkeypatch)


@pytest.fixture
def base(db):
    return make_base()


@pytest.fixture
def dataset(acme, base):
    return make_dataset(acme)


@pytest.fixture
def post_form(django_capture_on_commit_callbacks):
    def post(client, data):
        with django_capture_on_commit_callbacks(execute=True):
            return client.post(START, data)

    return post


@pytest.fixture
def viewer(acme):
    return make_member("bill@acme.test", acme, BILLING_VIEWER)


@pytest.fixture
def running(acme, base, dataset):
    """A running job, 2 of 9 steps done, with its step rows and events."""
    job = make_job(acme, make_adapter(acme, base), dataset, status=TrainingJob.RUNNING, total_steps=9,
                   trained_steps=2, last_loss=1.75, estimated_gradients=645120, estimated_cost_micro_usd=1,
                   trainable_params=1792, started_at=timezone.now())
    for step, loss in [(1, 2.5), (2, 1.75)]:
        TrainingStep.objects.create(job=job, step=step, gradients=1792 * 40, micro_batches=2, tokens=40,
                                    compute_ms=12.0, loss=loss)
        event(job, f"Step {step}/9: training loss {loss:.4f}.", step=step, loss=loss)
    event(job, "Checkpoint saved at step 2.", step=2, loss=1.75, level=TrainingEvent.WARNING)
    return job


# ---- the Training page ----------------------------------------------------------------------------------------

def test_the_page_lists_jobs_and_offers_the_form(alice, running, dataset):
    html = web(alice).get(PAGE).content.decode()
    assert "Fine-tuning jobs" in html and "Datasets" in html
    jobs = html[html.index("data-training-jobs"):]
    assert f'<a href="{job_page(running)}"><code>{running.id}</code></a>' in jobs
    assert 'badge--job-running">Running<' in jobs and "2 / 9" in jobs and "1.7500" in jobs
    assert f'href="{reverse("adapter-detail", args=["support-bot"])}"' in jobs
    start = html[html.index("data-training-start"):]
    assert f'action="{START}#start"' in html and "csrfmiddlewaretoken" in start
    for name in ("adapter_id", "base_model", "dataset", "learning_rate", "epochs", "batch_size", "max_steps", "seed",
                 "rank", "alpha", "target_modules"):
        assert f'name="job-{name}"' in start, name
    assert f'<option value="{dataset.id}">train.jsonl · {RECORDS} records · {dataset.id}</option>' in start
    assert '<datalist id="job-adapter-names"><option value="support-bot"></datalist>' in start
    assert 'value="estimate">Estimate cost</button>' in start and 'value="start">Start training</button>' in start


def test_the_page_without_base_models_or_datasets(alice, acme):
    html = web(alice).get(PAGE).content.decode()
    assert "No base model is being served yet" in html and 'name="job-adapter_id"' not in html
    assert "No fine-tuning jobs yet. Start one above." in html


def test_the_page_without_datasets(alice, base):
    html = web(alice).get(PAGE).content.decode()
    assert "Upload a dataset above first" in html and 'name="job-adapter_id"' not in html


def test_billing_viewer_sees_no_jobs_and_cannot_start(viewer, running, dataset, unchanged_db, sent,
                                                      post_form):
    client = web(viewer)
    html = client.get(PAGE).content.decode()
    assert running.id not in html and 'name="job-adapter_id"' not in html
    assert "Your role does not include fine-tuning" in html
    with unchanged_db():
        assert post_form(client, form(dataset)).status_code == 403
        assert post_form(client, form(dataset, action="estimate")).status_code == 403
        assert client.get(job_page(running)).status_code == 403
        assert client.post(reverse("training-job-cancel", args=[running.id])).status_code == 403
    assert sent == []


def test_charlie_never_reaches_acmes_jobs(charlie, running, unchanged_db, sent):
    client = web(charlie)
    assert running.id not in client.get(PAGE).content.decode()
    with unchanged_db():
        assert client.get(job_page(running)).status_code == 404
        assert client.post(reverse("training-job-cancel", args=[running.id])).status_code == 404
    assert sent == [] and get_redis().get(cancel_key(running.id)) is None


# ---- estimate and start ---------------------------------------------------------------------------------------

def test_estimate_shows_what_the_api_would(alice, dataset, unchanged_db, sent, post_form):
    """As tests/test_training_api.py's estimate by hand, with micro-batches of 1 (the form does not set them, and
    they change nothing): 10 records of 120 tokens, 3 epochs, 9 steps and 360 tokens; 1792 trainable x 360 =
    645120 gradients, x $0.00000005 / 1e6 x $2.00, quoted as 1 micro-dollar; $0.000180 per million tokens."""
    client = web(alice)  # signing in writes last_login: before the snapshot
    with unchanged_db():
        response = post_form(client, form(dataset, action="estimate"))
    assert response.status_code == 200
    html = response.content.decode()
    estimate = html[html.index("data-estimate"):]
    assert "<dd data-estimate-steps>9</dd>" in estimate and "<dd data-estimate-gradients>645120</dd>" in estimate
    assert "<dd data-estimate-tokens>360 <span" in estimate and "(at most)" in estimate
    assert "$0.000001" in estimate and "(1 micro-$)" in estimate and "<dd>1792</dd>" in estimate
    assert "<dd data-estimate-per-million>$0.000180</dd>" in estimate
    assert "$0.00000005 per million × the GPU price ($2.00 an hour)" in estimate
    assert 'value="support-bot"' in html and 'name="job-rank" value="4"' in html  # the form keeps its values
    assert sent == []


def test_start_creates_one_job_and_opens_its_page(alice, acme, dataset, sent, post_form):
    client = web(alice)
    response = post_form(client, form(dataset, max_steps="5", seed="7"))
    job = TrainingJob.objects.get()
    assert response.status_code == 302 and response.url == job_page(job) + "#job"
    assert (job.tenant, job.adapter.name, job.dataset, job.created_by) == (acme, "support-bot", dataset, alice)
    assert {k: job.hyperparameters[k] for k in ("rank", "alpha", "target_modules", "max_steps", "seed", "epochs")} == {
        "rank": 4, "alpha": 8.0, "target_modules": ["q_proj", "v_proj"], "max_steps": 5, "seed": 7, "epochs": 3}
    # 5 steps: a whole epoch (120 tokens) and 8 of the next epoch's 10 records at 12 tokens each
    assert job.total_steps == 5 and job.estimated_gradients == 1792 * (120 + 96)
    assert sent == [("control.training_validate", [job.id], {"queue": "control"})]
    html = client.get(response.url).content.decode()
    assert f"Started {job.id} on support-bot: 5 steps" in html and "Validating files" in html


def test_an_existing_adapter_keeps_its_shape(alice, acme, base, dataset, adapter_storage, sent,
                                             post_form):
    adapter = make_adapter(acme, base)
    version = store_version(adapter, adapter_storage, 1, r=2, modules=("q_proj",))
    response = post_form(web(alice), form(dataset, rank="16", target_modules=["k_proj"]))
    job = TrainingJob.objects.get()
    assert response.status_code == 302 and job.adapter == adapter and job.base_version == version
    assert (job.hyperparameters["rank"], job.hyperparameters["target_modules"]) == (2, ["q_proj"])


@pytest.mark.parametrize("fields, status, field, message", [
    ({"adapter_id": "Bad Name!"}, 400, "adapter_id", "Use 1-64 lowercase letters"),
    ({"epochs": "many"}, 400, "epochs", "Enter a whole number."),
    ({"dataset": "ds_000000000000000000000000"}, 400, "dataset", "Select a valid choice."),
    ({"learning_rate": "2"}, 400, "learning_rate", "hyperparameters.learning_rate must be &gt; 0 and &lt;= 1"),
    ({"rank": "1000"}, 400, "rank", "hyperparameters.rank must be &gt;= 1"),
    ({"batch_size": "0"}, 400, "batch_size", "hyperparameters.batch_size must be &gt;= 1"),
])
@pytest.mark.parametrize("action", ["estimate", "start"])
def test_refusals_show_on_the_field_and_write_nothing(alice, dataset, unchanged_db, sent, post_form,
                                                      fields, status, field, message, action):
    client = web(alice)
    with unchanged_db():
        response = post_form(client, form(dataset, action=action, **fields))
    assert response.status_code == status
    html = response.content.decode()
    assert "Please correct the fields marked below." in html and "data-estimate" not in html
    at_field = html[html.index(f'name="job-{field}"'):]
    assert at_field.index(message) < at_field.index("</div>"), "the message sits under its field"
    assert sent == []


def test_another_tenants_dataset_is_not_a_choice(alice, contoso, dataset, unchanged_db, sent, post_form):
    theirs = make_dataset(contoso)
    client = web(alice)
    with unchanged_db():
        response = post_form(client, form(theirs))
    assert response.status_code == 400 and "Select a valid choice." in response.content.decode()
    assert theirs.id not in response.content.decode().split("Select a valid choice.")[0].split('name="job-dataset"')[1]
    assert sent == []


def test_a_second_job_on_the_adapter_is_refused_above_the_form(alice, acme, base, dataset, unchanged_db,
                                                               sent, post_form):
    job = make_job(acme, make_adapter(acme, base), dataset, status=TrainingJob.QUEUED)
    client = web(alice)
    with unchanged_db():
        response = post_form(client, form(dataset))
    assert response.status_code == 409
    assert f"Job {job.id} is already queued on adapter &#x27;support-bot&#x27;" in response.content.decode()
    assert sent == []


def test_developer_starts_jobs_too(bob, dataset, sent, post_form):
    response = post_form(web(bob), form(dataset))
    assert response.status_code == 302 and TrainingJob.objects.get().created_by == bob


# ---- a job's page ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("who", ["alice", "bob"])
def test_the_job_page_shows_the_recorded_state(request, who, running):
    html = web(request.getfixturevalue(who)).get(job_page(running)).content.decode()
    assert f'data-ws-path="/ws/v1/training/{running.id}/"' in html and "vajra/training.js" in html
    assert '<progress id="tj-bar" max="9" value="2">22%</progress>' in html
    assert '<span id="tj-step-text">2 / 9</span>' in html and "left</span>" in html  # an ETA from the pace so far
    assert 'badge--job-running" id="tj-status">Running<' in html
    assert 'data-points="2"' in html and 'data-chart="tj-chart-data"' in html
    assert "vendor/uplot/uPlot.iife.min.js" in html and "vajra/charts.js" in html
    assert chart_spec(html) == loss_chart([[1, 2.5], [2, 1.75]], 9)
    figures = html[html.index('id="tj-figures"'):]
    assert '<td class="num">1</td><td class="num">2.5000</td>' in figures and '<td class="num">1.7500</td>' in figures
    events = html[html.index('id="tj-events"'):]
    assert "Step 2/9: training loss 1.7500." in events and 'badge--level-warning">warning<' in events
    assert "<td class=\"num\">2</td>" in events and "1.7500" in events
    # estimate vs usage: 2 steps of 1792 x 40 gradients = 143360 x $0.00000005 / 1e6 x $2.00, 1 micro-$ rounded up
    assert 'id="tj-usage-gradients">143360<' in html and "<td class=\"num\">645120</td>" in html
    assert html.count("$0.000001") == 2
    assert f'action="{reverse("training-job-cancel", args=[running.id])}"' in html and "csrfmiddlewaretoken" in html
    assert "<dt>Learning rate</dt><dd>0.0001</dd>" in html


def chart_spec(html):
    start = html.index('<script id="tj-chart-data" type="application/json">') + len(
        '<script id="tj-chart-data" type="application/json">')
    return json.loads(html[start:html.index("</script>", start)])


def test_the_loss_chart_spec():
    chart = loss_chart([[1, 3.0], [2, 2.0], [4, 1.0]], 4)
    assert (chart["x"], chart["x_max"], chart["x_label"], chart["y_label"]) == ([1, 2, 4], 4, "Step", "Loss")
    assert chart["series"] == [{"label": "Training loss", "values": [3.0, 2.0, 1.0]}] and chart["y_zero"] is False
    empty = loss_chart([], 0)
    assert (empty["x"], empty["x_max"], empty["series"][0]["values"]) == ([], 1, [])


def test_a_finished_job_shows_its_result_and_no_cancel(alice, acme, base, dataset, adapter_storage):
    adapter = make_adapter(acme, base)
    version = store_version(adapter, adapter_storage, 1)
    job = make_job(acme, adapter, dataset, status=TrainingJob.SUCCEEDED, result_version=version, total_steps=4,
                   trained_steps=4, finished_at=timezone.now())
    html = web(alice).get(job_page(job)).content.decode()
    assert f'<a href="{reverse("adapter-detail", args=["support-bot"])}">support-bot v1</a>' in html
    assert 'data-terminal="true"' in html and "Cancel job" not in html and "· <span id=\"tj-eta\">done" in html
    failed = make_job(acme, make_adapter(acme, base, name="other"), dataset, status=TrainingJob.FAILED,
                      error_code="invalid_file", error_message="The training file failed its check.")
    html = web(alice).get(job_page(failed)).content.decode()
    assert "The training file failed its check. (invalid_file)" in html and "Cancel job" not in html


def test_cancel_a_job_that_has_not_started(alice, acme, base, dataset, sent, django_capture_on_commit_callbacks):
    job = make_job(acme, make_adapter(acme, base), dataset, status=TrainingJob.QUEUED)
    client = web(alice)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("training-job-cancel", args=[job.id]))
    assert response.status_code == 302 and response.url == job_page(job)
    job.refresh_from_db()
    assert job.status == TrainingJob.CANCELLED and job.cancel_requested_at is not None
    assert get_redis().get(cancel_key(job.id)) is not None and sent == []  # never sent to a node: nothing to revoke
    html = client.get(response.url).content.decode()
    assert "Cancelled before it started" in html and "nothing was billed" in html and "Cancel job" not in html


def test_cancel_a_running_job(bob, running, sent, django_capture_on_commit_callbacks):
    client = web(bob)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("training-job-cancel", args=[running.id]))
    assert response.status_code == 302
    running.refresh_from_db()
    assert running.status == TrainingJob.RUNNING and running.cancel_requested_at is not None
    assert sent == [("revoke", [running.id], {})] and get_redis().get(cancel_key(running.id)) is not None
    html = client.get(job_page(running)).content.decode()
    assert "the node stops the job at its next step" in html and "Cancel job" not in html


def test_cancel_a_finished_job_is_409(alice, acme, base, dataset, unchanged_db, sent):
    job = make_job(acme, make_adapter(acme, base), dataset, status=TrainingJob.SUCCEEDED)
    client = web(alice)
    with unchanged_db():
        response = client.post(reverse("training-job-cancel", args=[job.id]))
    assert response.status_code == 409 and "has already finished (succeeded)" in response.content.decode()
    assert sent == []


def test_cancel_needs_post(alice, running):
    assert web(alice).get(reverse("training-job-cancel", args=[running.id])).status_code == 405
    assert web(alice).get(START).status_code == 405


def test_a_deleted_adapters_job_still_renders(alice, running):
    Adapter.objects.filter(pk=running.adapter_id).update(deleted_at=timezone.now())
    response = web(alice).get(job_page(running))
    assert response.status_code == 200 and reverse("adapter-detail", args=["support-bot"]) not in \
        response.content.decode().split('data-training-job')[0]


def test_the_training_page_shows_the_price_per_million_training_tokens(alice, dataset, settings):
    """A new rank-8 q, v adapter on the default base model: SmolLM2-135M has 30 layers, q_proj 576 -> 576 and
    v_proj 576 -> 192, so 8 x (1152 + 768) x 30 = 460,800 trainable; a million tokens are 460,800,000,000
    gradients, x $0.00000005 / 1e6 x $2.00 = $0.04608, shown as $0.046080."""
    from adapters.models import BaseModel

    settings.VAJRA_DEFAULT_BASE_MODEL = "smollm2-135m-instruct"
    BaseModel.objects.create(name="smollm2-135m-instruct", architecture={
        "hidden_size": 576, "intermediate_size": 1536, "num_attention_heads": 9, "num_key_value_heads": 3,
        "num_hidden_layers": 30})
    html = web(alice).get(reverse("training")).content.decode()
    reference = html[html.index("data-reference-price"):]
    assert "rank-8 adapter (q_proj, v_proj) on\n          smollm2-135m-instruct costs $0.046080 per million" in (
        reference)
