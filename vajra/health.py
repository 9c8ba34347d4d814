"""/healthz: the process answers. /readyz: the database and Redis answer; runtime nodes as reported."""

from django.db import connection
from django.http import JsonResponse
from django.views.decorators.cache import never_cache

from vajra.redis import get_redis


@never_cache
def healthz(request):
    return JsonResponse({"status": "ok"})


def _check(fn):
    try:
        fn()
        return {"ok": True}
    except Exception as exc:  # readiness reports what is wrong rather than raising
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}


def _database():
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


@never_cache
def readyz(request):
    from fleet.liveness import nodes_up

    checks = {"database": _check(_database), "redis": _check(lambda: get_redis().ping())}
    nodes = []
    if checks["database"]["ok"]:
        nodes = [
            {"name": n.name, "device": n.device, "base_model": n.base_model,
             "model_loaded": n.state.get("model_loaded", False), "last_heartbeat_at": n.last_heartbeat_at}
            for n in nodes_up()
        ]
    ready = all(check["ok"] for check in checks.values())
    body = {"status": "ready" if ready else "unavailable", "checks": checks,
            "runtime": {"nodes_up": len(nodes), "nodes": nodes}}
    return JsonResponse(body, status=200 if ready else 503)
