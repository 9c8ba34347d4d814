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
SUMMARY = []  # lines tests report (figures of the load test), printed at the end of the run


def pytest_terminal_summary(terminalreporter):
    for line in SUMMARY:
        terminalreporter.write_line(line)


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


def wait_until_serving(model, proc, timeout=180):
    """Until a node that serves ``model`` is up with a fresh heartbeat (what placement needs to route to it), not
    just until the model's catalog row exists: the row is written before the node's first heartbeat, and a request
    sent between the two is answered 503 (no capacity)."""
    from adapters.models import BaseModel
    from fleet.heartbeats import nodes_up

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


@pytest.fixture
def daphne(transactional_db, tmp_path):
    """The real ASGI server on a free port; yields its base URL."""
    proc, url = start_daphne(tmp_path / "daphne.log")
    yield url
    proc.stop()


@pytest.fixture(scope="session")
def base_model_store():
    """The real SmolLM2 imported into var/models (once; later runs reuse it, as make up does)."""
    store = ROOT / "var" / "models"
    subprocess.run([sys.executable, "-m", "gpu_runtime.model_store", "import"], cwd=ROOT, check=True,
                   env={**os.environ, "VAJRA_MODEL_STORE": str(store)}, stdout=subprocess.DEVNULL, timeout=600)
    return store


@pytest.fixture(scope="session")
def tiny_model_store(base_model_store, tmp_path_factory):
    """A store holding tiny-llama: random weights (2 layers, hidden 64) with SmolLM2's tokenizer and chat
    template, in the layout the runtime loads (gpu_runtime.model_store.write_tiny_llama). A node on it loads
    in a fraction of a second and decodes fast, for tests that need real nodes under load."""
    from gpu_runtime.model_store import DEFAULT_MODEL, TINY_MODEL, write_tiny_llama

    store = tmp_path_factory.mktemp("tiny-store")
    write_tiny_llama(store, TINY_MODEL, tokenizer_from=base_model_store / DEFAULT_MODEL / "float32")
    return store


def start_control_worker(log_path, concurrency=2, *, beat=False, **env):
    """The control worker (``beat``: with beat inside it, its schedule file beside the log)."""
    argv = [sys.executable, "-m", "celery", "-A", "vajra", "worker", "--queues", "control", "--pool", "threads",
            "--concurrency", str(concurrency), "--loglevel", "INFO", "--hostname", f"control-{os.getpid()}@%h"]
    if beat:
        argv += ["--beat", "--schedule", str(Path(log_path).with_suffix(".beat-schedule"))]
    return Proc(argv, log_path, process_env(**env))


@pytest.fixture
def control_worker(transactional_db, tmp_path):
    proc = start_control_worker(tmp_path / "control.log")
    yield proc
    proc.stop()


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


@pytest.fixture
def runtime_concurrency():
    """Celery threads of the test runtime node (a test parametrizes it to run more requests at once)."""
    return 2


@pytest.fixture
def runtime_node(base_model_store, tmp_path, runtime_concurrency):
    """A real runtime node with the real base model, on its own queue."""
    proc = start_runtime_node(base_model_store, tmp_path / "runtime.log", name=f"test-{os.getpid()}",
                              concurrency=runtime_concurrency)
    yield proc
    proc.stop()


@pytest.fixture
def beat(transactional_db, tmp_path):
    """Celery beat: the control plane's periodic tasks (nodes marked down every second, ...)."""
    proc = Proc([sys.executable, "-m", "celery", "-A", "vajra", "beat", "--loglevel", "INFO",
                 "--schedule", str(tmp_path / "celerybeat-schedule")], tmp_path / "beat.log", process_env())
    yield proc
    proc.stop()


@pytest.fixture
def tiny_runtime_node(tiny_model_store, tmp_path):
    """A real runtime node serving tiny-llama."""
    proc = start_runtime_node(tiny_model_store, tmp_path / "runtime-tiny.log", name=f"tiny-{os.getpid()}",
                              base_model="tiny-llama")
    yield proc
    proc.stop()


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


@pytest.fixture(scope="session")
def adapter_zip(base_model_store, tmp_path_factory):
    """A real PEFT LoRA (r=8 on q_proj, v_proj) for SmolLM2."""
    return lora_zip(base_model_store / "smollm2-135m-instruct" / "float32", tmp_path_factory.mktemp("upload"))


@pytest.fixture(scope="session")
def tiny_adapter_zip(tiny_model_store, tmp_path_factory):
    """A real PEFT LoRA (r=8 on q_proj, v_proj) for tiny-llama's shapes."""
    return lora_zip(tiny_model_store / "tiny-llama" / "float32", tmp_path_factory.mktemp("tiny-upload"))
