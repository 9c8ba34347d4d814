"""Grammar-constrained decoding: which library, and what a constrained row costs.

On SmolLM2's tokenizer (49,152 tokens, from var/models), for xgrammar, llguidance and outlines-core:

    compile     a JSON schema -> a matcher ready for its first mask (fresh each time: no cache), per schema
    per token   computing the allowed-token mask and advancing the matcher by one token, replayed over the tokens
                of a valid instance of each schema (the instance's compact JSON, tokenized as the model would)

then, with the library the runtime uses (gpu_runtime.grammar), the engine's own tokens/s for one row with a JSON
schema grammar against one row without, the same prompt and max_tokens (greedy, fp32 on the CPU), alternating
(A B B A) as the VM drifts: decode tokens/s = (completion tokens - 1) / (total - first token time).

The choice, llguidance, from these figures (bench/results/constrained_decoding.json; Intel Xeon, fp32 CPU, 2
cores shared): it compiles each schema in under 1 ms where xgrammar takes ~9-11 ms (it precomputes masks over the
whole vocabulary per grammar) and outlines-core 90-390 ms (a whole regex DFA index, unbounded in a schema's size).
Per token xgrammar is cheaper (3-6 us against llguidance's 22-34 us; outlines-core's get_tokens list 240-700 us),
but both are under 0.1 % of a SmolLM2 decode step on this CPU (tens of ms), so per request llguidance costs less up
to ~350 generated tokens and at most a few ms more past that, while its lazy compile is bounded by fuel limits
(gpu_runtime.grammar.LIMITS): a hostile schema cannot buy an unbounded precomputation on a node. It also enforces
the most of JSON Schema (anyOf, recursive $ref, pattern, min/maxLength, min/maxProperties, formats; what it cannot
enforce it refuses by name), and ships as one Rust wheel without dependencies: xgrammar 0.2.9's wheel requires
torch, transformers and triton (and apache-tvm-ffi), which a CPU node pinned to the CPU torch build cannot take
without pulling CUDA packages. It is maintained by the guidance team and used by vLLM, SGLang and llama.cpp.
(The comparison installs xgrammar and outlines-core with --no-deps beside the venv, on PYTHONPATH; without them
their rows say "not installed".)

    .venv/bin/python bench/constrained_decoding.py [--quick]
"""

import json
import statistics
import tempfile
import time
import uuid

import common

NAME = "constrained_decoding"
SEPARATORS = (", ", ": ")
SCHEMAS = {
    "flat": ({"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False},
             {"name": "Ada Lovelace", "age": 36}),
    "enum+array": ({"type": "object", "properties": {
        "colour": {"enum": ["red", "green", "blue"]},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 5},
        "score": {"type": "number"}}, "required": ["colour", "tags", "score"], "additionalProperties": False},
        {"colour": "green", "tags": ["a", "bb", "ccc"], "score": 4.5}),
    "nested": ({"type": "object", "properties": {
        "order": {"type": "object", "properties": {
            "id": {"type": "integer"},
            "items": {"type": "array", "items": {"type": "object", "properties": {
                "sku": {"type": "string"}, "qty": {"type": "integer", "minimum": 1}},
                "required": ["sku", "qty"], "additionalProperties": False}},
            "paid": {"type": "boolean"}}, "required": ["id", "items", "paid"], "additionalProperties": False},
        "note": {"anyOf": [{"type": "string"}, {"type": "null"}]}},
        "required": ["order", "note"], "additionalProperties": False},
        {"order": {"id": 7, "items": [{"sku": "A-1", "qty": 2}, {"sku": "B-2", "qty": 1}], "paid": True},
         "note": None}),
}


def instance_text(instance):
    return json.dumps(instance, separators=SEPARATORS)


# ---- the three libraries, behind one shape: compile(schema) -> matcher; step(matcher, token) -------------------
class Llguidance:
    name = "llguidance"

    def __init__(self, tokenizer, vocab):
        import llguidance
        import llguidance.hf
        import llguidance.torch

        self.llg = llguidance
        self.tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab)
        self.bitmask = llguidance.torch.allocate_token_bitmask(1, vocab)
        self.version = getattr(llguidance, "__version__", None) or _dist_version("llguidance")

    def compile(self, schema):
        grammar = self.llg.LLMatcher.grammar_from_json_schema(
            schema, overrides={"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "})
        matcher = self.llg.LLMatcher(self.tokenizer, grammar, log_level=0)
        assert not matcher.is_error(), matcher.get_error()
        return matcher

    def step(self, matcher, token):
        import llguidance.torch

        llguidance.torch.fill_next_token_bitmask(matcher, self.bitmask, 0)
        ok = matcher.consume_token(token)
        assert ok, matcher.get_error()


class Xgrammar:
    name = "xgrammar"

    def __init__(self, tokenizer, vocab):
        import xgrammar

        self.xgr = xgrammar
        self.info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab)
        self.bitmask = xgrammar.allocate_token_bitmask(1, vocab)
        self.version = _dist_version("xgrammar")

    def compile(self, schema):
        compiler = self.xgr.GrammarCompiler(self.info, max_threads=1, cache_enabled=False)
        compiled = compiler.compile_json_schema(json.dumps(schema), any_whitespace=False, separators=SEPARATORS)
        return self.xgr.GrammarMatcher(compiled)

    def step(self, matcher, token):
        matcher.fill_next_token_bitmask(self.bitmask)
        assert matcher.accept_token(token)


class OutlinesCore:
    name = "outlines-core"

    def __init__(self, tokenizer, vocab):
        import outlines_core

        self.oc = outlines_core
        self.vocabulary = outlines_core.Vocabulary(tokenizer.eos_token_id, byte_vocabulary(tokenizer))
        self.version = _dist_version("outlines_core")

    def compile(self, schema):
        from outlines_core.json_schema import build_regex_from_schema

        regex = build_regex_from_schema(json.dumps(schema), whitespace_pattern="[ ]?")
        return self.oc.Guide(self.oc.Index(regex, self.vocabulary))

    def step(self, guide, token):
        allowed = guide.get_tokens()  # the mask, as outlines-core hands it out
        assert token in allowed or True  # membership is what a sampler would test; the list is the cost
        guide.advance(token, return_tokens=False)


def byte_vocabulary(tokenizer):
    """token bytes -> ids, from a byte-level BPE vocabulary (GPT-2's byte-to-unicode spelling undone); the EOS and
    other special tokens left out."""
    table = _bytes_to_unicode()
    back = {char: byte for byte, char in table.items()}
    special = set(tokenizer.all_special_ids)
    vocabulary = {}
    for text, token in tokenizer.get_vocab().items():
        if token in special or not all(char in back for char in text):
            continue
        vocabulary.setdefault(bytes(back[char] for char in text), []).append(token)
    return vocabulary


def _bytes_to_unicode():
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = list(printable), 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {byte: chr(char) for byte, char in zip(printable, chars, strict=True)}


def _dist_version(name):
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def measure_library(library, tokenizer, repeats):
    rows = {}
    for name, (schema, instance) in SCHEMAS.items():
        tokens = tokenizer(instance_text(instance), add_special_tokens=False).input_ids
        compile_ms = []
        step_us = []
        for _ in range(repeats):
            started = time.perf_counter()
            matcher = library.compile(schema)
            compile_ms.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            for token in tokens:
                library.step(matcher, token)
            step_us.append((time.perf_counter() - started) * 1e6 / len(tokens))
        rows[name] = {"compile_ms": common.summarize(compile_ms), "per_token_us": round(statistics.median(step_us), 1),
                      "tokens": len(tokens)}
    return rows


# ---- the engine: a constrained row against an unconstrained one ----------------------------------------------------
def engine_rows(base, streams, repeats, max_tokens):
    from gpu_runtime.generation import GenerationRequest, SamplingParams
    from gpu_runtime.grammar_spec import Grammar

    engine, _ = common.build_engine(base, streams, slots=1, max_batch=4, disk_dir=tempfile.mkdtemp())
    engine.start()
    schema = SCHEMAS["nested"][0]
    messages = ({"role": "user", "content": "Describe an order of two items as JSON."},)

    def run(constrained):
        grammar = Grammar.json_schema(schema) if constrained else None
        handle = engine.submit(GenerationRequest(
            request_id=f"req_{uuid.uuid4().hex}", messages=messages, grammar=grammar,
            sampling=SamplingParams(max_tokens=max_tokens, temperature=0.7, seed=3)))
        final = handle.wait(600)
        tokens = final["usage"]["completion_tokens"]
        decode_ms = final["timings"]["total_ms"] - final["timings"]["first_token_ms"]
        return tokens, decode_ms

    try:
        run(True)  # warm-up: llguidance's view of the tokenizer is built at the first grammar
        run(False)
        samples = {"constrained": [], "unconstrained": []}
        for i in range(repeats):
            for kind in (("constrained", "unconstrained") if i % 2 == 0 else ("unconstrained", "constrained")):
                tokens, ms = run(kind == "constrained")
                if tokens > 1:
                    samples[kind].append((tokens - 1) / (ms / 1000))
    finally:
        engine.stop()
    return {kind: {"tokens_per_s": round(statistics.median(v), 1), "n": len(v)} for kind, v in samples.items()}


def main():
    args = common.parse_args(__doc__.splitlines()[0])
    repeats = 3 if args.quick else 10
    base = common.load_smollm2()
    _, tokenizer = common.transformers_smollm2(base)  # the libraries take transformers' tokenizer
    vocab = base.model.config.vocab_size
    libraries = {}
    for kind in (Llguidance, Xgrammar, OutlinesCore):
        try:
            library = kind(tokenizer, vocab)
        except ImportError as exc:
            libraries[kind.name] = {"error": f"not installed: {exc}"}
            continue
        started = time.perf_counter()
        measured = measure_library(library, tokenizer, repeats)
        libraries[kind.name] = {"version": library.version, "schemas": measured,
                                "total_s": round(time.perf_counter() - started, 1)}
    rows = []
    for library, result in libraries.items():
        for schema, figures in (result.get("schemas") or {}).items():
            rows.append([library, schema, figures["compile_ms"]["median_ms"], figures["per_token_us"],
                         figures["tokens"]])
    common.print_table("Compile (ms, median) and mask + advance per token (us) on SmolLM2's tokenizer",
                       ["library", "schema", "compile ms", "per token us", "tokens"], rows)
    with common.private_redis() as streams:
        engine = common.on_loader_thread(lambda: engine_rows(base, streams, 2 if args.quick else 6,
                                                             32 if args.quick else 64))
    common.print_table("Engine decode tokens/s, one row (llguidance in gpu_runtime.grammar)",
                       ["row", "tokens/s", "n"], [[k, v["tokens_per_s"], v["n"]] for k, v in engine.items()])
    ratio = engine["constrained"]["tokens_per_s"] / engine["unconstrained"]["tokens_per_s"]
    print(f"\nconstrained / unconstrained: {ratio:.3f}")
    common.write_result(NAME, {"machine": common.machine_facts(), "libraries": libraries, "engine": engine,
                               "constrained_over_unconstrained": round(ratio, 3), "chosen": "llguidance"},
                        quick=args.quick)


if __name__ == "__main__":
    main()
