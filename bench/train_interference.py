"""Inference under a training job on the same node: time to first token at a steady request rate with and
without a fine-tuning job on the engine, and the job's training speed alone vs shared.

One Engine (real SmolLM2, fp32 CPU, built on a loader thread like a node's) serves everything. A client
thread submits a chat request every PERIOD ms on schedule (greedy, 16 new tokens, one of a dozen short
questions); TTFT is the engine's timings.first_token_ms (arrival -> first token sampled). Scenarios, each
with the same request schedule:

    alone            no training
    shared           a training job runs (chat records of ~60-90 tokens, rank 8 on q/v, micro-batch 1):
                     inference first (10x), preemption (a micro-step pauses at the next decoder layer,
                     forward or backward, when a request arrives, and goes on from there later), arrival
                     prediction on
    shared, no pred. the same without arrival prediction (training_max_hold_s = 0): preemption only
    train alone      the job with no inference, for the same duration

The four scenarios run in ROUNDS rounds (their order rotating each round, so the VM's drift hits each
alike); each round reports TTFT p50/p99 per scenario, p99 shared / alone of that round, and training
speed shared / alone of that round (micro-batches/s: a step is 4 of them, so a round of 90 s counts 4x finer
than in optimizer steps, which are reported beside); the summary gives the median over rounds with the spread (min-max)
and the p50/p99 of all rounds' requests pooled.

Targets, both judged on the "shared" scenario's median over rounds of each round's ratio: inference p99 TTFT
with training <= 1.2x without, while training keeps >= 30 % of its speed alone. Every request of a shared
run also records how many training micro-steps completed between its arrival and its admission (at most 1 is
the preemption guarantee; it is reported, not assumed), and each run counts the passes that paused for a
request, and the share of the engine's time that inference and training each took (what inference leaves
idle, plus training's turn in every ``every`` decode steps, bounds what training can get).

    .venv/bin/python bench/train_interference.py [--quick] [--rounds 3] [--requests 90]
"""

import argparse
import json
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path

import common

NAME = "train_interference"
PERIOD_MS = 1000
P99_X = 1.2  # inference p99 TTFT with training / without, at most
TRAIN_SHARE = 0.3  # training's micro-batches/s beside inference / alone, at least
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


SHARED = {"shared": 2.0, "shared, no prediction": 0.0}  # scenario -> training_max_hold_s
SCENARIOS = ["alone", *SHARED, "train alone"]


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: 12 requests per scenario, 2 rounds")
    parser.add_argument("--rounds", type=int, default=None, help="rounds of the four scenarios (default 3)")
    parser.add_argument("--requests", type=int, default=None, help="requests per scenario per round (default 90)")
    return parser.parse_args()


def run_inference(engine, store, streams, facts, dataset, tmp, label, count):
    """One scenario with requests: alone, or beside a training job with the scenario's hold."""
    job = None
    if label in SHARED:
        engine.training.max_hold_s = SHARED[label]
        job = start_training(engine, store, engine.base, facts, "file://" + str(dataset), tmp / "out")
        time.sleep(1.0)  # the job is past its first steps
        steps_before = len(job[2])
        paused_before = job[1].paused
    micro_before = engine.training.micro_steps
    busy_before, training_before = engine.busy_ms, engine.training.ms
    finals, handles, seconds = run_requests(engine, count, PERIOD_MS)
    busy = {"inference": round((engine.busy_ms - busy_before) / (seconds * 1000), 3),
            "training": round((engine.training.ms - training_before) / (seconds * 1000), 3)}
    ttft = [f["timings"]["first_token_ms"] for f in finals if f["timings"]["first_token_ms"]]
    entry = {"ttft_ms": common.spread(ttft), "p99_ms": round(common.percentile(ttft, 99), 1), "ttft_all_ms": ttft,
             "errors": sum(f["finish_reason"] == "error" for f in finals), "seconds": round(seconds, 1),
             "engine_busy_share": busy}
    if job is not None:
        job_id, run, steps, thread, box = job
        entry["train_steps_per_s"] = round((len(steps) - steps_before) / seconds, 3)
        entry["micro_steps_during"] = engine.training.micro_steps - micro_before
        entry["train_micro_steps_per_s"] = round(entry["micro_steps_during"] / seconds, 3)
        entry["passes_paused"] = run.paused - paused_before
        waits = [h.training_waits for h in handles if h.training_waits is not None]
        entry["max_micro_steps_waited"] = max(waits) if waits else None
        entry["requests_that_waited"] = sum(1 for w in waits if w)
        entry["training_result"] = (stop_training(streams, job_id, thread, box) or {}).get("status")
    return entry


def run_train_alone(engine, store, streams, facts, dataset, tmp, seconds):
    """The job with no inference for ``seconds``: its steps/s, and the engine's forward-pass time."""
    engine.training.max_hold_s = 2.0
    job_id, run, steps, thread, box = start_training(engine, store, engine.base, facts, "file://" + str(dataset),
                                                     tmp / "out")
    time.sleep(1.0)
    before, micro_before, started = len(steps), engine.training.micro_steps, time.perf_counter()
    time.sleep(seconds)
    took = time.perf_counter() - started
    rate, micro_rate = (len(steps) - before) / took, (engine.training.micro_steps - micro_before) / took
    stop_training(streams, job_id, thread, box)
    return {"train_steps_per_s": round(rate, 3), "train_micro_steps_per_s": round(micro_rate, 3),
            "seconds": round(seconds, 1)}, run.forward_ms or 0.0


def spread_of(values, digits=3):
    """Median over rounds with its min and max."""
    return {"median": round(statistics.median(values), digits), "min": round(min(values), digits),
            "max": round(max(values), digits), "per_round": [round(v, digits) for v in values]}


def main():
    args = parse_args()
    rounds = args.rounds or (2 if args.quick else 3)
    count = args.requests or (12 if args.quick else 90)
    base = common.load_smollm2()
    facts = common.base_facts(base)
    tmp = Path(tempfile.mkdtemp(prefix="vajra-bench-train-"))
    dataset = tmp / "train.jsonl"
    dataset.write_text("\n".join(json.dumps(r) for r in training_records()) + "\n")
    per_round = []
    turn_ms = 0.0
    with common.private_redis() as streams:
        engine, store = common.on_loader_thread(lambda: common.build_engine(
            base, streams, slots=4, max_batch=8, disk_dir=tmp / "disk"))
        engine.start()
        try:
            run_requests(engine, 6, PERIOD_MS)  # warm-up
            for r in range(rounds):
                order = SCENARIOS[r % len(SCENARIOS):] + SCENARIOS[:r % len(SCENARIOS)]
                results = {}
                for label in order:
                    if label == "train alone":
                        results[label], turn_ms = run_train_alone(engine, store, streams, facts, dataset, tmp,
                                                                  count * PERIOD_MS / 1000)
                    else:
                        results[label] = run_inference(engine, store, streams, facts, dataset, tmp, label, count)
                    entry = results[label]
                    ttft = (f"TTFT p50 {entry['ttft_ms']['p50']} ms, p99 {entry['p99_ms']} ms"
                            if "p99_ms" in entry else "")
                    train = (f" train {entry['train_micro_steps_per_s']} micro-batches/s "
                             f"({entry['train_steps_per_s']} steps/s)") if "train_steps_per_s" in entry else ""
                    print(f"round {r + 1}/{rounds} {label}: {ttft}{train}", flush=True)
                alone = results["alone"]
                for label in SHARED:
                    results[label]["p99_vs_alone"] = round(results[label]["p99_ms"] / alone["p99_ms"], 3)
                    results[label]["train_vs_alone"] = round(
                        results[label]["train_micro_steps_per_s"] / results["train alone"]["train_micro_steps_per_s"],
                        3) if results["train alone"]["train_micro_steps_per_s"] else None
                per_round.append({"order": order, "results": results})
        finally:
            engine.stop()
            store.shutdown()
    summary = summarize(per_round)
    report(per_round, summary, count, rounds, turn_ms)
    ratio = summary["shared"]["p99_vs_alone"]["median"]
    share = summary["shared"]["train_vs_alone"]["median"]
    targets = {"p99_with_training_le_1.2x": {"value": ratio, "met": ratio <= P99_X},
               "training_ge_30pct_of_alone": {"value": share, "met": share >= TRAIN_SHARE}}
    print(f"\ninference p99 with training / without, median over {rounds} rounds: {ratio:.2f}x "
          f"(rounds {summary['shared']['p99_vs_alone']['min']:.2f}-{summary['shared']['p99_vs_alone']['max']:.2f}; "
          f"target <= {P99_X}x): {common.verdict(ratio <= P99_X)}")
    print(f"training beside inference / alone, median over {rounds} rounds: {share:.0%} "
          f"(rounds {summary['shared']['train_vs_alone']['min']:.0%}-{summary['shared']['train_vs_alone']['max']:.0%}; "
          f"target >= {TRAIN_SHARE:.0%}): {common.verdict(share >= TRAIN_SHARE)}")
    for r in per_round:
        for entry in r["results"].values():
            entry.pop("ttft_all_ms", None)
    common.write_result(NAME, {
        "machine": common.machine_facts(), "period_ms": PERIOD_MS, "requests_per_scenario": count, "rounds": rounds,
        "forward_pass_ms": round(turn_ms, 1), "summary": summary, "rounds_detail": per_round,
        "p99_ratio": ratio, "train_share": share, "targets": targets,
        "met": all(t["met"] for t in targets.values()),
        "notes": ["Each round runs the four scenarios in an order rotated by one from the round before.",
                  "p99_vs_alone and train_vs_alone compare two scenarios of the same round; the summary's median, "
                  "min and max are over rounds, and 'pooled' takes every request of every round together.",
                  "With fewer than 100 requests per round a round's p99 is close to its maximum."]}, quick=args.quick)


def summarize(per_round):
    summary = {}
    for label in SCENARIOS:
        entries = [r["results"][label] for r in per_round]
        out = {}
        if "p99_ms" in entries[0]:
            pooled = [t for e in entries for t in e["ttft_all_ms"]]
            out["ttft_p50_ms"] = spread_of([e["ttft_ms"]["p50"] for e in entries], 1)
            out["ttft_p99_ms"] = spread_of([e["p99_ms"] for e in entries], 1)
            out["pooled"] = {"p50_ms": round(common.percentile(pooled, 50), 1),
                             "p99_ms": round(common.percentile(pooled, 99), 1), "n": len(pooled)}
            out["errors"] = sum(e["errors"] for e in entries)
        if "train_steps_per_s" in entries[0]:
            out["train_steps_per_s"] = spread_of([e["train_steps_per_s"] for e in entries])
            out["train_micro_steps_per_s"] = spread_of([e["train_micro_steps_per_s"] for e in entries])
        for key in ("p99_vs_alone", "train_vs_alone"):
            values = [e[key] for e in entries if e.get(key) is not None]
            if values:
                out[key] = spread_of(values)
        for key in ("max_micro_steps_waited", "passes_paused"):
            values = [e[key] for e in entries if e.get(key) is not None]
            if values:
                out[key] = max(values) if key.startswith("max") else sum(values)
        summary[label] = out
    return summary


def report(per_round, summary, count, rounds, turn_ms):
    def ms(value):
        return None if value is None else f"{value:.0f}"

    rows = []
    for i, r in enumerate(per_round, 1):
        for label in SCENARIOS:
            e = r["results"][label]
            busy = e.get("engine_busy_share", {})
            rows.append([i, label, ms(e.get("ttft_ms", {}).get("p50")), ms(e.get("p99_ms")), e.get("p99_vs_alone"),
                         e.get("train_steps_per_s"), e.get("train_vs_alone"), e.get("max_micro_steps_waited"),
                         busy.get("inference"), busy.get("training"),
                         e.get("errors")])
    common.print_table(f"Per round: inference TTFT with a training job on the same engine (SmolLM2 {common.DTYPE} "
                       f"{common.DEVICE}, a request every {PERIOD_MS} ms, {count} per scenario; a forward pass "
                       f"~{turn_ms:.0f} ms)", ["round", "scenario", "TTFT p50 ms", "TTFT p99 ms", "p99 vs alone",
                                             "train steps/s", "train vs alone", "max micro-steps waited",
                                             "engine busy: inference", "training", "errors"],
                       rows)

    def med(d):
        return None if d is None else f"{d['median']:g} ({d['min']:g}-{d['max']:g})"

    common.print_table(f"Median over {rounds} rounds (min-max); pooled = every request of every round",
                       ["scenario", "TTFT p50 ms", "TTFT p99 ms", "pooled p50", "pooled p99", "p99 vs alone",
                        "train steps/s", "train vs alone"],
                       [[label, med(s.get("ttft_p50_ms")), med(s.get("ttft_p99_ms")),
                         s.get("pooled", {}).get("p50_ms"), s.get("pooled", {}).get("p99_ms"),
                         med(s.get("p99_vs_alone")), med(s.get("train_steps_per_s")), med(s.get("train_vs_alone"))]
                        for label, s in summary.items()])


if __name__ == "__main__":
    main()
