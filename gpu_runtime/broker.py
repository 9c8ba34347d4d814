"""kombu's Redis transport with two fixes, for the web's Celery app and the runtime's alike (Django-free).

With celery/kombu 5.7, a worker whose Redis goes away while it holds unacknowledged messages (acks_late: every
running task) dies with "Unrecoverable error: AttributeError('NoneType' object has no attribute 'hostname')":
closing the broken connection restores those messages through a transport that has already dropped its client,
and a task still running then acks through that same dead channel when it ends. Here both are skipped with a
warning, and the worker reconnects and goes on. The messages stay in Redis' unacked set,
from which the visibility timeout hands them out again, as for a worker that crashed (and a Redis that restarted
without its data has lost them anyway).

Second, its connections read a buffer closed under them as the lost connection it is (gpu_runtime/redis_io.py).
"""

import logging

import kombu.transport
from kombu.transport import redis

from .redis_io import hardened

log = logging.getLogger("vajra.broker")


class QoS(redis.QoS):
    def restore_unacked_once(self, stderr=None):
        try:
            return super().restore_unacked_once(stderr)
        except AttributeError as exc:
            log.warning("unacknowledged messages left to the visibility timeout: the broker connection is gone (%s)",
                        exc)

    def ack(self, delivery_tag):
        """A task that outlived its broker connection acks through a channel without a transport: the same crash.
        Its message stays unacked; a redelivery is idempotent (runtime.infer finds its final event, the control
        services check state first)."""
        try:
            return super().ack(delivery_tag)
        except AttributeError as exc:
            log.warning("ack of %s dropped: its broker connection is gone (%s)", delivery_tag, exc)

    def reject(self, delivery_tag, requeue=False):
        try:
            return super().reject(delivery_tag, requeue=requeue)
        except AttributeError as exc:
            log.warning("reject of %s dropped: its broker connection is gone (%s)", delivery_tag, exc)


class Channel(redis.Channel):
    QoS = QoS

    def _connparams(self, asynchronous=False):
        """kombu's connection parameters, over connections whose closed buffer reads as a lost connection
        (gpu_runtime/redis_io.py): kombu then reconnects, as for any other broken one."""
        params = super()._connparams(asynchronous=asynchronous)
        params["connection_class"] = hardened(params["connection_class"])
        return params


class Transport(redis.Transport):
    Channel = Channel


def install():
    """Makes ``redis://`` and ``redis+socket://`` broker URLs use this transport (kombu picks it by the URL's
    scheme, so setting broker_transport would miss the unix-socket form)."""
    kombu.transport.TRANSPORT_ALIASES["redis"] = "gpu_runtime.broker:Transport"
