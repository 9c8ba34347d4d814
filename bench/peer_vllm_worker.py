"""The vLLM side of bench/peer_vllm.py. Runs in vLLM's own virtualenv (never this project's), loads one
``vllm.LLM`` with LoRA enabled and answers generate commands, one JSON object per line, until stdin closes.

    <vllm venv>/bin/python bench/peer_vllm_worker.py --model DIR --dtype float32 --adapters DIR...

Commands on stdin: {"prompts": [...], "adapters": [index or null, ...], "max_tokens": 64}. Each answer on
stdout: {"wall_s", "tokens", "tok_s"} or {"error"}. vLLM's own logging is sent to stderr, so stdout carries
answers only. The first line on stdout is {"ready": true, "vllm": version, "torch": version, ...} once the
model is loaded. Every row runs to max_tokens (ignore_eos, min_tokens), greedy.
"""

import argparse
import json
import os
import sys
import time


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="the SmolLM2 safetensors directory")
    parser.add_argument("--dtype", required=True, choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--adapters", nargs="*", default=[], help="PEFT adapter folders, index = LoRA id - 1")
    parser.add_argument("--max-loras", type=int, default=32)
    parser.add_argument("--max-rank", type=int, default=8)
    parser.add_argument("--max-num-seqs", type=int, default=32)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.3, help="CUDA only")
    args = parser.parse_args()

    answers = os.fdopen(os.dup(1), "w", buffering=1)  # our stdout; everything else printed goes to stderr
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    import torch
    import vllm
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    options = dict(model=args.model, dtype=args.dtype, enable_lora=True, max_loras=args.max_loras,
                   max_lora_rank=args.max_rank, max_cpu_loras=max(args.max_loras, len(args.adapters)),
                   max_model_len=256, max_num_seqs=args.max_num_seqs, seed=0)
    if torch.cuda.is_available():
        options["gpu_memory_utilization"] = args.gpu_memory_utilization
    started = time.perf_counter()
    llm = LLM(**options)
    load_s = time.perf_counter() - started
    requests = [LoRARequest(f"a{i}", i + 1, path) for i, path in enumerate(args.adapters)]
    answers.write(json.dumps({"ready": True, "vllm": vllm.__version__, "torch": torch.__version__,
                              "device": "cuda" if torch.cuda.is_available() else "cpu",
                              "device_name": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                              "load_s": round(load_s, 2), "options": options}) + "\n")

    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            command = json.loads(line)
            sampling = SamplingParams(max_tokens=command["max_tokens"], min_tokens=command["max_tokens"],
                                      ignore_eos=True, temperature=0)
            loras = [None if i is None else requests[i] for i in command["adapters"]]
            lora_request = None if all(r is None for r in loras) else loras
            started = time.perf_counter()
            outputs = llm.generate(command["prompts"], sampling, lora_request=lora_request, use_tqdm=False)
            wall = time.perf_counter() - started
            tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
            answers.write(json.dumps({"wall_s": round(wall, 3), "tokens": tokens,
                                      "tok_s": round(tokens / wall, 2)}) + "\n")
        except Exception as exc:  # the bench reports it and stops this side
            answers.write(json.dumps({"error": f"{type(exc).__name__}: {exc}"}) + "\n")


if __name__ == "__main__":  # vLLM's engine core is a spawned process that imports this module again
    main()
