"""The runtime node's Celery app: a worker (threads pool, never prefork) on queue ``node.<name>``.

    celery -A gpu_runtime.celery_app worker --pool threads --concurrency 64

Each ``runtime.infer`` task holds a pool thread while its request waits in the engine, so the concurrency is how
many requests reach the engine's per-tenant admission queues (gpu_runtime.admission), where tenants take turns;
tasks beyond it wait in the node's Celery queue, first come, first served, behind whatever came first. A waiting
thread costs next to nothing: keep the concurrency at least what the tenants' quotas may put on this node.
The app is configured from environment variables only and never imports Django; it loads the node's tasks
(gpu_runtime.tasks, gpu_runtime.training_tasks), which start the node (gpu_runtime.node) when the worker is ready.
"""

import os

from celery import Celery
from kombu import Queue

from . import broker, logs
from .config import RuntimeConfig
from .contract import CONTROL_QUEUE, node_queue
from .redis_url import celery_url

config = RuntimeConfig.from_env()

# Log lines name the request being served: the id that came with the task (or the inference request's own),
# and, as JSON (VAJRA_LOG_FORMAT=json), this node too.
logs.carry_request_ids(logs.request_id_var)
if logs.log_format() == "json":
    logs.json_logs_in_celery(logs.JsonFormatter(static={"node": config.node_name}))

broker.install()
# No fixups: Celery's Django fixup would set Django up whenever DJANGO_SETTINGS_MODULE is in the
# environment (it is, under `make up`), and the runtime must stay Django-free.
app = Celery("vajra-runtime", fixups=[], include=["gpu_runtime.tasks", "gpu_runtime.training_tasks"])
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
    # An unacknowledged task is redelivered after the visibility timeout: it must outlast a training job.
    broker_transport_options={"visibility_timeout": config.train_time_limit_s + 600},
)

# What the control plane bills from must reach it through a broker restart: a send is retried for about a minute
# (kombu reconnects between tries) before the task fails loudly. Heartbeats are not: the next beat replaces one.
CONTROL_RETRY = {"max_retries": 60, "interval_start": 0.5, "interval_step": 0.5, "interval_max": 1.0}


def send_control(name, args):
    app.send_task(name, args=args, queue=CONTROL_QUEUE, retry=True, retry_policy=CONTROL_RETRY)
