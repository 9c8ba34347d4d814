"""The whole platform as real processes for benchmarks: a private Redis, daphne, runtime nodes (one, or more
with add_node) and the control worker against a throwaway SQLite database, stopped (all of them) at the end."""

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import common


class Proc:
    """A child in its own session, its output in a log file; stop() ends its whole process group."""

    def __init__(self, name, argv, env, log_dir):
        self.name = name
        self.log_path = Path(log_dir) / f"{name}.log"
        self.log = open(self.log_path, "wb")
        self.popen = subprocess.Popen(argv, cwd=common.ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                      start_new_session=True)

    def tail(self, chars=3000):
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self, timeout=20):
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
            except ProcessLookupError:
                pass
        self.log.close()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Platform:
    """Redis + migrated SQLite + tenant and API key + daphne + runtime node + control worker, all stopped by
    stop() (also after a failed start)."""

    def __init__(self, tmp, max_batch=32, *, model_store=None, base_model="smollm2-135m-instruct", node_env=None):
        self.tmp = Path(tmp)
        self.max_batch = max_batch
        self.model_store = Path(model_store or common.MODEL_STORE)
        self.base_model = base_model
        self.node_env = dict(node_env or {})
        self.procs = []
        self.nodes = []
        self.redis = None
        self.node = f"bench-{os.getpid()}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self):
        from vajra.embedded_redis import start_private_redis

        started = time.perf_counter()
        self.redis, self.redis_url = start_private_redis(self.tmp / "run")
        inherited = {k: v for k, v in os.environ.items()
                     if not k.startswith(("DJANGO_", "VAJRA_", "DATABASE_URL", "REDIS_URL", "CELERY_"))}
        self.env = {**inherited, "PYTHONUNBUFFERED": "1", "VAJRA_VAR_DIR": str(self.tmp / "var"),
                    "REDIS_URL": self.redis_url, "DJANGO_SETTINGS_MODULE": "vajra.settings",
                    "DJANGO_DEBUG": "false", "DJANGO_SECRET_KEY": secrets.token_urlsafe(48), "DJANGO_HTTPS": "false",
                    "VAJRA_RATE_LIMIT_PER_KEY": "100000",
                    "VAJRA_RATE_LIMIT_PER_TENANT": "100000", "VAJRA_MODEL_STORE": str(self.model_store),
                    "VAJRA_BASE_MODEL": self.base_model,
                    "VAJRA_DTYPE": common.DTYPE, "VAJRA_DEVICE": common.DEVICE}
        (self.tmp / "var").mkdir(parents=True, exist_ok=True)
        python = sys.executable
        subprocess.run([python, "manage.py", "migrate", "--verbosity", "0"], cwd=common.ROOT, env=self.env, check=True)
        out = subprocess.run([python, "manage.py", "shell", "-c", CREATE_KEY], cwd=common.ROOT, env=self.env,
                             check=True, capture_output=True, text=True).stdout
        self.secret = next(line.split("=", 1)[1] for line in out.splitlines() if line.startswith("SECRET="))
        self.procs.append(Proc("daphne", [python, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port),
                                          "vajra.asgi:application"], self.env, self.tmp))
        self._start_node(self.node, "runtime")
        self.procs.append(Proc("control", [python, "-m", "celery", "-A", "vajra", "worker", "--queues", "control",
                                           "--pool", "threads", "--concurrency", "4", "--loglevel", "WARNING",
                                           "--hostname", f"control-{os.getpid()}@%h"], self.env, self.tmp))
        self._wait(lambda: self._node_ready(self.node), 300, "the runtime node to be listed by /readyz")
        self.ready_s = time.perf_counter() - started

    def _start_node(self, name, log_name):
        self.procs.append(Proc(log_name, [sys.executable, "-m", "celery", "-A", "gpu_runtime.celery_app", "worker",
                                          "--pool", "threads", "--concurrency", str(self.max_batch + 8), "--loglevel",
                                          "INFO", "--hostname", f"{name}@%h"],
                               {**self.env, "VAJRA_NODE_NAME": name, "VAJRA_MAX_BATCH": str(self.max_batch),
                                **self.node_env}, self.tmp))
        self.nodes.append(name)

    def add_node(self, suffix):
        """Another runtime node (same model, same settings) on its own queue, waited for until /readyz lists it."""
        name = f"{self.node}-{suffix}"
        self._start_node(name, f"runtime-{suffix}")
        self._wait(lambda: self._node_ready(name), 300, f"runtime node {name} to be listed by /readyz")
        return name

    def node_log(self, name):
        return next(p for p in self.procs if p.name == ("runtime" if name == self.node else
                                                         f"runtime-{name[len(self.node) + 1:]}")).log_path

    def _node_ready(self, name):
        import httpx

        try:
            body = httpx.get(f"{self.url}/readyz", timeout=2).json()
        except (httpx.HTTPError, ValueError):
            return False
        return any(n["name"] == name and n["model_loaded"] for n in body.get("runtime", {}).get("nodes", []))

    def _wait(self, predicate, timeout, what):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for proc in self.procs:
                if proc.popen.poll() is not None:
                    raise RuntimeError(f"{proc.name} exited {proc.popen.returncode} while waiting for {what}:\n"
                                       f"{proc.tail()}")
            if predicate():
                return
            time.sleep(0.25)
        raise RuntimeError(f"timed out after {timeout} s waiting for {what}:\n"
                           + "\n".join(f"--- {p.name}\n{p.tail(1500)}" for p in self.procs))

    def stop(self):
        for proc in reversed(self.procs):
            proc.stop()
        if self.redis is not None and self.redis.poll() is None:
            self.redis.terminate()
            try:
                self.redis.wait(10)
            except subprocess.TimeoutExpired:
                self.redis.kill()
                self.redis.wait()


CREATE_KEY = """
from billing.models import PricePlan
from tenants.models import APIKey, Membership, Tenant, User
from tenants.roles import OWNER, SCOPES
tenant = Tenant.objects.create(name="Bench", slug="bench")
user = User.objects.create_user(email="bench@vajra.local", password="bench-password-never-used")
Membership.objects.create(user=user, tenant=tenant, role=OWNER)
PricePlan.objects.filter(name="standard").update(max_concurrent_requests=256)  # the quota is the plan's
_, secret = APIKey.objects.create_key(name="bench", tenant=tenant, created_by=user, scopes=list(SCOPES))
print("SECRET=" + secret)
"""
