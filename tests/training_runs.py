"""The fine-tuning tests' job: a tiny Llama that can memorize, the records it memorizes, and the spec and prepared
run that train on them."""

import json
import uuid

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from gpu_runtime.lora import SlotPool
from gpu_runtime.training_spec import TrainingSpec
from tests.runtime_fixtures import BASE_FACTS, CFG, EOS, runtime_model, tiny_base_model, words

PROMPTS = [[10, 11, 12], [13, 14], [15, 16, 17, 18], [19, 31]]  # no t2x: "t2" is the EOS token
ANSWERS = [[40, 41, 42, 43], [50, 51, 52], [60, 61, 62, 63, 64], [70, 71, 72]]


def learnable_base():
    """The tiny Llama with weights 10x the usual init scale: with std 0.02 its final norm + lm_head cap the
    logit margin near 1, so no adapter (PEFT's included: same first loss, same slow curve) can memorize."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**CFG, initializer_range=0.2)).eval()
    model.generation_config.eos_token_id = EOS
    return model


def write_dataset(path, records):
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return "file://" + str(path)


def memorize_records():
    return [{"prompt": words(p), "completion": words(a)} for p, a in zip(PROMPTS, ANSWERS, strict=True)]


def spec_for(tmp_path, dataset_uri, *, job_id=None, init=None, checkpoint_every=5, **hp):
    hyperparameters = {"learning_rate": 0.01, "epochs": 40, "batch_size": 4, "micro_batch_size": 2, "rank": 8,
                       "alpha": 16, "target_modules": ["q_proj", "v_proj", "o_proj", "down_proj"], "seed": 7, **hp}
    job_id = job_id or f"ftjob_{uuid.uuid4().hex[:24]}"
    return TrainingSpec.from_json({
        "job_id": job_id, "base_model": "tiny-llama", "adapter_id": "a1", "dataset_uri": dataset_uri,
        "output_uri": "file://" + str(tmp_path / "out" / job_id), "hyperparameters": hyperparameters,
        "init": init, "checkpoint_every": checkpoint_every, "max_seq_len": 64})


def memorizing_run(tmp_path):
    """(model, pool, a prepared TrainingRun) on the memorizing records: 4 micro-batches of 1 per step."""
    from gpu_runtime import trainer

    model = runtime_model(learnable_base())
    pool = SlotPool(model, BASE_FACTS, buckets={8: 2})
    spec = spec_for(tmp_path, write_dataset(tmp_path / "data.jsonl", memorize_records()), batch_size=4,
                    micro_batch_size=1)
    torch.manual_seed(0)
    return model, pool, trainer.prepare(spec, base=tiny_base_model(model), pool=pool, facts=BASE_FACTS)
