"""Broker and database restarts under traffic, with real processes: daphne, a runtime node on tiny-llama (no test
here reads the text's meaning), the control worker with beat.

Clients stream (SSE) and ask plain requests in a loop while Redis is SIGKILLed and started again empty (its own
private server, --save "") or while a private PostgreSQL cluster is stopped and started. Then: every client's
request ended cleanly (an answer, or a typed error: never a hang, a broken stream or a 500), requests succeed
again with no process restarted, every request row is terminal, and the ledger bills exactly the requests the
billing policy bills, each once; a client that got an answer was billed for it.

The machine's own PostgreSQL and Redis are shared: these tests never touch them.
"""

import contextlib
import glob
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psycopg
import pytest
import redis

from gpu_runtime.model_store import TINY_MODEL
from tests.factories import create_key
from tests.processes import (
    ROOT,
    free_port,
    process_env,
    shared_database_url,
    sse_events,
    start_control_worker,
    start_daphne,
    start_runtime_node,
    wait_for,
)
from vajra.embedded_redis import redis_server_binary

pytestmark = pytest.mark.slow
MODEL = TINY_MODEL
# VAJRA_REQUEST_TIMEOUT_SECONDS of the platform under test: well past a request's time on a loaded 2-core box
# (tiny-llama's 8 or 96 tokens take well under a second; queues and reconnects after a restart add seconds), so that
# only requests a restart lost are expired. The rows of those requests end when it expires them.
TIMEOUT_S = 45
# The typed errors a client may get while a service restarts; anything else is a failure. no_capacity (503): a
# node whose heartbeats the outage kept from the database is down until its next beat after it.
RESTART_ERRORS = {"redis_unavailable", "stream_interrupted", "node_timeout", "database_unavailable",
                  "broker_unavailable", "no_capacity"}
ANSWERED = {"stop", "length"}


class PrivateRedis:
    """A redis-server of the test's own on a TCP port it owns, without persistence: a restart loses everything."""

    def __init__(self, directory):
        self.port, self.dir = free_port(), directory
        self.url = f"redis://127.0.0.1:{self.port}/0"
        directory.mkdir(parents=True, exist_ok=True)
        self.start()

    def ping(self):
        try:
            return redis.Redis.from_url(self.url, socket_timeout=1).ping()
        except redis.RedisError:
            return False

    def start(self):
        self.proc = subprocess.Popen([redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
                                      "--save", "", "--appendonly", "no", "--dir", str(self.dir)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_for(self.ping, 10, "the private Redis to answer")

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


class PrivatePostgres:
    """A PostgreSQL cluster of the test's own (initdb in a temp dir, trust auth, a free port)."""

    def __init__(self, bindir):
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="vajra-pg-"))
        self.data = self.root / "data"
        self.data.mkdir()
        self.as_user = []
        if os.geteuid() == 0:  # initdb refuses to run as root
            self.root.chmod(0o755)
            shutil.chown(self.data, "postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.port = free_port()
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        self.start()
        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            conn.execute("CREATE DATABASE vajra")
        self.url = f"postgres://postgres@127.0.0.1:{self.port}/vajra"

    def dsn(self, name="vajra"):
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def _run(self, tool, *args):
        subprocess.run(self.as_user + [str(self.bindir / tool), *args], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.STDOUT, timeout=120)

    def start(self):
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.data / "server.log"), "-w", "-o",
                  f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 -c fsync=off", "start")

    def stop(self):
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def destroy(self):
        try:
            self.stop()
        except subprocess.CalledProcessError:
            pass  # already stopped
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def private_postgres():
    initdbs = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not initdbs:
        if os.environ.get("CI"):
            pytest.fail("CI=true but no initdb under /usr/lib/postgresql/*/bin: install the postgresql server")
        pytest.skip("no initdb under /usr/lib/postgresql/*/bin")
    pg = PrivatePostgres(Path(initdbs[-1]).parent)
    yield pg
    pg.destroy()


class Traffic:
    """SSE clients and plain clients asking in a loop until ``finish``; each request's outcome is recorded."""

    def __init__(self, base_url, secret, streams=2, plain=1):
        self.client = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {secret}"},
                                   timeout=httpx.Timeout(TIMEOUT_S + 90))  # past it, a client hangs: a failure
        self.outcomes, self.mid_stream = [], set()
        self.lock, self.stopping = threading.Lock(), threading.Event()
        self.threads = [threading.Thread(target=self._loop, args=(kind, i), daemon=True)
                        for i, kind in enumerate(["stream"] * streams + ["plain"] * plain)]
        for thread in self.threads:
            thread.start()

    def _body(self, i, n, stream):
        # A stream takes its 96 tokens (min_tokens: no early end), so that an outage begun once one is mid-way
        # lands while it is still at the node and its final meets the outage (8 tokens could end before it began).
        tokens = {"max_tokens": 96, "min_tokens": 96} if stream else {"max_tokens": 8}
        return {"prompt": f"Name {2 + n % 3} colours, then {2 + i % 3} animals:", "stream": stream,
                "parameters": {"temperature": 0, **tokens}}

    def _loop(self, kind, i):
        n = 0
        while not self.stopping.is_set():
            started = time.monotonic()
            try:
                outcome = self._stream(i, n) if kind == "stream" else self._plain(i, n)
            except Exception as exc:  # a timeout (a hang), a broken connection, a body that is no JSON
                outcome = {"clean": False, "ok": False, "why": repr(exc)}
            finally:
                self.mid_stream.discard(i)
            outcome.update(kind=kind, started=started, ended=time.monotonic())
            with self.lock:
                self.outcomes.append(outcome)
            if outcome.get("status") == 503:
                time.sleep(0.5)
            n += 1

    @staticmethod
    def _refusal(status, data, allowed):
        error = data.get("error") or {}
        return {"clean": status in allowed and error.get("code") in RESTART_ERRORS, "ok": False, "status": status,
                "code": error.get("code"), "id": data.get("id"), "why": json.dumps(data)[:300]}

    def _plain(self, i, n):
        response = self.client.post(f"/v1/models/{MODEL}/infer", json=self._body(i, n, False))
        data = response.json()
        if response.status_code == 200 and data.get("finish_reason") in ANSWERED:
            return {"clean": True, "ok": True, "id": data["id"], "text": data["text"], "status": 200,
                    "completion_tokens": data["usage"]["completion_tokens"]}
        return self._refusal(response.status_code, data, {502, 503})

    def _stream(self, i, n):
        with self.client.stream("POST", f"/v1/models/{MODEL}/infer", json=self._body(i, n, True)) as response:
            if response.status_code != 200:
                response.read()
                return self._refusal(response.status_code, response.json(), {503})
            events, text = [], []
            for event in sse_events(response):
                events.append(event)
                if event.get("event") == "delta":
                    text.append(json.loads(event["data"])["text"])
                    if len(text) >= 2:
                        self.mid_stream.add(i)
                elif event.get("event") == "done":
                    break
        if not events or events[-1].get("event") != "done":
            return {"clean": False, "ok": False, "why": f"the stream ended without its done event: {events[-3:]}"}
        done = json.loads(events[-1]["data"])
        if done["finish_reason"] in ANSWERED:
            return {"clean": True, "ok": True, "id": done["id"], "text": "".join(text), "status": 200,
                    "completion_tokens": done["usage"]["completion_tokens"]}
        return self._refusal(200, done, {200})

    def ok_started_after(self, moment):
        with self.lock:
            return sum(1 for o in self.outcomes if o["ok"] and o["started"] > moment)

    def finish(self):
        self.stopping.set()
        for thread in self.threads:
            thread.join(TIMEOUT_S + 120)
            assert not thread.is_alive(), "a client never got an end to its request"
        self.client.close()
        return list(self.outcomes)


@contextlib.contextmanager
def database(url):
    """A DB-API connection to the platform's database, SQLite (the embedded default) or PostgreSQL, with its
    parameter placeholder."""
    if url.startswith("sqlite:///"):
        conn = sqlite3.connect(url[len("sqlite:///"):], timeout=30)
        try:
            yield conn, "?"
        finally:
            conn.close()
    else:
        with psycopg.connect(url) as conn:
            yield conn, "%s"


def rows_and_ledger(dsn):
    with database(dsn) as (conn, _):
        rows = {r[0]: {"status": r[1], "gpu_ms": r[2], "completion_tokens": r[3], "error_code": r[4]}
                for r in conn.execute("SELECT id, status, gpu_ms, completion_tokens, error_code "
                                      "FROM inference_inferencerequest")}
        ledger = [r[0] for r in conn.execute("SELECT request_id FROM billing_usageevent WHERE kind = 'inference'")]
    return rows, ledger


def active_rows(dsn):
    with database(dsn) as (conn, _):
        return conn.execute("SELECT count(*) FROM inference_inferencerequest "
                            "WHERE status IN ('queued', 'running')").fetchone()[0]


def billed_by_policy(row):
    """billing/ledger.py's policy: succeeded always; cancelled when the node worked; failed for its GPU time."""
    worked = (row["gpu_ms"] or 0) > 0
    return (row["status"] == "succeeded" or (row["status"] == "cancelled" and (worked or row["completion_tokens"]))
            or (row["status"] == "failed" and worked))


def check_outcomes_and_ledger(outcomes, dsn, *, restarted_at, back_at):
    unclean = [o for o in outcomes if not o["clean"]]
    assert not unclean, f"requests that did not end cleanly: {unclean[:5]}"
    in_flight = [o for o in outcomes if o["started"] < restarted_at < o["ended"]]
    assert in_flight, "no request was in flight at the restart: nothing was tested"
    after = [o for o in outcomes if o["started"] > back_at + 5]
    assert len(after) >= 2 and all(o["ok"] for o in after), \
        f"requests after the restart did not all succeed: {[o for o in after if not o['ok']][:5]}"

    wait_for(lambda: active_rows(dsn) == 0, TIMEOUT_S + 60, "every request row to reach a terminal state")
    time.sleep(3)  # a late duplicate (a final reported again) would land now
    rows, ledger = rows_and_ledger(dsn)
    assert len(ledger) == len(set(ledger)), "a request was billed twice"
    assert set(ledger) == {rid for rid, row in rows.items() if billed_by_policy(row)}
    answered = [o for o in outcomes if o["ok"]]
    for outcome in answered:  # a client that got an answer: its row says so, with the tokens it got, billed once
        row = rows[outcome["id"]]
        assert row["status"] == "succeeded" and row["completion_tokens"] == outcome["completion_tokens"], (outcome, row)
        assert outcome["text"]
    return {"requests": len(outcomes), "answered": len(answered), "in_flight": len(in_flight),
            "errors": sorted({o["code"] for o in outcomes if not o["ok"]}), "rows": len(rows), "billed": len(ledger),
            "expired": sum(1 for row in rows.values() if row["error_code"] == "node_timeout")}


def start_platform(tmp_path, store, **env):
    env = {"VAJRA_REQUEST_TIMEOUT_SECONDS": str(TIMEOUT_S), "VAJRA_REQUEST_SWEEP_SECONDS": "3", **env}
    # concurrency 4: every client's request runs at once
    node = start_runtime_node(store, tmp_path / "runtime.log", name=f"test-{os.getpid()}", base_model=MODEL,
                              concurrency=4, **env)
    control = start_control_worker(tmp_path / "control.log", beat=True, **env)
    web, url = start_daphne(tmp_path / "daphne.log", **env)
    return [node, control, web], url


def node_serving(dsn):
    with database(dsn) as (conn, param):
        return conn.execute("SELECT count(*) FROM inference_node n JOIN inference_basemodel b "
                            f"ON b.name = {param} WHERE n.status = 'up'", [MODEL]).fetchone()[0] > 0


def test_redis_restart_under_traffic(transactional_db, tiny_model_store, alice, acme, tmp_path):
    broker = PrivateRedis(tmp_path / "redis")
    procs = []
    try:
        procs, url = start_platform(tmp_path, tiny_model_store, REDIS_URL=broker.url)
        dsn = shared_database_url()
        wait_for(lambda: node_serving(dsn), 240, "the node to register its base model", procs[0])
        _, secret = create_key(alice, acme)
        traffic = Traffic(url, secret)
        wait_for(lambda: traffic.ok_started_after(0) >= 2 and traffic.mid_stream, 300,
                 "answers, and a stream in the middle of one", procs[0])
        restarted_at = time.monotonic()
        broker.kill()
        time.sleep(2)
        broker.start()  # the same address, nothing in it: queues, streams and unacked messages are gone
        back_at = time.monotonic()
        wait_for(lambda: traffic.ok_started_after(back_at + 5) >= 2, 400, "requests to succeed after the restart")
        outcomes = traffic.finish()
        summary = check_outcomes_and_ledger(outcomes, dsn, restarted_at=restarted_at, back_at=back_at)
        print(f"\nRedis restart: {summary}")
        for proc in procs:
            assert proc.popen.poll() is None, f"a process died:\n{proc.output()[-3000:]}"
    finally:
        for proc in procs:
            proc.stop()
        broker.stop()


SETUP = """
from tenants.models import APIKey, Membership, Tenant, User
from tenants.roles import OWNER, SCOPES
tenant = Tenant.objects.create(name="Acme", slug="acme")
user = User.objects.create_user(email="alice@acme.test", password="correct horse battery staple")
Membership.objects.create(user=user, tenant=tenant, role=OWNER)
_, secret = APIKey.objects.create_key(name="restart", tenant=tenant, created_by=user, scopes=list(SCOPES))
print("SECRET=" + secret)
"""


def test_postgres_restart_under_traffic(private_postgres, tiny_model_store, tmp_path):
    pg = private_postgres
    broker = PrivateRedis(tmp_path / "redis")
    env = process_env(DATABASE_URL=pg.url, REDIS_URL=broker.url)
    manage = [sys.executable, "manage.py"]
    subprocess.run(manage + ["migrate", "--noinput"], cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL,
                   timeout=600)
    out = subprocess.run(manage + ["shell", "-c", SETUP], cwd=ROOT, env=env, check=True, capture_output=True,
                         text=True, timeout=120).stdout
    secret = next(line[len("SECRET="):] for line in out.splitlines() if line.startswith("SECRET="))
    procs = []
    try:
        procs, url = start_platform(tmp_path, tiny_model_store, DATABASE_URL=pg.url, REDIS_URL=broker.url)
        node, control = procs[0], procs[1]
        wait_for(lambda: node_serving(pg.dsn()), 240, "the node to register its base model", node)
        traffic = Traffic(url, secret)
        wait_for(lambda: traffic.ok_started_after(0) >= 2 and traffic.mid_stream, 300,
                 "answers, and a stream in the middle of one", node)
        restarted_at = time.monotonic()
        pg.stop()  # fast: every connection of every process is cut
        # down until a node's final event has met the outage (the control worker retries it), 120 s at most
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and "retry: Retry in" not in control.output():
            time.sleep(0.2)
        time.sleep(1)
        pg.start()
        back_at = time.monotonic()
        wait_for(lambda: traffic.ok_started_after(back_at + 5) >= 2, 400, "requests to succeed after the restart")
        outcomes = traffic.finish()
        retried_tasks = {line.split("[", 1)[1].split("]", 1)[0] for line in control.output().splitlines()
                   if "control.inference_finished[" in line and "retry: Retry in" in line}
        assert retried_tasks, "no final event arrived during the outage: nothing was tested"
        summary = check_outcomes_and_ledger(outcomes, pg.dsn(), restarted_at=restarted_at, back_at=back_at)
        print(f"\nPostgreSQL restart: {summary}, finals retried through the outage {len(retried_tasks)}")
        for proc in procs:
            assert proc.popen.poll() is None, f"a process died:\n{proc.output()[-3000:]}"
    finally:
        for proc in procs:
            proc.stop()
        broker.stop()
