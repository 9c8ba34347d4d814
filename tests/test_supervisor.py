"""The supervisor that keeps each runtime node of ``make up`` running: a process killed on its own is started
again (a new pid), a stop ends the process and the supervisor together, and the restart delay doubles while the
process keeps dying young."""

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.processes import ROOT, wait_for
from vajra.supervisor import restart_delay

# Writes its pid, then sleeps until it is signalled.
SLEEPER = "import os, sys, time; open(sys.argv[1], 'a').write(f'{os.getpid()}\\n'); time.sleep(600)"


def pids_in(path):
    return [int(line) for line in Path(path).read_text().split()] if Path(path).exists() else []


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().split()[2] != "Z"


@pytest.fixture
def supervisor(tmp_path):
    started = tmp_path / "pids"
    log = open(tmp_path / "supervisor.log", "wb")
    popen = subprocess.Popen([sys.executable, "-m", "vajra.supervisor", "--name", "node-x",
                              "--pid-file", str(tmp_path / "node-x.pid"), "--",
                              sys.executable, "-c", SLEEPER, str(started)],
                             cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    yield popen, started, tmp_path / "supervisor.log", tmp_path / "node-x.pid"
    if popen.poll() is None:
        os.killpg(popen.pid, signal.SIGKILL)
        popen.wait()
    log.close()


def test_a_killed_process_is_started_again_and_a_stop_ends_both(supervisor):
    popen, started, log, pid_file = supervisor
    first = wait_for(lambda: pids_in(started), 30, "the process to start")[0]
    os.kill(first, signal.SIGKILL)
    second = wait_for(lambda: pids_in(started)[1:], 30, "the process to be started again")[0]
    assert second != first and alive(second) and popen.poll() is None
    wait_for(lambda: pid_file.exists() and pid_file.read_text() == f"{second}\n", 30, "the pid file to name it")
    assert re.search(rf"supervisor node-x: pid {first} ended \(signal 9\); starting it again in 1 s", log.read_text())

    popen.send_signal(signal.SIGTERM)  # to the supervisor alone: it passes the stop on
    assert popen.wait(30) == 128 + signal.SIGTERM
    wait_for(lambda: not alive(second), 30, "the supervised process to end with its supervisor")
    assert pids_in(started) == [first, second], "nothing is started after a stop"
    assert not pid_file.exists()


def test_the_restart_delay_doubles_up_to_its_cap():
    assert [restart_delay(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]
    assert restart_delay(3, first=0.5, cap=10) == 2


def test_it_refuses_to_start_without_a_command():
    result = subprocess.run([sys.executable, "-m", "vajra.supervisor", "--name", "x", "--"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 2 and "give the command" in result.stderr
