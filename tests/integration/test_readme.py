"""The README, run: a platform started as ``make up`` starts it (manage.py up, from an empty var/), then every shell
and Python block of README.md in order, with the demo tenant's key from var/demo.env. A shell block runs with
``bash -euo pipefail`` and a ``curl`` that fails on any answer that is not a 2xx; a block marked
``<!-- readme-test: skip -->`` on the line above its fence is not run (the README says so too)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.processes import ROOT, Up, free_port, read_env, wait_for

pytestmark = pytest.mark.slow
README = ROOT / "README.md"
FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>[\w-]*)\s*$")
SKIP = "<!-- readme-test: skip"
RUNNABLE = {"sh": "shell", "bash": "shell", "python": "python"}

# What each shell block runs after: the README's own first lines (the demo tenant's variables and AUTH), and a curl
# that fails on any answer that is not a 2xx, showing its body.
SHELL_PRELUDE = """set -euo pipefail
set -a; . var/demo.env; set +a
AUTH="Authorization: Bearer $VAJRA_API_KEY"
curl() { command curl --fail-with-body --silent --show-error "$@"; }
"""


def readme_blocks(text):
    """[(line number, kind, code, skipped)] for every fenced block whose language is runnable, in order."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        opened = FENCE.match(lines[i])
        if not opened:
            i += 1
            continue
        indent, start = opened["indent"], i
        i += 1
        body = []
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i].lstrip())
            i += 1
        i += 1
        previous = next((line.strip() for line in reversed(lines[:start]) if line.strip()), "")
        if opened["lang"] in RUNNABLE:
            blocks.append((start + 1, RUNNABLE[opened["lang"]], "\n".join(body) + "\n", previous.startswith(SKIP)))
    return blocks


def test_the_readme_blocks_are_found_and_marked():
    blocks = readme_blocks(README.read_text())
    skipped = [code for _, _, code, skip in blocks if skip]
    assert any("make up" in code for code in skipped), "`make up` itself is marked not to run"
    run = [(kind, code) for _, kind, code, skip in blocks if not skip]
    assert any("/api/v1/base-models" in code for _, code in run)
    assert any(kind == "python" and "from openai import OpenAI" in code for kind, code in run)
    assert any("/rollback" in code for _, code in run)


def test_every_readme_block_runs_against_make_up(tmp_path):
    var_dir = tmp_path / "var"
    var_dir.mkdir()
    (var_dir / "models").symlink_to(ROOT / "var" / "models")  # where `make up` imports the base model
    checkout = tmp_path / "checkout"  # the README's relative paths (var/...) as in a checkout that ran `make up`
    checkout.mkdir()
    (checkout / "var").symlink_to(var_dir)
    port = free_port()
    up = Up(var_dir, port, tmp_path / "up.log")
    try:
        wait_for(lambda: "VAJRA is up at" in up.output(), 240, "make up to print its banner", up)
        url = f"http://127.0.0.1:{port}"

        def serving():
            nodes = httpx.get(f"{url}/readyz", timeout=10).json()["runtime"]["nodes"]
            return any(node["model_loaded"] for node in nodes)
        wait_for(serving, 240, "the runtime node to load its base model", up)

        demo = read_env(var_dir / "demo.env")
        env = {**{k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "DJANGO_", "VAJRA_"))
                  and k not in {"DATABASE_URL", "REDIS_URL"}},
               **demo, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        ran = []
        for line, kind, code, skipped in readme_blocks(README.read_text()):
            if skipped:
                continue
            argv = ["bash", "-c", SHELL_PRELUDE + code] if kind == "shell" else [sys.executable, "-c", code]
            result = subprocess.run(argv, cwd=checkout, env=env, capture_output=True, text=True, timeout=600)
            assert result.returncode == 0, (f"README.md line {line} ({kind}) failed with {result.returncode}:\n"
                                            f"{code}\n--- stdout\n{result.stdout[-3000:]}\n--- stderr\n"
                                            f"{result.stderr[-3000:]}\n--- make up\n{up.output()[-3000:]}")
            ran.append((kind, result.stdout))
        assert len(ran) >= 5 and any(kind == "python" and out.strip() for kind, out in ran)

        # What the walkthrough did is there: support-bot back on v1 after its trained v2.
        key = {"Authorization": f"Bearer {demo['VAJRA_API_KEY']}"}
        adapter = httpx.get(f"{url}/api/v1/adapters/support-bot", headers=key, timeout=10).json()
        versions = httpx.get(f"{url}/api/v1/adapters/support-bot/versions", headers=key, timeout=10).json()["data"]
        assert [v["number"] for v in versions] == [2, 1], versions
        assert adapter["tier"]["tier"] == "warm" and adapter["current_version"]["number"] == 1, adapter
    finally:
        up.ctrl_c()
