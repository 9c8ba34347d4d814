"""The API reference page: how to call VAJRA (base URL, keys, models, errors, streaming, examples), then every
endpoint of the OpenAPI schema in Swagger UI, in the dashboard's look. Open to everyone, like the schema."""

from django.shortcuts import render


def api_docs(request):
    from adapters.models import Adapter, BaseModel

    base = BaseModel.objects.order_by("name").first()
    base_name = base.name if base else "SmolLM2-135M-Instruct"
    principal = _principal(request)
    adapter = None
    if principal is not None and principal.can("adapters.view"):
        adapter = (Adapter.objects.filter(tenant=principal.tenant, deleted_at__isnull=True, base_model__name=base_name)
                   .exclude(current_version=None).order_by("name").first())
    return render(request, "api_docs.html", {"base_model": base_name,
                                              "example_model": adapter.name if adapter else base_name})


def _principal(request):
    """The signed-in person's principal in their active tenant, for an example naming one of their adapters."""
    from rest_framework.exceptions import APIException

    from tenants.active import active_membership
    from tenants.keys import principal_from_membership

    if not request.user.is_authenticated:
        return None
    try:
        return principal_from_membership(active_membership(request))
    except APIException:  # no tenant yet, or a suspended one: the page shows the base model's example
        return None
