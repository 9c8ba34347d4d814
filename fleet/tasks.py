"""Control-queue tasks of the fleet: node heartbeats, and beat's check for silent nodes."""

from celery import shared_task

from . import heartbeats


@shared_task(name="control.node_heartbeat", ignore_result=True, soft_time_limit=10, time_limit=20)
def node_heartbeat(payload):
    heartbeats.node_heartbeat(payload=payload)


@shared_task(name="control.nodes_mark_down", ignore_result=True, soft_time_limit=10, time_limit=20)
def nodes_mark_down():
    return heartbeats.nodes_mark_down()
