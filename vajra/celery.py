"""The control plane's Celery app (web sends tasks with it; the control worker and beat run it)."""

import os

from celery import Celery

from gpu_runtime.broker import install as install_broker_transport

install_broker_transport()  # kombu's Redis transport with its reconnect fix (gpu_runtime/broker.py)
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vajra.settings")

app = Celery("vajra")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
