from django.contrib import admin
from django.urls import include, path, re_path, register_converter
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from . import errors, health, metrics
from .converters import IdConverter
from .middleware import csp_override

register_converter(IdConverter, "id")  # before the URL modules below use it

handler400 = "vajra.errors.handler400"
handler403 = "vajra.errors.handler403"
handler404 = "vajra.errors.handler404"
handler500 = "vajra.errors.handler500"

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", metrics.metrics_view, name="metrics"),  # staff or VAJRA_METRICS_TOKEN
    path("api/schema/", SpectacularAPIView.as_view(authentication_classes=[], permission_classes=[]),
         name="schema"),
    # Swagger UI's start-up script is served as a file (the split view); its page keeps one inline <style>
    # block, so that page alone allows inline styles. Nothing else is relaxed.
    path("api/docs/", csp_override(style_src=["'self'", "'unsafe-inline'"])(SpectacularSwaggerSplitView.as_view(
        url_name="schema", authentication_classes=[], permission_classes=[])), name="api-docs"),
    path("api/v1/", include("tenants.api_urls")),
    path("api/v1/", include("adapters.api_urls")),
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
