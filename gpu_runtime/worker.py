"""The runtime node's entry: a Celery worker (threads pool, never prefork) on queue ``node.<name>``.

    celery -A gpu_runtime.worker worker --pool threads --concurrency 8

On start it loads the base model once (kept resident) and heartbeats to the ``control`` queue. Its
Celery app is configured from environment variables only; it never imports Django.
"""

import logging
import os
import resource
import threading
import time
from datetime import UTC, datetime

from celery import Celery, signals
from kombu import Queue

from .config import RuntimeConfig
from .contract import CONTROL_QUEUE, TASK_NODE_HEARTBEAT, Heartbeat, node_queue
from .redis_url import celery_url

log = logging.getLogger("vajra.runtime.worker")

config = RuntimeConfig.from_env()

# No fixups: Celery's Django fixup would set Django up whenever DJANGO_SETTINGS_MODULE is in the
# environment (it is, under `make up`), and the runtime must stay Django-free.
app = Celery("vajra-runtime", fixups=[])
app.conf.update(
    broker_url=celery_url(config.redis_url),
    result_backend=celery_url(config.redis_url),
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_soft_time_limit=int(os.environ.get("CELERY_TASK_SOFT_TIME_LIMIT", 300)),
    task_time_limit=int(os.environ.get("CELERY_TASK_TIME_LIMIT", 330)),
    broker_connection_retry_on_startup=True,
    task_queues=[Queue(node_queue(config.node_name))],
    task_default_queue=node_queue(config.node_name),
    worker_hijack_root_logger=False,
)


class Node:
    """This process's node: the resident base model and the heartbeat thread."""

    def __init__(self, config):
        self.config = config
        self.started_at = datetime.now(UTC).isoformat()
        self.base = None
        self.load_error = None
        self._stop = threading.Event()
        self._threads = []

    def start(self):
        for target, name in ((self._load, "base-model-loader"), (self._heartbeat_loop, "heartbeat")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self):
        self._stop.set()

    def _load(self):
        from .base_model import load_base_model

        try:
            self.base = load_base_model(self.config)
        except Exception as exc:
            self.load_error = str(exc)
            log.exception("base model failed to load")
        self.send_heartbeat()

    def heartbeat(self):
        memory = {"host_max_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
        device, dtype = "unknown", "unknown"
        if self.base is not None:
            device, dtype = self.base.device, self.base.dtype
            if device.startswith("cuda"):
                import torch

                memory["device_allocated"] = torch.cuda.memory_allocated()
        return Heartbeat(
            node=self.config.node_name,
            started_at=self.started_at,
            sent_at=datetime.now(UTC).isoformat(),
            base_model=self.config.base_model,
            device=device,
            dtype=dtype,
            model_loaded=self.base is not None,
            memory=memory,
        )

    def send_heartbeat(self):
        try:
            app.send_task(TASK_NODE_HEARTBEAT, args=[self.heartbeat().to_json()], queue=CONTROL_QUEUE,
                          expires=self.config.heartbeat_seconds * 3)
        except Exception:  # the broker may be restarting; the next beat tries again
            log.warning("heartbeat not sent", exc_info=True)

    def _heartbeat_loop(self):
        while not self._stop.wait(self.config.heartbeat_seconds):
            self.send_heartbeat()


node = Node(config)


@signals.worker_ready.connect
def _on_worker_ready(**_):
    node.start()


@signals.worker_shutdown.connect
def _on_worker_shutdown(**_):
    node.stop()


@app.task(name="runtime.ping")
def ping():
    """Round trip through the node's queue: what is loaded and where."""
    beat = node.heartbeat().to_json()
    beat["pong_at"] = time.time()
    if node.load_error:
        beat["load_error"] = node.load_error
    return beat
