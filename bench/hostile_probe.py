"""Hostile inputs against a running platform (`make up`): what a hostile tenant, or nobody at all, can send.

Each probe is one request a hostile client can make; each category counts attempts, 4xx answers, 5xx answers and
leaks (an answer that tells one tenant something of another's, or a refusal that did not hold). Tenant A is the demo
tenant of var/demo.env; tenant B is created here. Writes bench/results/hostile_probe.json.

    .venv/bin/python bench/hostile_probe.py            # against the URL in var/demo.env
"""

import io
import json
import re
import subprocess
import sys
import time
import zipfile
from collections import defaultdict
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS, ROOT, cpu_model  # noqa: E402

MODEL = "smollm2-135m-instruct"
TENANT_B = """
from tenants.models import APIKey, Membership, Tenant, User
from tenants.roles import OWNER, SCOPES
import time
tenant = Tenant.objects.create(slug=f"probe-b-{int(time.time())}", name="Probe B")  # fresh: nothing of its own cached
user = User.objects.filter(email="probe-b@vajra.local").first() or User.objects.create_user(
    email="probe-b@vajra.local", password="probe-b-password-1")
Membership.objects.get_or_create(tenant=tenant, user=user, defaults={"role": OWNER})
_, b = APIKey.objects.create_key(name="probe", tenant=tenant, created_by=user, scopes=list(SCOPES))
print(b)
"""


def read_env(path):
    values = {}
    for line in path.read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep and not name.startswith("#"):
            values[name.strip()] = value.strip()
    return values


class Probe:
    def __init__(self, url, key_a, key_b):
        self.url = url
        self.a = {"Authorization": f"Bearer {key_a}"}
        self.b = {"Authorization": f"Bearer {key_b}"}
        self.client = httpx.Client(base_url=url, timeout=120)
        self.table = defaultdict(lambda: {"attempts": 0, "4xx": 0, "2xx": 0, "5xx": 0, "closed": 0, "leaks": 0,
                                          "examples": []})
        self.memory = {}

    def record(self, category, what, status, leak=False):
        row = self.table[category]
        row["attempts"] += 1
        row["closed" if status == 0 else "4xx" if 400 <= status < 500 else "5xx" if status >= 500 else "2xx"] += 1
        row["leaks"] += int(bool(leak))
        if status >= 500 or leak:
            row["examples"].append(f"{what}: {status}{' LEAK' if leak else ''}")

    def send(self, category, what, method, path, *, leak_if_2xx=False, **kwargs):
        try:
            response = self.client.request(method, path, **kwargs)
            status = response.status_code
        except Exception as exc:  # noqa: BLE001 - the server closing a refused upload mid-body is an answer too
            print(f"  {what}: connection closed ({type(exc).__name__})")
            status = 0
            response = None
        self.record(category, what, status, leak=leak_if_2xx and 200 <= status < 300)
        return response


def web_process(url):
    """The process listening on the URL's port (daphne)."""
    import psutil

    port = httpx.URL(url).port
    for conn in psutil.net_connections("tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
            return psutil.Process(conn.pid)
    return None


class PeakRSS:
    """Samples a process's resident memory every 20 ms while the block runs; growth_mb is peak minus start."""

    def __init__(self, process):
        self.process, self.peak, self.start, self.growth_mb = process, 0, 0, None

    def _sample(self):
        while not self.done.wait(0.02):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self):
        import threading

        if self.process is not None:
            self.start = self.peak = self.process.memory_info().rss
            self.done = threading.Event()
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *exc):
        if self.process is not None:
            self.done.set()
            self.thread.join()
            self.growth_mb = round((self.peak - self.start) / 2 ** 20, 1)


def adapter_zip(model_dir, *, trailing=b"", config_patch=None):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir)
    torch.manual_seed(7)
    peft = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                           init_lora_weights=False))
    out = Path("/tmp/hostile-probe-adapter")
    peft.save_pretrained(out)
    weights = (out / "adapter_model.safetensors").read_bytes() + trailing
    config = json.loads((out / "adapter_config.json").read_text())
    config.update(config_patch or {})
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("a/adapter_model.safetensors", weights)
        archive.writestr("a/adapter_config.json", json.dumps(config))
    return buffer.getvalue()


def safetensors_with_header(header):
    raw = json.dumps(header).encode()
    return len(raw).to_bytes(8, "little") + raw + b"\0" * 64


def deep(depth):
    return "[" * depth + "]" * depth


def run(p, model_dir):
    infer = f"/v1/models/{MODEL}/infer"
    # a real adapter for tenant A, and a secret system prompt for the prefix-cache oracle
    p.client.post("/api/v1/adapters", headers=p.a, data={"name": "probe-a", "base_model": MODEL},
                  files={"file": ("a.zip", adapter_zip(model_dir))})
    secret = "You are the assistant of Probe A. The vault code is 7341-alpha-omega. " * 4

    print("parameters")
    bad = [{"temperature": 1e-37}, {"seed": 2 ** 70}, {"seed": -1}, {"top_k": 10 ** 12}, {"max_tokens": 10 ** 12},
           {"top_p": 0}, {"temperature": "hot"}, {"stop": ["x"] * 1000}, {"stop": ["y" * 100_000]},
           {"max_tokens": -5}, {"temperature": True}]
    for params in bad:
        p.send("parameters", f"infer {params}"[:60], "POST", infer, headers=p.a,
               json={"prompt": "Hi", "parameters": {"max_tokens": 4, **params}})
        p.send("parameters", f"chat {params}"[:60], "POST", "/v1/chat/completions", headers=p.a,
               json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, **params})
    p.send("parameters", "NaN literal", "POST", infer, headers={**p.a, "Content-Type": "application/json"},
           content=b'{"prompt": "Hi", "parameters": {"temperature": NaN}}')

    print("deep and huge bodies")
    for path in ("/api/v1/signup", infer, "/v1/chat/completions", "/api/v1/adapters/probe-a"):
        method = "PATCH" if path.startswith("/api/v1/adapters/") else "POST"
        p.send("deep JSON", f"{method} {path}", method, path, headers={**p.a, "Content-Type": "application/json"},
               content=deep(50_000).encode())
    boundary = "probeboundary"
    big = 200 << 20
    head = f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.zip\"\r\n\r\n".encode()
    tail = f"\r\n--{boundary}--\r\n".encode()

    def multipart():
        yield head
        chunk = b"\0" * (1 << 20)
        for _ in range(big >> 20):
            yield chunk
        yield tail

    web = web_process(p.url)
    for path in ("/api/v1/adapters", "/login/", "/nonexistent"):
        with PeakRSS(web) as peak:
            p.send("huge bodies", f"200 MB multipart {path}", "POST", path,
                   headers={"Content-Type": f"multipart/form-data; boundary={boundary}",
                            "Content-Length": str(len(head) + big + len(tail))}, content=multipart())
        p.memory[f"unauthenticated 200 MB multipart to {path}"] = peak.growth_mb
    for body in (b"--zz\r\nContent-Disposition: form-data\r\n\r\nx", b"garbage", b"--zz--"):
        p.send("malformed multipart", repr(body[:20]), "POST", "/api/v1/adapters",
               headers={**p.a, "Content-Type": "multipart/form-data; boundary=zz"}, content=body)
    p.send("malformed multipart", "no boundary", "POST", "/api/v1/adapters",
           headers={**p.a, "Content-Type": "multipart/form-data"}, content=b"x")

    print("adapters")
    cases = {
        "trailing 60 MB": adapter_zip(model_dir, trailing=b"\0" * (60 << 20)),
        "empty layers_to_transform": adapter_zip(model_dir, config_patch={"layers_to_transform": []}),
        "r as string": adapter_zip(model_dir, config_patch={"r": "8"}),
    }
    for name, header in {
        "dtype list": {"x": {"dtype": ["F32"], "shape": [8, 8], "data_offsets": [0, 256]}},
        "string offsets": {"x": {"dtype": "F32", "shape": [8, 8], "data_offsets": ["0", "256"]}},
        "float shape": {"x": {"dtype": "F32", "shape": [8.5, 8], "data_offsets": [0, 256]}},
        "text shape": {"x": {"dtype": "F32", "shape": "eight", "data_offsets": [0, 256]}},
    }.items():
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr("adapter_model.safetensors", safetensors_with_header(header))
            archive.writestr("adapter_config.json", json.dumps({"peft_type": "LORA", "r": 8, "lora_alpha": 16,
                                                                "target_modules": ["q_proj"]}))
        cases[name] = buffer.getvalue()
    cases["pickle"] = b"\x80\x04K\x01."
    for i, (name, blob) in enumerate(cases.items()):
        p.send("malformed adapters", name, "POST", "/api/v1/adapters", headers=p.a,
               data={"name": f"bad-{i}", "base_model": MODEL}, files={"file": ("a.zip", blob)})

    print("dates, ids, event ids")
    for query in ("to=9999-12-31", "from=0000-01-01", "from=2026-13-45", "to=" + "9" * 40, "granularity=century"):
        p.send("dates and ids", query, "GET", f"/v1/usage/demo/metrics?{query}", headers=p.a)
    for path in ("/v1/requests/" + "9" * 40, "/api/v1/members/" + "9" * 40, "/api/v1/keys/" + "x" * 5000):
        p.send("dates and ids", path[:40], "GET", path, headers=p.a)
    first = p.client.post(infer, headers=p.a, json={"prompt": "Hi", "adapter_id": "probe-a",
                                                    "parameters": {"max_tokens": 2}})
    request_id = first.json().get("id") if first.status_code == 200 else "missing"
    for value in ("garbage", "-1", "1" * 50, "0-0-0"):
        p.send("dates and ids", f"Last-Event-ID {value}", "GET", f"/v1/requests/{request_id}/events",
               headers={**p.a, "Last-Event-ID": value}, timeout=15)

    print("cross-tenant")
    for method, path in (("GET", "/api/v1/adapters/probe-a"), ("PATCH", "/api/v1/adapters/probe-a"),
                         ("GET", "/api/v1/adapters/probe-a/versions"), ("GET", f"/v1/requests/{request_id}"),
                         ("GET", f"/v1/requests/{request_id}/events"), ("POST", f"/v1/requests/{request_id}/cancel"),
                         ("GET", "/v1/usage/demo/metrics")):
        p.send("cross-tenant ids", f"{method} {path}", method, path, headers=p.b, leak_if_2xx=True,
               json={"tier": "cold"} if method == "PATCH" else None)
    for model in ("probe-a", "probe-a@v1"):
        p.send("cross-tenant ids", f"chat on {model}", "POST", "/v1/chat/completions", headers=p.b, leak_if_2xx=True,
               json={"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})

    print("prefix cache oracle")
    for _ in range(2):  # tenant A warms the cache with its secret prompt
        p.client.post(infer, headers=p.a, json={"prompt": secret + "Hello", "parameters": {"max_tokens": 1}})
    # B's first request with A's exact prompt: any cached token could only be A's
    r = p.send("prefix cache", "B sends A's prompt", "POST", infer, headers=p.b,
               json={"prompt": secret + "Hello", "parameters": {"max_tokens": 1}})
    cached = (r.json().get("usage") or {}).get("cached_tokens", 0) if r is not None and r.status_code == 200 else 0
    if cached:
        p.table["prefix cache"]["leaks"] += 1
        p.table["prefix cache"]["examples"].append(f"cached_tokens {cached} for tenant B")

    print("client IP and lockout")
    form = httpx.Client(base_url=p.url, timeout=30)  # a browser: the sign-in form's CSRF cookie and token
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.get("/login/").text).group(1)
    locked = False
    for i in range(12):
        response = form.post("/login/", data={"email": "demo@vajra.local", "password": f"wrong-{i}",
                                              "csrfmiddlewaretoken": token},
                             headers={"X-Forwarded-For": f"203.0.113.{i + 1}"})
        p.record("login lockout", "wrong password, rotating X-Forwarded-For", response.status_code)
        locked = locked or response.status_code == 429
    if not locked:
        p.table["login lockout"]["leaks"] += 1
        p.table["login lockout"]["examples"].append("12 wrong passwords from rotating X-Forwarded-For: never locked")


def table(rows):
    lines = [f"{'category':24} {'attempts':>8} {'4xx':>5} {'2xx':>5} {'5xx':>5} {'closed':>6} {'leaks':>5}"]
    for name, row in rows.items():
        lines.append(f"{name:24} {row['attempts']:>8} {row['4xx']:>5} {row['2xx']:>5} {row['5xx']:>5} "
                     f"{row['closed']:>6} {row['leaks']:>5}")
        lines += [f"    {example}" for example in row["examples"]]
    return "\n".join(lines)


def main():
    demo = read_env(ROOT / "var" / "demo.env")
    out = subprocess.run([sys.executable, "manage.py", "shell", "-c", TENANT_B], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout.split()
    key_b = out[-1]
    probe = Probe(demo["VAJRA_URL"], demo["VAJRA_API_KEY"], key_b)
    started = time.monotonic()
    run(probe, ROOT / "var" / "models" / MODEL / "float32")
    print(table(probe.table))
    print("web process memory growth (MB):", json.dumps(probe.memory, indent=1))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "hostile_probe.json").write_text(json.dumps({
        "benchmark": "hostile_probe", "cpu_model": cpu_model(), "url": demo["VAJRA_URL"],
        "seconds": round(time.monotonic() - started, 1), "categories": probe.table,
        "web_rss_growth_mb": probe.memory}, indent=1))


if __name__ == "__main__":
    main()
