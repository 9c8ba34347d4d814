"""``make up``: prepare everything, then run the whole platform in the foreground until Ctrl-C.

Steps: migrate, collect static files, import the base model (once), create the demo tenant, start a
private Redis on a unix socket under var/ when REDIS_URL is unset, then web, one runtime node (or one per
name in ``--nodes node-a,node-b``), the control worker and beat from platform/Procfile under honcho. Each runtime
node runs under its own supervisor (vajra/supervisor.py): a node that dies is started again, with a backoff, while
everything else keeps running (honcho alone would stop every process when one exits). Ctrl-C stops every child,
Redis included. A node serves the default base model, or the one named after a colon
(``--nodes node-a:smollm2-135m-instruct,node-b:qwen2-0.5b``): each node serves one base model, and a model other
than the default must be in the model store already (``manage.py import_model``).

The processes run production-like: DEBUG off (``--debug``, ``make up DEBUG=1``, turns it on), with what DEBUG off
needs for a local run over plain HTTP (see ``platform_env``).
"""

import os
import re
import shlex
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.core.management.utils import get_random_secret_key
from honcho.environ import parse_procfile
from honcho.manager import Manager

from gpu_runtime.redis_url import socket_path
from tenants.management.commands.demo_tenant import read_env_file
from vajra.embedded_redis import redis_server_argv
from vajra.settings.env import env_bool

PROCFILE = Path(settings.BASE_DIR) / "platform" / "Procfile"
NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,62}")
MODEL_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


def parse_nodes(spec, default_model):
    """``node-a,node-b:qwen2-0.5b`` -> [("node-a", default_model), ("node-b", "qwen2-0.5b")]; CommandError for
    a bad or repeated node name or a bad model name."""
    nodes = []
    for item in (i.strip() for i in spec.split(",")):
        if not item:
            continue
        name, _, model = item.partition(":")
        nodes.append((name.strip(), model.strip() or default_model))
    names = [n for n, _ in nodes]
    if (any(not NODE_NAME.fullmatch(n) for n in names) or len(set(names)) != len(names)
            or any(not MODEL_NAME.fullmatch(m) for _, m in nodes)):
        raise CommandError(f"--nodes: give distinct names of letters, digits and dashes, each with an optional "
                           f":base-model (got {spec!r}).")
    return nodes


def port_free(host, port):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


LOCAL_HOSTS = ["127.0.0.1", "localhost", "[::1]"]
WILDCARD_HOSTS = {"0.0.0.0", "::", ""}


def local_secret_key(var):
    """This checkout's own secret key, made once and kept in var/ (mode 0600), so sessions outlive a restart."""
    path = Path(var) / "secret_key"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(get_random_secret_key())
    return path.read_text().strip()


def platform_env(*, debug, host, var):
    """The Django settings web, control and beat run with. DEBUG off unless asked for; then what it needs for a
    local run over plain HTTP: a secret key of this checkout's own, no HTTPS-only cookies, redirect or HSTS, and
    the host names the server is reached by. Whatever the operator set in the environment wins."""
    if debug:
        return {"DJANGO_DEBUG": "true"}
    hosts = list(LOCAL_HOSTS)
    if host in WILDCARD_HOSTS:  # reached from other machines by this one's name
        hosts.append(socket.gethostname())
    elif host not in hosts:
        hosts.append(f"[{host}]" if ":" in host else host)
    defaults = {"DJANGO_SECRET_KEY": lambda: local_secret_key(var), "DJANGO_HTTPS": lambda: "false",
                "DJANGO_ALLOWED_HOSTS": lambda: ",".join(hosts)}
    env = {name: make() for name, make in defaults.items() if not os.environ.get(name, "").strip()}
    return {"DJANGO_DEBUG": "false", **env}


def node_threads(count):
    """VAJRA_TORCH_THREADS for each of ``count`` runtime nodes started on this machine: its cores split between
    them (each node's torch would otherwise start one thread per core, and two nodes on a CPU would fight over every
    core); an operator's own VAJRA_TORCH_THREADS is kept."""
    return os.environ.get("VAJRA_TORCH_THREADS") or str(max(1, (os.cpu_count() or 1) // count))


def supervised(node, command, var):
    """The Procfile's runtime command under a supervisor that starts it again when it dies (vajra/supervisor.py); the
    node process's pid is kept in var/run/runtime-<node>.pid."""
    pid_file = shlex.quote(str(Path(var) / "run" / f"runtime-{node}.pid"))
    return f"{shlex.quote(sys.executable)} -m vajra.supervisor --name {node} --pid-file {pid_file} -- {command}"


class Command(BaseCommand):
    help = "Prepare and start the whole platform (web, runtime node(s), control worker, beat)."

    def add_arguments(self, parser):
        parser.add_argument("--host", default=os.environ.get("VAJRA_HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(os.environ.get("VAJRA_PORT", "8000")))
        parser.add_argument("--node", default=os.environ.get("VAJRA_NODE_NAME", "local"))
        parser.add_argument("--nodes", default=os.environ.get("VAJRA_NODES", ""),
                            help="comma-separated runtime node names, one process each, each with an optional "
                                 "base model (e.g. node-a,node-b:qwen2-0.5b)")
        parser.add_argument("--prepare-only", action="store_true", help="set up, start nothing")
        parser.add_argument("--debug", action="store_true", default=env_bool("DJANGO_DEBUG", False),
                            help="run with Django's DEBUG on (debug error pages); off unless this or DJANGO_DEBUG=true")

    def handle(self, *args, host, port, node, nodes, prepare_only, debug, **options):
        url = f"http://{host}:{port}"
        if not prepare_only and not port_free(host, port):
            raise CommandError(f"{host}:{port} is in use (another `make up`?). Stop it or set VAJRA_PORT.")
        var = Path(settings.VAR_DIR)
        (var / "run").mkdir(parents=True, exist_ok=True)
        self.step("migrate", lambda: call_command("migrate", interactive=False, verbosity=0))
        self.step("collect static files", lambda: call_command("collectstatic", interactive=False, verbosity=0))
        # The model import loads torch: it runs in its own process, the web side never imports torch.
        self.step("import base model", lambda: subprocess.run(
            [sys.executable, "-m", "gpu_runtime.model_store", "import"], check=True, stdout=subprocess.DEVNULL))
        self.step("demo tenant", lambda: call_command("demo_tenant", url=url, verbosity=0))
        if prepare_only:
            return
        names = parse_nodes(nodes or node, settings.VAJRA_DEFAULT_BASE_MODEL)
        store = Path(settings.VAJRA_MODEL_STORE)
        missing = sorted({m for _, m in names if not (store / m / "manifest.json").is_file()})
        if missing:
            raise CommandError(f"base model(s) {', '.join(missing)} not in {store}; import each first: "
                               "manage.py import_model SOURCE --name NAME")
        self.run_platform(url, host, port, names, var, platform_env(debug=debug, host=host, var=var))

    def step(self, name, action):
        started = time.monotonic()
        self.stdout.write(f"==> {name} ...", ending="")
        self.stdout.flush()
        try:
            action()
        except subprocess.CalledProcessError as exc:
            raise CommandError(f"{name} failed (exit {exc.returncode})") from None
        self.stdout.write(f" {time.monotonic() - started:.1f} s")

    def run_platform(self, url, host, port, nodes, var, django_env):
        env = dict(os.environ, **django_env, PYTHONUNBUFFERED="1", VAJRA_HOST=host, VAJRA_PORT=str(port),
                   VAJRA_NODE_NAME=nodes[0][0], REDIS_URL=settings.REDIS_URL,
                   PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
        manager = Manager()
        sock = socket_path(settings.REDIS_URL)
        if not os.environ.get("REDIS_URL") and sock:
            argv = [shlex.quote(arg) for arg in redis_server_argv(sock, var / "run")]
            manager.add_process("redis", " ".join(argv), env=env)
        metrics_port = int(os.environ.get("VAJRA_METRICS_PORT", "9108"))
        for name, command in parse_procfile(PROCFILE.read_text()).processes.items():
            if name != "runtime":
                manager.add_process(name, command, env=env, cwd=str(settings.BASE_DIR))
            elif len(nodes) == 1:
                manager.add_process(name, supervised(nodes[0][0], command, var), cwd=str(settings.BASE_DIR),
                                    env={**env, "VAJRA_BASE_MODEL": nodes[0][1]})
            else:
                threads = node_threads(len(nodes))
                for i, (node, model) in enumerate(nodes):  # one runtime process per node, on its own queue and port
                    port_of_node = str(metrics_port + i if metrics_port else 0)
                    manager.add_process(f"runtime-{node}", supervised(node, command, var), cwd=str(settings.BASE_DIR),
                                        env={**env, "VAJRA_NODE_NAME": node, "VAJRA_BASE_MODEL": model,
                                             "VAJRA_METRICS_PORT": port_of_node, "VAJRA_TORCH_THREADS": threads})
        debug = django_env["DJANGO_DEBUG"] == "true"
        threading.Thread(target=self.announce, args=(url, var, debug), daemon=True).start()
        manager.loop()
        sys.exit(manager.returncode or 0)

    def announce(self, url, var, debug):
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=2):
                    break
            except OSError:
                time.sleep(0.5)
        else:
            self.stderr.write(f"web did not answer at {url}/healthz within 120 s")
            return
        demo = read_env_file(var / "demo.env")
        key = demo.get("VAJRA_API_KEY", "")
        self.stdout.write(self.style.SUCCESS(
            "\n"
            f"  VAJRA is up at {url}/\n"
            f"  login:    {demo.get('VAJRA_LOGIN')} / {demo.get('VAJRA_PASSWORD')}\n"
            f"  API key:  {key}\n"
            f"  (also in {var / 'demo.env'}; source it with: set -a; . {var / 'demo.env'}; set +a)\n"
            f"  try:      curl -H \"Authorization: Bearer {key}\" {url}/api/v1/me\n"
            f"  API docs: {url}/api/docs/     stop: Ctrl-C\n"
            f"  DEBUG:    {'on' if debug else 'off (make up DEBUG=1 turns it on)'}\n"
        ))
