"""GPU-ms is device time on a real CUDA device: each forward pass of the tiny Llama is made to keep the GPU busy for
a known time that costs the host nothing (``torch.cuda._sleep`` queues a kernel that spins), so a clock reading the
host's wall time before synchronising would bill a fraction of it, and the engine's step clock must bill all of it.
Skipped without CUDA; on a CPU the clock's CUDA path is checked with a stand-in (tests/test_engine_cancel.py)."""

import os
import time
import uuid

import pytest
import redis
import torch

from gpu_runtime.base_model import BaseModel
from gpu_runtime.engine import Engine
from gpu_runtime.generation import GenerationRequest, SamplingParams
from gpu_runtime.streams import StreamWriter
from tests.runtime_fixtures import MANIFEST, tiny_base, tiny_tokenizer, words

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device: GPU-ms as device time "
                                "is only observable where the host and the device run apart")

SPIN_MS = 20.0  # device time each forward pass spends in the spinning kernel


def spin_cycles(ms):
    """Cycles of ``torch.cuda._sleep`` that keep this GPU busy for about ``ms`` (measured with CUDA events)."""
    cycles = 1_000_000
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    torch.cuda._sleep(cycles)
    end.record()
    end.synchronize()
    return int(cycles * ms / start.elapsed_time(end))


def test_billed_gpu_ms_is_the_devices_busy_time():
    model = tiny_base().to("cuda")
    base = BaseModel("tiny-llama", model.requires_grad_(False), tiny_tokenizer(), "cuda", "float32", MANIFEST, {})
    engine = Engine(base, None, StreamWriter(redis.Redis.from_url(os.environ["REDIS_URL"]), ttl_seconds=60),
                    max_batch=4)
    cycles = spin_cycles(SPIN_MS)
    spun = []  # device time of each spin, measured by the test's own events around it
    forward = model.forward

    def spinning(*args, **kwargs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        torch.cuda._sleep(cycles)
        end.record()
        spun.append((start, end))
        return forward(*args, **kwargs)

    model.forward = spinning
    engine.start()
    began = time.perf_counter()
    try:
        handles = [engine.submit(GenerationRequest(
            request_id=f"req_{uuid.uuid4().hex}", prompt=words([1, 2, 3 + i]), tenant="acme",
            sampling=SamplingParams(max_tokens=6 + i, temperature=1.0, seed=i))) for i in range(4)]
        finals = [handle.wait(120) for handle in handles]
    finally:
        engine.stop()
    wall_ms = (time.perf_counter() - began) * 1000
    torch.cuda.synchronize()
    spun_ms = sum(start.elapsed_time(end) for start, end in spun)
    billed = sum(final["gpu_ms"] for final in finals)
    assert all(final["finish_reason"] in ("stop", "length") for final in finals), finals
    assert billed == pytest.approx(engine.busy_ms, rel=0.01)
    # every spin lies inside a step's events: billed time covers them, and never exceeds the wall time
    assert spun_ms * 0.99 <= billed <= wall_ms, (spun_ms, billed, wall_ms)
