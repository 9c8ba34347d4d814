"""The README's kill-a-node walkthrough under ``make up NODES=node-a,node-b``, for real: the runtime process of the
node answering a stream is killed (SIGKILL) mid-answer; the stream gets ``retry`` and the whole answer from the
other node, the request is billed once, web, control, beat and the other node keep running, and the killed node is
started again by its supervisor, rejoins and gets work."""

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading

import httpx
import pytest

from tests.processes import ROOT, Up, alive, free_port, read_env, sse_events, wait_for

pytestmark = pytest.mark.slow
MODEL = "smollm2-135m-instruct"
BODY = {"prompt": "Once upon a time, in a small village by the sea, there lived", "stream": True,
        "parameters": {"temperature": 0, "max_tokens": 48}}
NODES = ("node-a", "node-b")

# A second tenant with a key, made in the platform's own database: a tenant with no history on either node.
SECOND_TENANT = """
from tenants.models import APIKey, Membership, Tenant, User
tenant = Tenant.objects.create(slug="second", name="Second")
user = User.objects.create_user(email="second@vajra.local", password="not-used-here-1234", name="Second")
Membership.objects.create(tenant=tenant, user=user, role="owner")
print(APIKey.objects.create_key(name="second", tenant=tenant, created_by=user, scopes=["infer"])[1])
"""


def query(var_dir, sql, *args):
    with sqlite3.connect(var_dir / "db.sqlite3", timeout=30) as db:
        return db.execute(sql, args).fetchall()


def node_row(var_dir, name):
    rows = query(var_dir, "SELECT status, started_at, state FROM inference_node WHERE name = ?", name)
    if not rows:
        return None
    status, started_at, state = rows[0]
    return {"status": status, "started_at": started_at, "model_loaded": json.loads(state).get("model_loaded")}


def runtime_pid(var_dir, node):
    path = var_dir / "run" / f"runtime-{node}.pid"
    return int(path.read_text()) if path.exists() and path.read_text().strip() else None


def test_a_runtime_killed_mid_answer_under_make_up_is_restarted_and_rejoins(tmp_path):
    var_dir = tmp_path / "var"
    port = free_port()
    up = Up(var_dir, port, tmp_path / "up.log", ["--nodes", ",".join(NODES)])
    try:
        wait_for(lambda: "VAJRA is up at" in up.output(), 240, "make up to print its banner", up)
        url, key = f"http://127.0.0.1:{port}", read_env(var_dir / "demo.env")["VAJRA_API_KEY"]
        for node in NODES:
            wait_for(lambda node=node: (row := node_row(var_dir, node)) and row["status"] == "up"
                     and row["model_loaded"], 240, f"{node} to load its base model", up)
        pids = {node: runtime_pid(var_dir, node) for node in NODES}
        others = [int(pid) for name, pid in re.findall(r"(\S+) started \(pid=(\d+)\)", up.output())
                  if not name.startswith("runtime")]  # redis, web, control, beat under honcho
        assert len(others) == 4 and all(pids.values()), up.output()[-2000:]

        client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=240)
        events, first_delta = [], threading.Event()

        def read():
            with client.stream("POST", f"/v1/models/{MODEL}/infer", json=BODY) as response:
                assert response.status_code == 200, response.read()
                for event in sse_events(response):
                    events.append(event)
                    if event["event"] == "delta":
                        first_delta.set()

        reader = threading.Thread(target=read)
        reader.start()
        assert first_delta.wait(180), "no token streamed"
        request_id = json.loads(events[0]["data"])["id"]
        answering = client.get(f"/v1/requests/{request_id}").json()["node"]
        other = next(node for node in NODES if node != answering)
        killed, before = pids[answering], node_row(var_dir, answering)["started_at"]
        os.kill(killed, signal.SIGKILL)  # the node's own process, as `kill -9 $(cat var/run/runtime-<node>.pid)`

        reader.join(240)
        assert not reader.is_alive()
        kinds = [e["event"] for e in events]
        assert kinds[0] == "request" and kinds[-1] == "done" and kinds.count("retry") == 1, kinds
        retry = json.loads(events[kinds.index("retry")]["data"])
        assert retry["node"] == other and answering in retry["reason"]
        done = json.loads(events[-1]["data"])
        assert done["finish_reason"] in ("stop", "length") and not done.get("error")
        after = "".join(json.loads(e["data"])["text"] for e in events[kinds.index("retry"):] if e["event"] == "delta")
        assert after.strip(), "the other node answered"

        def billed():
            return query(var_dir, "SELECT count(*) FROM billing_usageevent WHERE request_id = ? AND kind = ?",
                         request_id, "inference")[0][0]
        wait_for(billed, 60, "the retried request to be billed", up)
        assert billed() == 1
        assert client.get(f"/v1/requests/{request_id}").json()["node"] == other

        # Everything else kept running; the supervisor started the killed node again under its name.
        assert up.popen.poll() is None and all(alive(pid) for pid in others) and alive(pids[other])
        restarted = wait_for(lambda: (pid := runtime_pid(var_dir, answering)) and pid != killed and pid, 60,
                             f"{answering} to be started again", up)
        assert f"supervisor {answering}: pid {killed} ended (signal 9)" in up.output()
        wait_for(lambda: (row := node_row(var_dir, answering)) and row["status"] == "up" and row["model_loaded"]
                 and row["started_at"] > before, 240, f"{answering} to rejoin", up)
        assert alive(restarted)

        # It gets work: a tenant with no affinity to either node ties to the rejoined one, or spreads to it.
        made = subprocess.run([sys.executable, "manage.py", "shell", "-c", SECOND_TENANT], cwd=ROOT, check=True,
                              capture_output=True, text=True, env={**up.env, "DJANGO_DEBUG": "true"})
        second = made.stdout.split()[-1]  # the key, after what the shell prints of itself
        second_client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {second}"}, timeout=240)
        served = set()
        for _ in range(4):
            answer = second_client.post(f"/v1/models/{MODEL}/infer", json={**BODY, "stream": False})
            assert answer.status_code == 200, answer.text
            served.add(second_client.get(f"/v1/requests/{answer.json()['id']}").json()["node"])
            if answering in served:
                break
        assert answering in served, served
    finally:
        up.ctrl_c()
    assert not [pid for pid in [*others, restarted, pids[other]] if alive(pid)], "Ctrl-C left children running"
