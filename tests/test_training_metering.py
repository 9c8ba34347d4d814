"""Training metering follows the work: gradients = trainable elements x trained tokens, whatever the micro-batch
size (a property over the trainer's step arithmetic), counted on the web exactly as the trainer encodes records
(SmolLM2's tokenizer and chat template from the model store), and the per-token default price as a plan version
that never rewrites a billed one."""

import importlib
import json
import os
import random
import subprocess
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from django.apps import apps as django_apps
from django.conf import settings
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from adapters.models import BaseModel
from billing.models import PricePlan, UsageEvent
from gpu_runtime.training_spec import Hyperparameters, training_gradients

SMOLLM2 = "smollm2-135m-instruct"


def trainer_steps(lengths, hp, seed=0):
    """The tokens of each optimizer step as gpu_runtime.trainer.TrainingRun forms them: every epoch a permutation
    of the records, cut into batches of ``batch_size``, the job capped at ``max_steps``."""
    steps, rng = [], random.Random(seed)
    for _ in range(hp.epochs):
        order = list(range(len(lengths)))
        rng.shuffle(order)
        for start in range(0, len(order), hp.batch_size):
            steps.append([lengths[i] for i in order[start:start + hp.batch_size]])
    return steps[:hp.total_steps(len(lengths))]


def metered(trainable, steps, micro_batch_size):
    """What the node bills: per optimizer step, the gradients of its micro-batches' records together."""
    total = 0
    for batch in steps:
        chunks = [batch[i:i + micro_batch_size] for i in range(0, len(batch), micro_batch_size)]
        total += training_gradients(trainable, sum(sum(chunk) for chunk in chunks))
    return total


@hypothesis_settings(max_examples=150, deadline=None)
@given(lengths=st.lists(st.integers(min_value=1, max_value=1024), min_size=1, max_size=40),
       batch_size=st.sampled_from([1, 2, 4, 8, 16, 64]), epochs=st.integers(min_value=1, max_value=4),
       max_steps=st.one_of(st.none(), st.integers(min_value=1, max_value=30)),
       trainable=st.integers(min_value=1, max_value=10**8), seed=st.integers(min_value=0, max_value=2**16))
def test_the_bill_is_the_same_for_every_micro_batch_size_and_follows_the_tokens(lengths, batch_size, epochs,
                                                                               max_steps, trainable, seed):
    micro_sizes = [m for m in (1, 2, 4, 8, 16, 64) if m <= batch_size and batch_size % m == 0]
    jobs = [Hyperparameters(batch_size=batch_size, micro_batch_size=m, epochs=epochs, max_steps=max_steps)
            for m in micro_sizes]
    records, tokens = len(lengths), sum(lengths)
    steps = trainer_steps(lengths, jobs[0], seed)
    bills = {metered(trainable, steps, hp.micro_batch_size) for hp in jobs}
    estimates = {training_gradients(trainable, hp.trained_tokens(records, tokens)) for hp in jobs}
    assert len(bills) == 1 and len(estimates) == 1, "the micro-batch size changed what is billed"
    bill, estimate = bills.pop(), estimates.pop()
    epochs_done, rest = jobs[0].trained_records(records)
    trained = sum(len(batch) for batch in steps)
    assert trained == epochs_done * records + rest
    if rest == 0:  # whole epochs: the estimate is the bill
        assert estimate == bill == trainable * tokens * epochs_done
    else:  # a partial epoch at the mean record length: between its shortest and longest records
        whole = trainable * tokens * epochs_done
        assert whole + trainable * rest * min(lengths) <= bill <= whole + trainable * rest * max(lengths)
        assert abs(estimate - (whole + trainable * rest * tokens / records)) <= trainable
    # more tokens or more trainable elements cost more; a 1,024-token record costs 100x a 10-token one
    assert training_gradients(trainable + 1, tokens) > training_gradients(trainable, tokens)
    assert 10 * training_gradients(trainable, 1024) == 1024 * training_gradients(trainable, 10)


# ---- the web counts what the trainer trains -------------------------------------------------------------------

CHAT = [
    {"messages": [{"role": "user", "content": "What is the code word number 3?"},
                  {"role": "assistant", "content": "The code word number 3 is pelican3."}]},
    {"messages": [{"role": "system", "content": "You answer in French."},
                  {"role": "user", "content": "Bonjour, ça va ? 🦤"},
                  {"role": "assistant", "content": "Très bien, merci !"},
                  {"role": "user", "content": "Et le temps ?"},
                  {"role": "assistant", "content": "Il pleut sur Brest.\n\nComme toujours."}]},
]
COMPLETION = [{"prompt": "Translate to German: cat", "completion": " Katze"},
              {"prompt": "", "completion": "A record with an empty prompt."},
              {"prompt": "  spaces  and\ttabs ", "completion": "  ünïcödé  "}]


@pytest.fixture
def smollm2_store():
    """SmolLM2's files in the model store the web reads, imported once as `make up` does (later runs reuse them)."""
    subprocess.run([sys.executable, "-m", "gpu_runtime.model_store", "import"], check=True, timeout=600,
                   env={**os.environ, "VAJRA_MODEL_STORE": str(settings.VAJRA_MODEL_STORE)}, stdout=subprocess.DEVNULL)
    return Path(settings.VAJRA_MODEL_STORE) / SMOLLM2 / "float32"


@pytest.mark.slow
@pytest.mark.parametrize("records", [CHAT, COMPLETION], ids=["chat", "completion"])
def test_the_web_counts_the_tokens_the_trainer_encodes(db, smollm2_store, records):
    from transformers import AutoTokenizer

    from adapters.prompt_tokens import prompt_counter
    from gpu_runtime.training_data import encode_record
    from training.tokens import count_dataset_tokens

    tokenizer = AutoTokenizer.from_pretrained(smollm2_store)
    counter = prompt_counter(BaseModel(name=SMOLLM2))
    for record in records:
        ids, _ = encode_record(tokenizer, record, tokenizer.eos_token_id)
        assert count_dataset_tokens(counter, json.dumps(record).encode()) == len(ids), record
    data = "\n".join(json.dumps(r) for r in records).encode()
    assert count_dataset_tokens(counter, data) == sum(len(encode_record(tokenizer, r, 0)[0]) for r in records)


# ---- the default price ----------------------------------------------------------------------------------------

def test_a_plan_version_that_billed_keeps_its_price_and_gets_a_per_token_version(acme):
    migration = importlib.import_module("billing.migrations.0007_gradient_per_token_price")
    PricePlan.objects.all().delete()
    old = Decimal("0.05")
    start = datetime(2020, 1, 1, tzinfo=UTC)
    billed = PricePlan.objects.create(name="standard", version=1, effective_from=start, gradient_price_per_million=old,
                                      unit_price=Decimal("0.0002"))
    UsageEvent.objects.create(key="training:ftjob_x:1", tenant=acme, kind=UsageEvent.TRAINING, plan=billed,
                              occurred_at=start, period=start.date(), gradients=1792, cost=Decimal("0.0001792"),
                              cost_compute=Decimal("0.0001792"))
    unbilled = PricePlan.objects.create(name="team", version=1, effective_from=start, gradient_price_per_million=old)
    custom = PricePlan.objects.create(name="gold", version=1, effective_from=start,
                                      gradient_price_per_million=Decimal("0.02"))

    migration.add_per_token_versions(django_apps, None)

    billed.refresh_from_db()
    assert billed.gradient_price_per_million == old  # it priced a ledger row: never edited
    new = PricePlan.objects.get(name="standard", version=2)
    assert new.gradient_price_per_million == Decimal("0.00000005") and new.unit_price == Decimal("0.0002")
    assert new.effective_from > start
    unbilled.refresh_from_db()
    assert unbilled.gradient_price_per_million == Decimal("0.00000005")  # priced nothing: set in place
    assert not PricePlan.objects.filter(name="team", version=2).exists()
    custom.refresh_from_db()
    assert custom.gradient_price_per_million == Decimal("0.02") and PricePlan.objects.count() == 4
    assert UsageEvent.objects.get().plan_id == billed.pk and UsageEvent.objects.get().cost == Decimal("0.0001792")
