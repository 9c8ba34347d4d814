"""Real processes against the test database and Redis: daphne, runtime nodes, the control worker.

The processes share the test database because the tests using these fixtures commit their data
(``transactional_db``) and the subprocesses get DATABASE_URL pointing at the test database.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from django.db import connection

ROOT = Path(__file__).resolve().parent.parent.parent


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_database_url():
    cfg = connection.settings_dict
    if cfg["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{cfg['NAME']}"
    auth = cfg["USER"] + (f":{cfg['PASSWORD']}" if cfg["PASSWORD"] else "")
    return f"postgres://{auth}@{cfg['HOST'] or '127.0.0.1'}:{cfg['PORT'] or 5432}/{cfg['NAME']}"


def process_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.update(DATABASE_URL=test_database_url(), PYTHONUNBUFFERED="1")
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


def start_daphne(tmp_path, **env):
    """The real ASGI server on a free port, up; returns (Proc, base URL). ``env``: extra environment."""
    port = free_port()
    proc = Proc([sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "vajra.asgi:application"],
                tmp_path / "daphne.log", process_env(**env))

    def up():
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(up, 60, "daphne to answer /healthz", proc)
    return proc, f"http://127.0.0.1:{port}"


@pytest.fixture
def daphne(transactional_db, tmp_path):
    """The real ASGI server on a free port; yields its base URL."""
    proc, url = start_daphne(tmp_path)
    yield url
    proc.stop()


@pytest.fixture(scope="session")
def base_model_store():
    """The real SmolLM2 imported into var/models (once; later runs reuse it, as make up does)."""
    store = ROOT / "var" / "models"
    subprocess.run([sys.executable, "-m", "gpu_runtime.model_store", "import"], cwd=ROOT, check=True,
                   env={**os.environ, "VAJRA_MODEL_STORE": str(store)}, stdout=subprocess.DEVNULL, timeout=600)
    return store


def start_control_worker(tmp_path, name="control", *, beat=False, **env):
    """The control worker (``beat``: with beat inside it, its schedule file in ``tmp_path``)."""
    argv = [sys.executable, "-m", "celery", "-A", "vajra", "worker", "--queues", "control", "--pool", "threads",
            "--concurrency", "2", "--loglevel", "INFO", "--hostname", f"{name}-{os.getpid()}@%h"]
    if beat:
        argv += ["--beat", "--schedule", str(tmp_path / f"{name}-beat-schedule")]
    return Proc(argv, tmp_path / f"{name}.log", process_env(**env))


@pytest.fixture
def control_worker(transactional_db, tmp_path):
    proc = start_control_worker(tmp_path)
    yield proc
    proc.stop()


def start_runtime_node(store, tmp_path, concurrency=2, **env):
    """A real runtime node with the real base model, on its own queue (``proc.name``)."""
    name = f"test-{os.getpid()}"
    proc = Proc([sys.executable, "-m", "celery", "-A", "gpu_runtime.worker", "worker", "--pool", "threads",
                 "--concurrency", str(concurrency), "--loglevel", "INFO", "--hostname", f"{name}@%h"],
                tmp_path / "runtime.log",
                process_env(VAJRA_NODE_NAME=name, VAJRA_MODEL_STORE=str(store), VAJRA_HEARTBEAT_SECONDS="1", **env))
    proc.name = name
    return proc


@pytest.fixture
def runtime_node(base_model_store, tmp_path):
    """A real runtime node with the real base model, on its own queue."""
    proc = start_runtime_node(base_model_store, tmp_path)
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def adapter_zip(base_model_store, tmp_path_factory):
    """A real PEFT LoRA (r=8 on q_proj, v_proj) for SmolLM2, zipped inside one folder as people upload it."""
    import io
    import zipfile

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_model_store / "smollm2-135m-instruct" / "float32")
    torch.manual_seed(7)
    peft = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                           init_lora_weights=False))
    path = tmp_path_factory.mktemp("upload") / "adapter"
    peft.save_pretrained(path)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for f in path.iterdir():
            archive.write(f, f"my-adapter/{f.name}")
    return buffer.getvalue()
