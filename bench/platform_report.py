"""Summarizes platform_overhead's measurements, prints its side-by-side tables and writes
bench/results/platform_overhead.json."""

import common

NAME = "platform_overhead"
ADDED_TTFT_MS = 5  # p50 time to first token the platform adds beyond the engine's own clock
CONCURRENT_SHARE = 0.95  # 32 streams through the platform: the share of the engine's tokens/s they keep


def summarize_latency(label, rows, max_tokens):
    cases = ("direct", "rest", "sse")

    def pick(case, key):
        return [row[case][key] for row in rows]

    def spread(values):
        return common.spread(values)

    def added(case, key, base_key):
        return [row[case][key] - row["direct"][base_key] for row in rows]

    def outside(case, key, runtime_key):  # client time not on the engine's clock (submit -> event)
        return [row[case][key] - row[case][runtime_key] for row in rows]

    def net(case, key, runtime_key):  # the platform's outside-engine time less the direct path's own
        return [p - d for p, d in zip(outside(case, key, runtime_key), outside("direct", key, runtime_key),
                                      strict=True)]

    out = {
        "label": label, "n": len(rows), "max_tokens": max_tokens,
        "ttft_ms": {"direct": spread(pick("direct", "first_delta_ms")), "sse": spread(pick("sse", "first_delta_ms"))},
        "total_ms": {case: spread(pick(case, "total_ms")) for case in cases},
        "runtime_first_token_ms": {case: spread(pick(case, "runtime_first_token_ms")) for case in cases},
        "runtime_total_ms": {case: spread(pick(case, "runtime_total_ms")) for case in cases},
        "added_ms": {"ttft_sse": spread(added("sse", "first_delta_ms", "first_delta_ms")),
                     "total_rest": spread(added("rest", "total_ms", "total_ms")),
                     "total_sse": spread(added("sse", "total_ms", "total_ms"))},
        "added_beyond_engine_ms": {"ttft_sse": spread(net("sse", "first_delta_ms", "runtime_first_token_ms")),
                                   "total_rest": spread(net("rest", "total_ms", "runtime_total_ms")),
                                   "total_sse": spread(net("sse", "total_ms", "runtime_total_ms"))},
        "engine_submit_ms": {case: spread(pick(case, "engine_submit_ms")) for case in cases},
        "relay_first_delta_ms": {case: spread(pick(case, "relay_first_delta_ms")) for case in ("direct", "sse")},
        "relay_final_ms": {case: spread(pick(case, "relay_final_ms")) for case in cases},
        "sse_request_event_ms": spread(pick("sse", "request_event_ms")),
        "texts_identical": all(row["direct"]["text"] == row["rest"]["text"] == row["sse"]["text"] for row in rows),
        "requests": [{"prompt": row["prompt"], **{case: {k: v for k, v in row[case].items() if k != "text"}
                                                   for case in cases}} for row in rows],
    }
    a, b = out["added_ms"], out["added_beyond_engine_ms"]
    print(f"  added p50 (platform - direct): TTFT SSE {a['ttft_sse']['p50']} ms, total REST {a['total_rest']['p50']} "
          f"ms, total SSE {a['total_sse']['p50']} ms; beyond the engine's clock: TTFT SSE {b['ttft_sse']['p50']} ms, "
          f"total REST {b['total_rest']['p50']} ms; texts identical: {out['texts_identical']}", flush=True)
    return out


def report(results, config, ready_s, node_loaded, quick, load_before, prompt_tokens, max_batch):
    latencies = (results["base"], results["adapter"])
    rows = []
    for r in latencies:
        a, b = r["added_ms"], r["added_beyond_engine_ms"]
        rows += [
            [r["label"], "TTFT: SSE first delta", r["ttft_ms"]["direct"]["p50"], r["ttft_ms"]["sse"]["p50"],
             a["ttft_sse"]["p50"], a["ttft_sse"]["p95"], b["ttft_sse"]["p50"], b["ttft_sse"]["p95"]],
            [r["label"], "total: REST", r["total_ms"]["direct"]["p50"], r["total_ms"]["rest"]["p50"],
             a["total_rest"]["p50"], a["total_rest"]["p95"], b["total_rest"]["p50"], b["total_rest"]["p95"]],
            [r["label"], "total: SSE done", r["total_ms"]["direct"]["p50"], r["total_ms"]["sse"]["p50"],
             a["total_sse"]["p50"], a["total_sse"]["p95"], b["total_sse"]["p50"], b["total_sse"]["p95"]],
        ]
    base = results["base"]
    common.print_table(f"Platform vs engine alone, ms ({base['n']} base / {results['adapter']['n']} adapter prompts, "
                       f"{base['max_tokens']} tokens, one request at a time)",
                       ["case", "metric", "direct p50", "platform p50", "added p50", "added p95",
                        "beyond engine clock p50", "p95"], rows)
    common.print_table("Where the time goes, p50 ms from the client's request (runtime = the engine's own clock)",
                       ["case", "path", "SSE `request` event", "at the engine (submit)", "runtime first token",
                        "first delta: entry -> client", "runtime total", "final: entry -> client"],
                       [[r["label"], case, r["sse_request_event_ms"]["p50"] if case == "sse" else None,
                         r["engine_submit_ms"][case]["p50"], r["runtime_first_token_ms"][case]["p50"],
                         r["relay_first_delta_ms"][case]["p50"] if case != "rest" else None,
                         r["runtime_total_ms"][case]["p50"], r["relay_final_ms"][case]["p50"]]
                        for r in latencies for case in ("direct", "rest", "sse")])
    common.print_table("The web's floor over HTTP (interleaved), ms", ["request", "p50", "p95", "min"],
                       [[name, v["p50"], v["p95"], v["min"]] for name, v in results["probes"].items()])
    common.print_table("The infer view's steps in a Django process (no HTTP), ms", ["step", "p50", "min"],
                       [[name, v["p50"], v["min"]] for name, v in results["web_steps"].items()])
    c = results["concurrency"]
    common.print_table(f"{c['streams']} concurrent streams x {c['max_tokens']} tokens (max_batch {max_batch})",
                       ["case", "run", "wall s", "tokens", "tok/s", "TTFT p50 ms", "TTFT p95 ms",
                        "web answered (`request` event) p50 ms", "max ms", "at the engine p50 ms", "max ms"],
                       [[kind, i + 1, run["wall_s"], run["tokens"], run["tok_s"], run["ttft_ms"]["p50"],
                         run["ttft_ms"]["p95"], run.get("request_event_ms", {}).get("p50"),
                         run.get("request_event_ms", {}).get("max"), run.get("engine_submit_ms", {}).get("p50", 0.0),
                         run.get("engine_submit_ms", {}).get("max", 0.0)]
                        for kind in ("direct", "platform") for i, run in enumerate(c[kind]["runs"])])
    print(f"\naggregate tokens/s: platform {c['platform']['tok_s']} vs engine alone {c['direct']['tok_s']} "
          f"({c['platform_over_direct']:.0%})")
    targets = {}
    for key, r in (("base", base), ("adapter", results["adapter"])):
        beyond, raw = r["added_beyond_engine_ms"]["ttft_sse"]["p50"], r["added_ms"]["ttft_sse"]["p50"]
        targets[f"added_ttft_p50_le_{ADDED_TTFT_MS}ms_{key}"] = {
            "value_ms": beyond, "raw_difference_ms": raw, "target_ms": ADDED_TTFT_MS, "met": beyond <= ADDED_TTFT_MS}
    targets["texts_identical"] = {"met": all(r["texts_identical"] for r in latencies)}
    targets[f"concurrent_tok_s_ge_{CONCURRENT_SHARE:.0%}_of_engine"] = {
        "value": c["platform_over_direct"], "target": CONCURRENT_SHARE,
        "met": c["platform_over_direct"] >= CONCURRENT_SHARE,
        "platform_tok_s": c["platform"]["tok_s"], "engine_tok_s": c["direct"]["tok_s"]}
    print("targets: " + "; ".join(f"{k} {common.verdict(v['met'])}" for k, v in targets.items()
                                  if v["met"] is not None))
    common.write_result(NAME, {
        "benchmark": NAME, "quick": quick, "machine": common.machine_facts(),
        "load_average_before": load_before, "load_average_after": common.load_average(),
        "platform": {"web": "daphne, DJANGO_DEBUG=false, SQLite", "runtime": "celery threads, concurrency 40",
                     "control": "celery threads, concurrency 4", "redis": "private redis-server, unix socket",
                     "max_batch": max_batch, "slot_buckets": config.slot_buckets,
                     "prefix_cache_bytes": config.prefix_cache_bytes, "ready_s": round(ready_s, 1),
                     "node_loaded": node_loaded[:1]},
        "prompt_tokens": {"min": min(prompt_tokens), "max": max(prompt_tokens)},
        "results": results, "targets": targets,
        "notes": [
            "One request at a time, per prompt the three cases in rotating order. added_ms = platform - direct "
            "for the same prompt (client clocks); p50/p95 over the prompts.",
            "TTFT = time to the first text delta as a client sees it: direct reads the request's Redis Stream "
            "(blocking XREAD), SSE the first `delta` event. REST has no first token; its total is the JSON answer.",
            "runtime_* = the engine's timings from engine.submit (on the node for the platform). "
            "added_beyond_engine_ms = (platform client time - its runtime time) - (direct client time - its runtime "
            "time): what the platform adds with each engine's own speed taken out (web + Celery + Redis relay). "
            "This is the figure the target is judged on: the same engine code runs at a different speed in the "
            "Celery node and in this process (runtime_* columns), which the raw difference mixes in.",
            "engine_submit_ms = when the request reached the engine, from the client's start: the final Redis entry's "
            "time (entry id, 1 ms) - runtime total_ms. relay_* = client receipt - the entry's time. "
            "sse_request_event_ms: request -> the SSE `request` event (auth, rate limit, the request row, the task "
            "sent after commit).",
            "probes: GET /healthz (no auth) and GET /v1/models/<m>/versions (API-key auth + rate limit + a query).",
            "web_steps: the infer view's synchronous steps timed one by one in a `manage.py shell` process with the "
            "platform's settings (SQLite, the same Redis); the committed submits send 1-token requests to the node.",
            "Prompts are <= 16 tokens so the prefix cache (on in both, as on a node) can never hit: both sides run "
            "every prompt in full. Greedy; texts_identical compares direct, REST and SSE.",
            "Concurrency: direct = 32 requests submitted at once to the in-process engine, wall to the last final "
            "(TTFT = runtime first_token_ms); platform = 32 SSE streams opened at once (httpx.AsyncClient in this "
            "process), wall to the last `done`, TTFT = client first delta; engine_submit_ms = when each reached the "
            "node's engine. Direct and platform alternate (A B B A full). Client, daphne, node and control worker "
            "share the 2 cores.",
        ],
    }, quick=quick)
