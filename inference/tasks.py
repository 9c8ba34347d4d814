"""Control-queue tasks the runtime nodes and beat send by name."""

from celery import shared_task

from . import services


@shared_task(name="control.node_heartbeat", ignore_result=True, soft_time_limit=10, time_limit=20)
def node_heartbeat(payload):
    services.node_heartbeat(payload=payload)


@shared_task(name="control.nodes_mark_down", ignore_result=True, soft_time_limit=10, time_limit=20)
def nodes_mark_down():
    return services.nodes_mark_down()


@shared_task(name="control.inference_finished", ignore_result=True, soft_time_limit=10, time_limit=20)
def inference_finished(request_id, final):
    from .dispatch import inference_finish

    inference_finish(request_id=request_id, final=final)


@shared_task(name="control.inference_started", ignore_result=True, soft_time_limit=10, time_limit=20)
def inference_started(request_id, node_name):
    from .dispatch import inference_start

    inference_start(request_id=request_id, node_name=node_name)
