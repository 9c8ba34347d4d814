from django.contrib import admin
from django.http import HttpResponsePermanentRedirect
from django.templatetags.static import static
from django.urls import include, path, re_path, register_converter
from drf_spectacular.views import SpectacularAPIView

from . import api_docs, errors, health, metrics
from .converters import IdConverter

register_converter(IdConverter, "id")  # before the URL modules below use it

handler400 = "vajra.errors.handler400"
handler403 = "vajra.errors.handler403"
handler404 = "vajra.errors.handler404"
handler500 = "vajra.errors.handler500"

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    # Browsers ask for /favicon.ico on pages that name no icon (the admin's, a PDF, JSON): the dashboard's icon.
    path("favicon.ico", lambda request: HttpResponsePermanentRedirect(static("vajra/favicon.svg")), name="favicon"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", metrics.metrics_view, name="metrics"),  # staff or VAJRA_METRICS_TOKEN
    path("api/schema/", SpectacularAPIView.as_view(authentication_classes=[], permission_classes=[]),
         name="schema"),
    # The API reference: the dashboard's page around Swagger UI, all of it from static files (no inline code).
    path("api/docs/", api_docs.api_docs, name="api-docs"),
    path("api/v1/", include("tenants.api_urls")),
    path("api/v1/", include("adapters.api_urls")),
    path("api/v1/", include("fleet.api_urls")),
    path("api/v1/", include("training.api_urls")),
    path("v1/", include("training.v1_urls")),
    path("v1/", include("serving.v1_urls")),
    path("api/v1/", include("billing.api_urls")),
    path("v1/", include("billing.v1_urls")),
    # Unknown API routes answer in the API's error shape even with DEBUG on (Django's debug 404 is HTML).
    re_path(r"^(api|v1)/", errors.api_route_not_found),
    path("admin/", admin.site.urls),
    path("", include("tenants.urls")),
    path("", include("adapters.urls")),
    path("", include("fleet.urls")),
    path("", include("serving.urls")),
    path("", include("training.urls")),
    path("", include("billing.urls")),
]
