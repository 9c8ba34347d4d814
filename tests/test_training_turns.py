"""When the engine gives a training job its turn (gpu_runtime.training_turns): every ``every`` decode steps beside
running rows, at once when idle, and held back for a request that steady arrivals say is due before the turn's
first chance to give way, or, beside running rows, after they would finish but before a micro-step and their
remaining decode steps would."""

import time
from types import SimpleNamespace

from gpu_runtime.training_turns import TrainingTurns


def turns_with(run, *, arrivals_ago=None, every=10, max_hold_s=2.0):
    """TrainingTurns holding ``run``, its decode-step count at ``every``, requests arrived ``arrivals_ago`` s ago."""
    turns = TrainingTurns(every=every, max_hold_s=max_hold_s)
    turns.submit(run)
    now = time.perf_counter()
    for ago in arrivals_ago or ():
        turns.arrived(now - ago)
    turns._since_turn = every
    return turns


STEADY = (3.4, 2.4, 1.4, 0.4)  # one a second: the next is due in 0.6 s


def test_idle_the_turn_waits_only_for_an_arrival_due_within_its_first_stretch():
    run = SimpleNamespace(next_work_ms=5.0, micro_ms=500.0)
    assert turns_with(run, arrivals_ago=STEADY).due(rows_running=False)  # 0.6 s away: ample
    soon = turns_with(SimpleNamespace(next_work_ms=500.0, micro_ms=500.0), arrivals_ago=STEADY)
    assert not soon.due(rows_running=False) and soon.held == 1


def test_beside_running_rows_the_turn_waits_when_it_would_push_their_last_tokens_into_the_next_arrival():
    run = SimpleNamespace(next_work_ms=5.0, micro_ms=300.0)
    turns = turns_with(run, arrivals_ago=STEADY)
    assert not turns.due(rows_running=True, rows_left_s=lambda: 0.4) and turns.held == 1  # 0.7 s of work, 0.6 left
    assert turns.due(rows_running=True, rows_left_s=lambda: 0.0)  # a micro-step alone ends 0.3 s before it
    assert turns.due(rows_running=True, rows_left_s=lambda: 5.0)  # the rows run past it anyway: nothing gained
    assert turns_with(run).due(rows_running=True, rows_left_s=lambda: 0.4)  # no steady arrivals: nothing to hold for
    unknown = SimpleNamespace(next_work_ms=None, micro_ms=None)  # no micro-step measured yet
    assert turns_with(unknown, arrivals_ago=STEADY).due(rows_running=True, rows_left_s=lambda: 0.4)


def test_every_decode_steps_and_the_hold_limit_still_apply():
    run = SimpleNamespace(next_work_ms=5.0, micro_ms=300.0)
    early = turns_with(run, arrivals_ago=STEADY)
    early._since_turn = 9
    assert not early.due(rows_running=True, rows_left_s=lambda: 0.0) and early.held == 0
    starved = turns_with(run, arrivals_ago=STEADY, max_hold_s=0.0)  # held back long enough: it trains anyway
    assert starved.due(rows_running=True, rows_left_s=lambda: 0.4)
