"""VAJRA's runtime node: one process per GPU (or CPU box) that keeps the base model resident.

Django-free by rule: the control plane talks to it only through Celery queues (JSON) and Redis Streams,
as documented in ``gpu_runtime.contract``.
"""
