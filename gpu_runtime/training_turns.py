"""Training's share of the engine thread (VAJRA paper 6.1.2: inference's priority x10).

While rows are decoding, the first queued training job gets one micro-step per ``every`` (10) decode steps; when no
row is running it gets the whole device, one micro-step at a time. With preemption (TRAINING_PREEMPTION_ENABLED, the
default) a micro-step gives way inside itself, at the next decoder layer or piece of the vocabulary projection, when
a request arrives (its forward or backward pass pauses and goes on later from there:
gpu_runtime.trainer.TrainingRun.micro_step), so a request waits for one layer's work and nothing computed is lost;
without it, a turn runs a whole optimizer step (all its micro-batches). Arrivals are also predicted (the
prefetcher's idea, Algorithm 1, applied to scheduling): when requests come at a steady pace and the next one is due
before the next stretch that cannot pause would end (``TrainingRun.next_work_ms``), or, while rows decode, after
they would finish but before a micro-step and their remaining decode steps would (the turn would push the rows'
last tokens into that arrival, which would then wait for one of their decode steps), the turn is held back, so
that request does not wait at all; a job held back for ``max_hold_s`` trains anyway (no starvation).

The engine owns the thread and calls ``due`` and ``turn`` between its inference steps; nothing here runs by itself.
"""

import logging
import math
import queue
import time
from collections import deque

log = logging.getLogger("vajra.runtime.engine")


class TrainingTurns:
    def __init__(self, *, every=10, preemption=True, max_hold_s=2.0):
        self.every = every
        self.preemption = preemption
        self.max_hold_s = max_hold_s
        self._incoming = queue.Queue()
        self.runs = []  # in arrival order; the first one trains, the others wait
        self.ms = 0.0
        self.micro_steps = 0
        self.yields = 0  # turns that paused at a layer boundary for an arriving request
        self.held = 0  # turns held back for a predicted arrival
        self._since_turn = 0  # decode steps since the last turn
        self._last_turn = time.perf_counter()
        self._arrivals = deque(maxlen=32)  # when inference requests arrived (perf_counter)

    # ---- any thread ---------------------------------------------------------------------------------------------
    def submit(self, run):
        """Queues a prepared TrainingRun; its reports arrive on ``run.events`` (gpu_runtime.trainer.drive)."""
        self._incoming.put(run)
        return run

    def arrived(self, at):
        """An inference request arrived at ``at`` (perf_counter): what arrival prediction learns from."""
        self._arrivals.append(at)

    # ---- the engine thread --------------------------------------------------------------------------------------
    def decode_step_ran(self):
        self._since_turn += 1

    def due(self, *, rows_running, rows_left_s=lambda: 0.0):
        """Whether the first job gets a turn now (``rows_running``: the engine has rows decoding, which
        ``rows_left_s()`` seconds of decode steps would finish)."""
        while True:
            try:
                self.runs.append(self._incoming.get_nowait())
            except queue.Empty:
                break
        if not self.runs:
            return False
        if rows_running and self._since_turn < self.every:
            return False
        if time.perf_counter() - self._last_turn < self.max_hold_s and self._hold_for_arrival(
                self.runs[0], rows_left_s() if rows_running else None):
            self.held += 1
            return False
        return True

    def _hold_for_arrival(self, run, rows_left_s):
        """Whether the next request that steady arrivals predict (median gap of the recent ones) comes while the
        turn would be in its way: idle (``rows_left_s`` None), before the turn's first chance to give way;
        beside running rows, after they would have finished but before they would finish with a micro-step
        in front of their last decode steps (the request would then wait for one of those steps; when it comes
        before the rows finish anyway, holding the turn gains it nothing)."""
        arrivals = list(self._arrivals)
        if len(arrivals) < 4:
            return False
        gaps = sorted(b - a for a, b in zip(arrivals, arrivals[1:], strict=False))
        gap = gaps[len(gaps) // 2]
        since = time.perf_counter() - arrivals[-1]
        if gap <= 0 or since > 2 * gap:  # no steady pattern, or it stopped
            return False
        due_in = gap * max(1, math.ceil(since / gap)) - since
        if rows_left_s is None:
            return bool(run.next_work_ms) and due_in < run.next_work_ms / 1000 * 1.5
        return bool(run.micro_ms) and rows_left_s < due_in < (rows_left_s + run.micro_ms / 1000) * 1.5

    def close(self):
        """The engine stops: a pass paused mid-way ends (its thread unwinds, its hooks come off the layers)."""
        for run in self.runs:
            run.end_paused_pass()

    def turn(self, *, cancelled, request_waiting):
        """One micro-step of the first job (a whole optimizer step without preemption); a failing job fails alone,
        inference goes on. ``cancelled(ids)`` reads cancel flags; ``request_waiting()`` says a request arrived and
        a row is free for it (checked at every layer of a preemptible pass)."""
        run = self.runs[0]
        self._since_turn = 0
        if run.finished:  # ended between turns (cancelled through Engine.call): nothing to run, it leaves below
            pass
        elif cancelled([run.job_id]):
            run.cancel()
        else:
            started = time.perf_counter()
            try:
                first_step = run.step
                yield_to = request_waiting if self.preemption else None
                while True:
                    if run.micro_step(should_yield=yield_to):
                        self.micro_steps += 1
                    else:
                        self.yields += 1
                    if self.preemption or run.finished or run.step != first_step:
                        break
            except Exception as exc:
                log.exception("training job %s failed", run.job_id)
                run.fail("training_error", str(exc))
            finally:
                self.ms += (time.perf_counter() - started) * 1000
                self._last_turn = time.perf_counter()
        if run.finished:
            self.runs.pop(0)
