"""gpu_runtime.pausable: one side at a time, a pause keeps the function's stack, errors reach the caller, and a
closed function's thread ends."""

import threading

import pytest

from gpu_runtime.pausable import Pausable


def test_resume_runs_the_function_to_its_next_pause_and_never_beside_the_caller():
    trace = []

    def count(p):
        total = 0
        for i in range(3):
            total += i
            trace.append(("fn", i, threading.current_thread().name))
            p.pause()
        return total

    p = Pausable(count, name="counting")
    for i in range(3):
        assert p.resume() is False
        trace.append(("caller", i))
    assert p.resume() is True and p.result == 3 and p.done
    assert p.resume() is True  # done stays done
    assert trace == [("fn", 0, "counting"), ("caller", 0), ("fn", 1, "counting"), ("caller", 1),
                     ("fn", 2, "counting"), ("caller", 2)]


def test_an_error_in_the_function_is_raised_at_resume():
    def fails(p):
        p.pause()
        raise ValueError("broken")

    p = Pausable(fails, name="failing")
    assert p.resume() is False
    with pytest.raises(ValueError, match="broken"):
        p.resume()
    assert p.done


def test_close_unwinds_a_paused_function_and_ends_its_thread():
    unwound = []

    def waits(p):
        try:
            while True:
                p.pause()
        except Exception:  # the abandonment is not an Exception: this never catches it
            unwound.append("swallowed")
        finally:
            unwound.append("finally")

    p = Pausable(waits, name="waiting")
    assert p.resume() is False
    p.close()
    assert unwound == ["finally"] and p.done and not p._thread.is_alive()
    Pausable(waits, name="never started").close()  # nothing to unwind
