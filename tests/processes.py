"""Real processes against the test database and Redis: daphne, runtime nodes, the control worker and beat, each
in its own session with its output in a log file; waiting for what they write; the LoRA zips they serve.

The processes share the test database because the tests using them commit their data (``transactional_db``)
and the subprocesses get DATABASE_URL pointing at the test database. The fixtures are in tests/fixtures/live.py.
"""

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from django.db import connection

ROOT = Path(__file__).resolve().parent.parent
SUMMARY = []  # lines tests report (figures of the load test), printed at the end of the run


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shared_database_url():
    """The URL of the database the tests run on, for processes that must share it."""
    cfg = connection.settings_dict
    if cfg["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{cfg['NAME']}"
    auth = cfg["USER"] + (f":{cfg['PASSWORD']}" if cfg["PASSWORD"] else "")
    return f"postgres://{auth}@{cfg['HOST'] or '127.0.0.1'}:{cfg['PORT'] or 5432}/{cfg['NAME']}"


def process_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.update(DATABASE_URL=shared_database_url(), PYTHONUNBUFFERED="1")
    env.update(extra)  # may point a process at other services (a private Redis or PostgreSQL)
    return env


class Proc:
    """A child process in its own session, its output in a log file, stopped (group and all) at teardown."""

    def __init__(self, argv, log_path, env):
        self.log_path = log_path
        self.log = open(log_path, "wb")
        self.popen = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                      start_new_session=True)

    def output(self):
        return Path(self.log_path).read_text(errors="replace")

    def stop(self, timeout=20):
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
        self.log.close()


def wait_for(predicate, timeout, what, proc=None):
    """Polls ``predicate`` (a database row, a file, an answer) until it gives something true; fails with ``what``
    (and the end of ``proc``'s log) after ``timeout`` seconds or as soon as ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.popen.poll() is not None:
            raise AssertionError(f"{what}: process exited {proc.popen.returncode}\n{proc.output()[-3000:]}")
        result = predicate()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}"
                         + (f"\n{proc.output()[-3000:]}" if proc else ""))


def wait_until_serving(model, proc, timeout=180):
    """Until a node that serves ``model`` is up with a fresh heartbeat (what placement needs to route to it), not
    just until the model's catalog row exists: the row is written before the node's first heartbeat, and a request
    sent between the two is answered 503 (no capacity)."""
    from adapters.models import BaseModel
    from fleet.liveness import nodes_up

    def serving():
        return BaseModel.objects.filter(name=model).exists() and nodes_up().filter(base_model=model).exists()

    return wait_for(serving, timeout, f"a node serving {model} to be up", proc)


def start_daphne(log_path, **env):
    """The real ASGI server on a free port, answering /healthz; returns (Proc, base URL)."""
    port = free_port()
    proc = Proc([sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "vajra.asgi:application"],
                log_path, process_env(**env))

    def up():
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(up, 60, "daphne to answer /healthz", proc)
    except AssertionError:
        proc.stop()
        raise
    return proc, f"http://127.0.0.1:{port}"


def start_control_worker(log_path, concurrency=2, *, beat=False, hostname=None, **env):
    """The control worker (``beat``: with beat inside it, its schedule file beside the log)."""
    argv = [sys.executable, "-m", "celery", "-A", "vajra", "worker", "--queues", "control", "--pool", "threads",
            "--concurrency", str(concurrency), "--loglevel", "INFO",
            "--hostname", hostname or f"control-{os.getpid()}@%h"]
    if beat:
        argv += ["--beat", "--schedule", str(Path(log_path).with_suffix(".beat-schedule"))]
    return Proc(argv, log_path, process_env(**env))


def start_beat(log_path, **env):
    """Celery beat alone: the control plane's periodic tasks (nodes marked down every second, ...)."""
    return Proc([sys.executable, "-m", "celery", "-A", "vajra", "beat", "--loglevel", "INFO",
                 "--schedule", str(Path(log_path).with_suffix(".schedule"))], log_path, process_env(**env))


def start_runtime_node(store, log_path, *, name, base_model="smollm2-135m-instruct", concurrency=2,
                       app="gpu_runtime.celery_app", **env):
    """A real runtime node (``celery -A gpu_runtime.celery_app``, or ``app``: a module wrapping it) serving
    ``base_model`` from ``store``, on its own queue, heartbeating every second, with no metrics port (nodes share
    this machine). In float32 unless told: on a CPU with native bf16 ("auto" picks it) a row's greedy text depends
    on what else is in its batch, and the tests compare answers with a lone request's."""
    env = {"VAJRA_DTYPE": "float32", **env}
    proc = Proc([sys.executable, "-m", "celery", "-A", app, "worker", "--pool", "threads",
                 "--concurrency", str(concurrency), "--loglevel", "INFO", "--hostname", f"{name}@%h"], log_path,
                process_env(VAJRA_NODE_NAME=name, VAJRA_MODEL_STORE=str(store), VAJRA_BASE_MODEL=base_model,
                            VAJRA_HEARTBEAT_SECONDS="1", VAJRA_METRICS_PORT="0", **env))
    proc.name = name
    return proc


def lora_zip(model_dir, tmp_dir):
    """A real PEFT LoRA (r=8 on q_proj, v_proj) for the model in ``model_dir``, zipped inside one folder as
    people upload it."""
    import io
    import zipfile

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir)
    torch.manual_seed(7)
    peft = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                           init_lora_weights=False))
    path = Path(tmp_dir) / "adapter"
    peft.save_pretrained(path)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for f in path.iterdir():
            archive.write(f, f"my-adapter/{f.name}")
    return buffer.getvalue()


def sse_events(response):
    """The server-sent events of an httpx streaming response, each a dict of its fields (event, id, data)."""
    event = {}
    for line in response.iter_lines():
        if not line:
            if event:
                yield event
            event = {}
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(": ")
            event[field] = value


class Up:
    """``manage.py up`` (the README's first command) as a person runs it: the embedded defaults (no DATABASE_URL or
    REDIS_URL), its own var/ dir and port, SmolLM2 from the shared model store; Ctrl-C is ``ctrl_c``."""

    def __init__(self, var_dir, port, log_path, args=()):
        env = {k: v for k, v in os.environ.items()
               if k not in {"DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE"} and not k.startswith("PYTEST")}
        env.update(VAJRA_VAR_DIR=str(var_dir), VAJRA_MODEL_STORE=str(ROOT / "var" / "models"),
                   VAJRA_PORT=str(port), VAJRA_HEARTBEAT_SECONDS="1", PYTHONUNBUFFERED="1")
        self.log_path, self.env = log_path, env
        self.log = open(log_path, "wb")
        self.popen = subprocess.Popen([sys.executable, "manage.py", "up", *args], cwd=ROOT, env=env, stdout=self.log,
                                      stderr=subprocess.STDOUT, start_new_session=True)

    def output(self):
        return Path(self.log_path).read_text(errors="replace")

    def child_pids(self):
        return [int(pid) for pid in re.findall(r"started \(pid=(\d+)\)", self.output())]

    def ctrl_c(self):
        os.kill(self.popen.pid, signal.SIGINT)  # what the terminal sends the foreground process
        self.popen.wait(60)
        self.log.close()


def alive(pid):
    """Whether process ``pid`` still runs (a zombie does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); it has exited all the same
    status = Path(f"/proc/{pid}/stat").read_text().split()[2] if Path(f"/proc/{pid}/stat").exists() else "X"
    return status != "Z"


def read_env(path):
    """The variables of an env file (var/demo.env) as a dict."""
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line and line[0] != "#")
