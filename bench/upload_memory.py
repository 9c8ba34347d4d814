"""Memory of the web process under large request bodies: daphne (the real server, as a subprocess) against a
throwaway SQLite database, its resident memory sampled while each body arrives and is handled.

Cases: an unauthenticated 200 MB multipart POST to the adapter upload route (accepted by the body limit, spooled to
disk, refused 401 by the API), the same body to an ordinary route (413 from its Content-Length), and a legal adapter
upload near the cap for SmolLM2-135M (every linear layer at the maximum rank in F32: about 75 MB, answered 201).
Each must grow the web process by less than 50 MB. Writes bench/results/upload_memory.json.

    .venv/bin/python bench/upload_memory.py [--quick]
"""

import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import common
from platform_procs import CREATE_KEY, Proc, free_port

from gpu_runtime.adapter_validation import MAX_LORA_RANK, BaseFacts, max_weights_bytes

BUDGET_MB = 50
BOUNDARY = "vajrabench"
# SmolLM2-135M-Instruct's shapes (30 layers, hidden 576, MLP 1536, 9 query and 3 key/value heads), as its model
# manifest records them: the base model the adapter must fit.
SMOLLM2_ARCHITECTURE = {"num_hidden_layers": 30, "hidden_size": 576, "intermediate_size": 1536,
                        "num_attention_heads": 9, "num_key_value_heads": 3}
CREATE_BASE = f"""
from adapters.models import BaseModel
BaseModel.objects.create(name="smollm2-135m-instruct", architecture={SMOLLM2_ARCHITECTURE!r})
"""


class RssSampler:
    """Samples a process's resident set every few milliseconds; ``peak_mb`` is the highest seen since start()."""

    def __init__(self, pid):
        import psutil

        self.process = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()

    def rss(self):
        return self.process.memory_info().rss

    def __enter__(self):
        self.before = self.peak = self.rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(0.005)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())
        self.growth_mb = (self.peak - self.before) / 2**20


def post_streamed(port, path, parts, headers=None):
    """POSTs a multipart body with Content-Length, each part streamed from its chunks; returns (status, body).
    ``parts``: [(field name, file name or None, size, chunks)]."""
    framed, total = [], 0
    for name, file_name, size, chunks in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{file_name}"' if file_name else "")
        head = f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
        framed.append((head, chunks))
        total += len(head) + size + 2
    tail = f"--{BOUNDARY}--\r\n".encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    conn.putrequest("POST", path)
    conn.putheader("Content-Type", f"multipart/form-data; boundary={BOUNDARY}")
    conn.putheader("Content-Length", str(total + len(tail)))
    for key, value in (headers or {}).items():
        conn.putheader(key, value)
    conn.endheaders()
    try:
        for head, chunks in framed:
            conn.send(head)
            for chunk in chunks:
                conn.send(chunk)
            conn.send(b"\r\n")
        conn.send(tail)
    except OSError:  # answered and closed before the body was sent: read the answer
        pass
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response.status, body


def field(name, value):
    data = value.encode()
    return name, None, len(data), [data]


def zeros(size, block=1 << 20):
    left = size
    while left:
        n = min(block, left)
        yield bytes(n)
        left -= n


def near_cap_adapter(directory):
    """A legal SmolLM2 adapter at the maximum rank on every linear layer, in F32: the largest the validator takes."""
    import numpy as np
    from safetensors.numpy import save_file

    base = BaseFacts.from_manifest({"name": "smollm2-135m-instruct", "architecture": SMOLLM2_ARCHITECTURE})
    r = MAX_LORA_RANK
    tensors = {}
    for layer in range(base.num_layers):
        for module, (block, fan_in, fan_out) in base.modules.items():
            prefix = f"base_model.model.model.layers.{layer}.{block}.{module}"
            tensors[f"{prefix}.lora_A.weight"] = np.full((r, fan_in), 0.001, dtype=np.float32)
            tensors[f"{prefix}.lora_B.weight"] = np.zeros((fan_out, r), dtype=np.float32)
    weights = Path(directory) / "adapter_model.safetensors"
    save_file(tensors, str(weights))
    config = {"peft_type": "LORA", "r": r, "lora_alpha": 2 * r, "target_modules": sorted(base.modules),
              "base_model_name_or_path": "smollm2-135m-instruct"}
    return json.dumps(config).encode(), weights, base


def main():
    args = common.parse_args(__doc__.splitlines()[0])
    big = (50 if args.quick else 200) * 1_000_000
    with tempfile.TemporaryDirectory(prefix="vajra-bench-upload-") as tmp:
        tmp = Path(tmp)
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("DJANGO_", "VAJRA_", "DATABASE_URL", "REDIS_URL"))}
        env.update(PYTHONUNBUFFERED="1", VAJRA_VAR_DIR=str(tmp / "var"), DJANGO_SETTINGS_MODULE="vajra.settings",
                   DJANGO_DEBUG="false", DJANGO_SECRET_KEY="bench-" + "x" * 48, DJANGO_HTTPS="false")
        (tmp / "var").mkdir()
        from vajra.embedded_redis import start_private_redis

        redis, env["REDIS_URL"] = start_private_redis(tmp / "run")
        python = sys.executable
        subprocess.run([python, "manage.py", "migrate", "--verbosity", "0"], cwd=common.ROOT, env=env, check=True)
        out = subprocess.run([python, "manage.py", "shell", "-c", CREATE_KEY + CREATE_BASE], cwd=common.ROOT,
                             env=env, check=True, capture_output=True, text=True).stdout
        secret = next(line.split("=", 1)[1] for line in out.splitlines() if line.startswith("SECRET="))
        port = free_port()
        daphne = Proc("daphne", [python, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port),
                                 "vajra.asgi:application"], env, tmp)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                    conn.request("GET", "/healthz")
                    if conn.getresponse().status == 200:
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline or daphne.popen.poll() is not None:
                    raise SystemExit(f"daphne did not start:\n{daphne.tail()}")
                time.sleep(0.3)
            cases = []

            def measure(name, expected, path, parts, headers=None):
                with RssSampler(daphne.popen.pid) as sampler:
                    started = time.perf_counter()
                    status, body = post_streamed(port, path, parts, headers)
                    seconds = time.perf_counter() - started
                    time.sleep(0.3)  # what the handler holds after answering
                cases.append({"case": name, "status": status, "expected_status": expected,
                              "rss_before_mb": round(sampler.before / 2**20, 1),
                              "rss_peak_mb": round(sampler.peak / 2**20, 1),
                              "growth_mb": round(sampler.growth_mb, 1), "seconds": round(seconds, 2),
                              "within_budget": sampler.growth_mb < BUDGET_MB and status == expected})
                print(f"{name:58s} status {status} (want {expected})  RSS {sampler.before / 2**20:7.1f} -> "
                      f"{sampler.peak / 2**20:7.1f} MB  growth {sampler.growth_mb:6.1f} MB  {seconds:6.2f} s")
                if status != expected:
                    print("   ", body[:300])

            upload_fields = [field("name", "near-cap"), field("base_model", "smollm2-135m-instruct")]
            measure(f"unauthenticated {big // 1_000_000} MB multipart to /api/v1/adapters", 401,
                    "/api/v1/adapters", [*upload_fields, ("file", "big.zip", big, zeros(big))])
            measure(f"unauthenticated {big // 1_000_000} MB multipart to /api/v1/me", 413,
                    "/api/v1/me", [("file", "big.zip", big, zeros(big))])
            config, weights, base = near_cap_adapter(tmp)
            size = weights.stat().st_size

            def weight_chunks():
                with open(weights, "rb") as f:
                    while block := f.read(1 << 20):
                        yield block

            measure(f"legal adapter upload, {size / 1e6:.1f} MB (cap {max_weights_bytes(base) / 1e6:.1f} MB)", 201,
                    "/api/v1/adapters", [*upload_fields, ("file", "adapter_config.json", len(config), [config]),
                                         ("file", "adapter_model.safetensors", size, weight_chunks())],
                    headers={"Authorization": f"Bearer {secret}"})
        finally:
            daphne.stop()
            redis.terminate()
            redis.wait(10)
    result = {"benchmark": "upload_memory", "budget_mb": BUDGET_MB, "machine": common.machine_facts(),
              "cases": cases, "all_within_budget": all(c["within_budget"] for c in cases)}
    common.write_result("upload_memory", result, quick=args.quick)
    return 0 if result["all_within_budget"] else 1


if __name__ == "__main__":
    sys.exit(main())
