"""Times an engine step's device work: what each request's GPU-ms is made of.

On CUDA the host only queues kernels, so the wall time around a forward pass is the time to launch it, not to run
it. There the clock records a CUDA event on the compute stream before the step's work and another after it, and
waits for the second (the step's one synchronisation: its tokens are read right after anyway), so the time is the
device's. On a CPU every operation has finished when it returns: the wall time from before the step's work to after
it is the device's.
"""

import time

import torch


class StepClock:
    def __init__(self, device, cuda=None):
        # ``cuda`` is torch.cuda on a CUDA device; tests pass a recording stand-in to drive this path on a CPU.
        self.device = device
        self._cuda = cuda if cuda is not None else (torch.cuda if device.type == "cuda" else None)

    def start(self):
        """A mark before the step's work is queued."""
        if self._cuda is None:
            return time.perf_counter()
        mark = self._cuda.Event(enable_timing=True)
        mark.record(self._cuda.current_stream(self.device))
        return mark

    def elapsed_ms(self, started):
        """Milliseconds of device time from ``started`` to the end of the work queued since; returns once that
        work has finished."""
        if self._cuda is None:
            return (time.perf_counter() - started) * 1000
        end = self._cuda.Event(enable_timing=True)
        end.record(self._cuda.current_stream(self.device))
        end.synchronize()
        return started.elapsed_time(end)


def smoothed(average, value):
    """A moving average of step times: ``value`` alone at first (``average`` None), then 1/5 of each new one."""
    return value if average is None else 0.8 * average + 0.2 * value
