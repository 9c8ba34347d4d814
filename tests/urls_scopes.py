"""A test URLConf: VAJRA's own routes plus tiny views that each require one action, so that tests can
check scope and role enforcement before the endpoints that need those scopes exist.

Use with ``@pytest.mark.urls("tests.urls_scopes")``.
"""

from django.urls import path
from rest_framework.response import Response
from rest_framework.views import APIView

from vajra.urls import handler400, handler403, handler404, handler500  # noqa: F401 (Django reads them here)
from vajra.urls import urlpatterns as vajra_urlpatterns


class ActionView(APIView):
    """Answers who was let through; ``required_action`` (or the per-method map) is set per route."""

    required_action = None
    required_actions = {}

    def get(self, request):
        p = request.auth
        return Response({"tenant": p.tenant.slug, "api_key": p.api_key.prefix if p.is_key else None})

    post = get


class ExplodingView(APIView):
    """A bug in a view: the client must still get the error shape and a request id to quote."""

    permission_classes = []
    authentication_classes = []

    def get(self, request):
        raise RuntimeError("a bug")


ACTIONS = ["infer", "train", "adapters.write", "datasets.read", "datasets.write", "training.read", "training.write",
           "usage.read", "billing.read"]

urlpatterns = [
    *(path(f"api/v1/test/{action}", ActionView.as_view(required_action=action)) for action in ACTIONS),
    # One action to read, another to write, like the adapter endpoints will have.
    path("api/v1/test/per-method",
         ActionView.as_view(required_actions={"GET": "usage.read", "POST": "adapters.write"})),
    path("api/v1/test/boom", ExplodingView.as_view()),
    *vajra_urlpatterns,
]
