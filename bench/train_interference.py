"""Inference under a training job on the same node: time to first token at a steady request rate with and
without a fine-tuning job on the engine, and the job's optimizer steps/s alone vs shared.

One Engine (real SmolLM2, fp32 CPU, built on a loader thread like a node's) serves everything. A client
thread submits a chat request every PERIOD ms on schedule (greedy, 16 new tokens, one of a dozen short
questions); TTFT is the engine's timings.first_token_ms (arrival -> first token sampled). Scenarios, each
with the same request schedule:

    alone            no training
    shared           a training job runs (chat records of ~60-90 tokens, rank 8 on q/v, micro-batch 1):
                     inference first (10x), preemption (a micro-step gives way at the next decoder layer,
                     forward or backward, when a request arrives), arrival prediction on
    shared, no pred. the same without arrival prediction (training_max_hold_s = 0): preemption only (more
                     micro-steps are started and then given way, so more compute is thrown away)
    train alone      the job with no inference, for the same duration

Target: inference p99 TTFT with training <= 1.2x without. Every request of a shared run
also records how many training micro-steps completed between its arrival and its admission (at most 1 is
the preemption guarantee; it is reported, not assumed), and each run counts the micro-steps that gave way
and the compute they threw away.

    .venv/bin/python bench/train_interference.py [--quick]
"""

import json
import tempfile
import threading
import time
import uuid
from pathlib import Path

import common

NAME = "train_interference"
PERIOD_MS = 1000
QUESTIONS = ["What is the capital of France?", "Name three primary colors.", "How many legs does a spider have?",
             "What is two plus two?", "Say hello in Spanish.", "What is the boiling point of water?",
             "Who wrote Hamlet?", "What color is the sky?", "Name a fruit that is yellow.",
             "How many days are in a week?", "What is the opposite of hot?", "What do bees make?"]
TRAIN_TOPICS = ["tents", "boots", "backpacks", "sleeping bags", "stoves", "jackets", "ropes", "lamps"]


def training_records(n=64):
    records = []
    for i in range(n):
        topic = TRAIN_TOPICS[i % len(TRAIN_TOPICS)]
        records.append({"messages": [
            {"role": "user", "content": f"Tell me about your {topic}, item number {i}."},
            {"role": "assistant", "content": f"Our {topic} are built to last. Item {i} is light, tested in the "
                                             f"mountains and covered by a lifetime warranty against defects."}]})
    return records


def run_requests(engine, count, period_ms):
    """Submits ``count`` requests on a fixed schedule; returns their final events and handles."""
    from gpu_runtime.generation import GenerationRequest, SamplingParams

    handles = []
    start = time.perf_counter()
    for i in range(count):
        due = start + i * period_ms / 1000
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        request = GenerationRequest(request_id=f"req_{uuid.uuid4().hex}",
                                   messages=({"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]},),
                                   sampling=SamplingParams(max_tokens=16, temperature=0))
        handles.append(engine.submit(request))
    finals = [h.wait(120) for h in handles]
    return finals, handles, time.perf_counter() - start


def start_training(engine, store, base, facts, dataset_uri, out_dir):
    from gpu_runtime import trainer
    from gpu_runtime.training_spec import TrainingSpec

    job_id = f"ftjob_{uuid.uuid4().hex[:24]}"
    spec = TrainingSpec.from_json({
        "job_id": job_id, "base_model": base.name, "adapter_id": "a1", "dataset_uri": dataset_uri,
        "output_uri": "file://" + str(out_dir / job_id), "checkpoint_every": 100_000, "max_seq_len": 512,
        "hyperparameters": {"learning_rate": 1e-4, "epochs": 50, "batch_size": 4, "micro_batch_size": 1,
                            "rank": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj"]}})
    run = trainer.prepare(spec, base=base, pool=store.pool, facts=facts)
    steps = []
    box = {}

    def drive():
        box["result"] = trainer.drive(run, on_step=lambda step, m: steps.append((time.perf_counter(), m)),
                                      on_checkpoint=lambda *a: None, on_progress=lambda p: None)

    thread = threading.Thread(target=drive, name="train-driver", daemon=True)
    thread.start()
    engine.submit_training(run)
    return job_id, run, steps, thread, box


def stop_training(streams, job_id, thread, box):
    from gpu_runtime.contract import cancel_key

    streams.redis.set(cancel_key(job_id), 1, ex=600)
    thread.join(120)
    return box.get("result")


def main():
    args = common.parse_args(__doc__.splitlines()[0])
    count = 20 if args.quick else 75
    base = common.load_smollm2()
    facts = common.base_facts(base)
    tmp = Path(tempfile.mkdtemp(prefix="vajra-bench-train-"))
    dataset = tmp / "train.jsonl"
    dataset.write_text("\n".join(json.dumps(r) for r in training_records()) + "\n")
    results = {}
    with common.private_redis() as streams:
        engine, store = common.on_loader_thread(lambda: common.build_engine(
            base, streams, slots=4, max_batch=8, disk_dir=tmp / "disk"))
        engine.start()
        try:
            run_requests(engine, 6, PERIOD_MS)  # warm-up
            for label, hold_s in (("alone", None), ("shared", 2.0), ("shared, no prediction", 0.0)):
                job = None
                if hold_s is not None:
                    engine.training.max_hold_s = hold_s
                    job = start_training(engine, store, engine.base, facts, "file://" + str(dataset), tmp / "out")
                    time.sleep(1.0)  # the job is past its first steps
                    steps_before = len(job[2])
                micro_before = engine.training.micro_steps
                finals, handles, seconds = run_requests(engine, count, PERIOD_MS)
                ttft = [f["timings"]["first_token_ms"] for f in finals if f["timings"]["first_token_ms"]]
                entry = {"ttft_ms": common.spread(ttft), "p99_ms": round(common.percentile(ttft, 99), 1),
                         "errors": sum(f["finish_reason"] == "error" for f in finals), "seconds": round(seconds, 1)}
                if job is not None:
                    job_id, run, steps, thread, box = job
                    done = len(steps) - steps_before
                    entry["train_steps_per_s"] = round(done / seconds, 3)
                    entry["micro_steps_during"] = engine.training.micro_steps - micro_before
                    entry["micro_steps_given_way"] = run.yielded
                    entry["compute_given_way_ms"] = round(run.wasted_ms, 1)
                    waits = [h.training_waits for h in handles if h.training_waits is not None]
                    entry["max_micro_steps_waited"] = max(waits) if waits else None
                    entry["requests_that_waited"] = sum(1 for w in waits if w)
                    entry["training_result"] = (stop_training(streams, job_id, thread, box) or {}).get("status")
                results[label] = entry
                print(f"{label}: p50 {entry['ttft_ms']['p50']} ms, p99 {entry['p99_ms']} ms", flush=True)
            engine.training.max_hold_s = 2.0
            job_id, run, steps, thread, box = start_training(engine, store, engine.base, facts,
                                                             "file://" + str(dataset), tmp / "out")
            time.sleep(1.0)
            before, started = len(steps), time.perf_counter()
            time.sleep(results["alone"]["seconds"])
            alone_rate = (len(steps) - before) / (time.perf_counter() - started)
            stop_training(streams, job_id, thread, box)
            results["train alone"] = {"train_steps_per_s": round(alone_rate, 3)}
            turn_ms = run.forward_ms or 0.0
        finally:
            engine.stop()
            store.shutdown()

    alone, shared = results["alone"], results["shared"]
    ratio = shared["p99_ms"] / alone["p99_ms"]
    rows = []
    for label, entry in results.items():
        t = entry.get("ttft_ms")
        rows.append([label, t and t["p50"], entry.get("p99_ms"), entry.get("p99_ms") and
                     round(entry["p99_ms"] / alone["p99_ms"], 2), entry.get("train_steps_per_s"),
                     entry.get("max_micro_steps_waited"), entry.get("micro_steps_given_way"), entry.get("errors")])
    common.print_table(f"Inference TTFT with a training job on the same engine (SmolLM2 fp32 CPU, a request every "
                       f"{PERIOD_MS} ms, {count} per row; a forward pass ~{turn_ms:.0f} ms, backward paused per layer)",
                       ["scenario", "TTFT p50 ms", "TTFT p99 ms", "p99 vs alone", "train steps/s",
                        "max micro-steps waited", "micro-steps given way", "errors"], rows)
    met = ratio <= 1.2
    print(f"\ninference p99 with training / without: {ratio:.2f}x (target <= 1.2x): {common.verdict(met)}")
    alone_steps = results["train alone"]["train_steps_per_s"]
    print(f"training steps/s shared {shared['train_steps_per_s']} vs alone {alone_steps}")
    common.write_result(NAME, {
        "machine": common.machine_facts(), "period_ms": PERIOD_MS, "requests_per_scenario": count,
        "forward_pass_ms": round(turn_ms, 1), "results": results, "p99_ratio": round(ratio, 3), "target": 1.2,
        "met": met}, quick=args.quick)


if __name__ == "__main__":
    main()
