"""A runtime node (gpu_runtime.celery_app) with a clock of its own around the base model's forward passes, for tests
that check the GPU-ms the engine bills against a clock the engine does not keep:

    celery -A tests.integration.forward_clock_node worker --pool threads ...

Every call of the model's forward is timed (wall time: on a CPU a forward pass has finished when it returns) and
summed; the task ``test.forward_ms`` answers the sum and the number of calls. The engine times each step from just
before its forward pass to just after its logits, so this clock's intervals lie inside the engine's, and what the
engine adds is the call into the module and the slice of the last position's logits.

``VAJRA_TEST_FORWARD_SLEEP_MS`` (default 0) makes each forward pass take that much longer, so a test can keep a
fast model's answer running while it acts on the requests queued behind it.
"""

import os
import threading
import time

from gpu_runtime import node
from gpu_runtime.celery_app import app  # celery -A finds the app here

_lock = threading.Lock()
_forwards = {"ms": 0.0, "calls": 0}
_build_engine = node.build_engine
_sleep_s = float(os.environ.get("VAJRA_TEST_FORWARD_SLEEP_MS", "0")) / 1000


def build_engine(config):
    base, store, engine = _build_engine(config)
    forward = base.model.forward

    def timed(*args, **kwargs):
        started = time.perf_counter()
        try:
            if _sleep_s:
                time.sleep(_sleep_s)
            return forward(*args, **kwargs)
        finally:
            ms = (time.perf_counter() - started) * 1000
            with _lock:
                _forwards["ms"] += ms
                _forwards["calls"] += 1

    base.model.forward = timed
    return base, store, engine


node.build_engine = build_engine  # Node._load builds the engine through the module's name


@app.task(name="test.forward_ms")
def forward_ms():
    with _lock:
        return dict(_forwards)
