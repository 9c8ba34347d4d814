"""Keeps one process running: starts it again whenever it exits, after a delay that doubles while it keeps dying
young; SIGTERM or SIGINT ends the process and then the supervisor.

``manage.py up`` runs each runtime node under one of these. honcho's Manager stops every process as soon as one
exits, so a node killed on its own (kill -9, out of memory) would take web, control, beat and the other nodes down
with it; under its supervisor the node comes back instead, while its requests fail over to the other nodes.

    python -m vajra.supervisor --name node-a --pid-file var/run/runtime-node-a.pid \
        -- celery -A gpu_runtime.celery_app ...

The pid file holds the running process's pid (not the supervisor's), for whoever wants to signal the node itself.

It never imports Django or torch: it only starts, watches and signals its one process.
"""

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

FIRST_DELAY = 1.0  # seconds before the first restart
MAX_DELAY = 30.0
STABLE_SECONDS = 60.0  # a process that ran this long died of something new: its next restart waits FIRST_DELAY


def restart_delay(failures, *, first=FIRST_DELAY, cap=MAX_DELAY):
    """Seconds to wait before a restart after ``failures`` exits in a row, each sooner than STABLE_SECONDS after
    its start: first, 2 first, 4 first, ... up to cap."""
    return min(cap, first * 2 ** max(0, failures - 1))


def exit_words(returncode):
    return f"signal {-returncode}" if returncode < 0 else f"exit code {returncode}"


class Supervisor:
    def __init__(self, argv, *, name, pid_file=None, first=FIRST_DELAY, cap=MAX_DELAY, stable=STABLE_SECONDS,
                 out=sys.stdout):
        self.argv, self.name, self.first, self.cap, self.stable, self.out = argv, name, first, cap, stable, out
        self.pid_file = Path(pid_file) if pid_file else None
        self.child = None
        self.stopping = threading.Event()

    def say(self, text):
        print(f"supervisor {self.name}: {text}", file=self.out, flush=True)

    def stop(self, signum, frame=None):
        """Ends the process (the signal is passed on) and then the supervisor: no restart after a stop."""
        self.stopping.set()
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signum)

    def write_pid(self, pid):
        if self.pid_file is None:
            return
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return
        partial = self.pid_file.with_name(self.pid_file.name + ".partial")  # readers never see half a pid
        partial.write_text(f"{pid}\n")
        os.replace(partial, self.pid_file)

    def run(self):
        """Runs the process until a stop; the exit status is the last run's (0 if a stop came before any)."""
        failures, returncode = 0, 0
        while not self.stopping.is_set():
            started = time.monotonic()
            self.child = subprocess.Popen(self.argv)
            if self.stopping.is_set():  # a stop that came while the process was being started
                self.child.terminate()
            self.say(f"started pid {self.child.pid}")
            self.write_pid(self.child.pid)
            returncode = self.child.wait()
            self.write_pid(None)
            if self.stopping.is_set():
                break
            failures = 1 if time.monotonic() - started >= self.stable else failures + 1
            delay = restart_delay(failures, first=self.first, cap=self.cap)
            self.say(f"pid {self.child.pid} ended ({exit_words(returncode)}); starting it again in {delay:g} s")
            self.stopping.wait(delay)
        return returncode


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m vajra.supervisor", description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", required=True, help="what the log lines call the process")
    parser.add_argument("--pid-file", help="where to keep the running process's pid")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command and its arguments")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to supervise after --")
    supervisor = Supervisor(command, name=args.name, pid_file=args.pid_file)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, supervisor.stop)
    returncode = supervisor.run()
    sys.exit(128 - returncode if returncode < 0 else returncode)


if __name__ == "__main__":
    main()
