"""JSON logs on web and control (``VAJRA_LOG_FORMAT=json``; see gpu_runtime/logs.py for the line's shape).

On web the request id is the one ``RequestIdMiddleware`` keeps in its context variable (or, for the lines
``django.request`` writes after the middleware returned, the request's own). Importing this module (the
LOGGING setting names it, so every Django process does) makes the id travel with Celery tasks both ways:
published from web and control with a ``vajra_request_id`` header, and restored in the control worker while
the task runs. In the control worker, Celery's own log handlers get the JSON formatter too.
"""

from django.conf import settings

from gpu_runtime import logs

from .middleware import request_id_var


class JsonFormatter(logs.JsonFormatter):
    context_var = request_id_var

    def request_id(self, record):
        request = getattr(record, "request", None)
        return (getattr(record, "request_id", None) or getattr(request, "request_id", None)
                or self.context_var.get())


logs.carry_request_ids(request_id_var)
if getattr(settings, "VAJRA_LOG_FORMAT", "plain") == "json":
    logs.json_logs_in_celery(JsonFormatter())
