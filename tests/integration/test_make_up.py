"""README's first command, for real: the embedded default (SQLite, private Redis) from an empty var/,
the demo tenant and key, every process up with DEBUG off (styled error pages, static files served by the app),
Ctrl-C stopping every child, and a second start working (with two nodes and DEBUG on)."""

import os
import re
import stat
import time

import httpx
import pytest

from tests.processes import Up, alive, free_port, read_env, wait_for

pytestmark = pytest.mark.slow


def run_once(var_dir, tmp_path, n, nodes=("local",), debug=False):
    port = free_port()
    args = (["--nodes", ",".join(nodes)] if len(nodes) > 1 else []) + (["--debug"] if debug else [])
    up = Up(var_dir, port, tmp_path / f"up-{n}.log", args)
    try:
        wait_for(lambda: "VAJRA is up at" in up.output(), 240, "make up to print its banner", up)
        demo = read_env(var_dir / "demo.env")
        url = f"http://127.0.0.1:{port}"
        assert demo["VAJRA_URL"] == url
        banner = up.output()
        assert demo["VAJRA_API_KEY"] in banner and demo["VAJRA_LOGIN"] in banner and "curl" in banner

        me = httpx.get(f"{url}/api/v1/me", headers={"Authorization": f"Bearer {demo['VAJRA_API_KEY']}"}, timeout=10)
        assert me.status_code == 200 and me.json()["tenant"]["slug"] == "demo"

        def node_reported():
            body = httpx.get(f"{url}/readyz", timeout=10).json()
            return body["status"] == "ready" and body["runtime"]["nodes_up"] == len(nodes) and body
        ready = wait_for(node_reported, 180, "the runtime nodes to report through control", up)
        assert sorted(n["name"] for n in ready["runtime"]["nodes"]) == sorted(nodes)
        if len(nodes) > 1:  # nodes sharing this machine's CPU split its cores (VAJRA_TORCH_THREADS)
            threads = max(1, os.cpu_count() // len(nodes))
            wait_for(lambda: all(re.search(rf"runtime-{node}\S* *\|.*base model .*, {threads} CPU threads:",
                                           up.output()) for node in nodes), 180,
                     f"each node to log its base model loaded on {threads} CPU thread(s)", up)

        login = httpx.Client(base_url=url, follow_redirects=True)
        page = login.get("/login/")
        assert page.status_code == 200
        # production-like unless asked for: the styled 404, not Django's debug page; static files from the app
        assert f"DEBUG:    {'on' if debug else 'off'}" in banner
        missing = httpx.get(f"{url}/no-such-page/", timeout=10)
        assert missing.status_code == 404
        assert ("Using the URLconf" in missing.text) == debug
        if not debug:
            assert "Not found" in missing.text and "/static/vajra/app.css" in missing.text
        css = httpx.get(f"{url}/static/vajra/app.css", timeout=10)
        assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
        pids = up.child_pids()
        assert len(pids) == 4 + len(nodes), up.output()[-2000:]  # redis, web, runtime per node, control, beat
        # each runtime node runs under its supervisor, which keeps the node process's pid in var/run
        pids += [int((var_dir / "run" / f"runtime-{node}.pid").read_text()) for node in nodes]
    finally:
        up.ctrl_c()
    deadline = time.monotonic() + 30
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in pids if alive(pid)], "Ctrl-C left children running"
    return demo


def test_make_up_embedded_default_twice_then_with_two_nodes(tmp_path):
    var_dir = tmp_path / "var"
    first = run_once(var_dir, tmp_path, 1)
    assert stat.S_IMODE((var_dir / "demo.env").stat().st_mode) == 0o600
    assert (var_dir / "db.sqlite3").is_file()  # the embedded default database
    assert not (var_dir / "run" / "redis.sock").exists()  # the private Redis went with Ctrl-C
    # README: two runtime nodes; and `make up DEBUG=1`
    second = run_once(var_dir, tmp_path, 2, nodes=("node-a", "node-b"), debug=True)
    # idempotent demo tenant: same login and key across restarts
    assert (second["VAJRA_API_KEY"], second["VAJRA_PASSWORD"]) == (first["VAJRA_API_KEY"], first["VAJRA_PASSWORD"])
