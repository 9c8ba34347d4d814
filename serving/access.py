"""The one way to reach a tenant's inference requests: another tenant's request is a 404 that never says it exists."""

from django.http import Http404

from .models import InferenceRequest


def access_inference_request(*, tenant, request_id):
    row = InferenceRequest.objects.filter(tenant=tenant, id=request_id).first()
    if row is None:
        raise Http404(f"No request '{request_id}' in this tenant.")
    return row


def tenant_requests(*, tenant):
    return InferenceRequest.objects.filter(tenant=tenant).order_by("-created_at")


def overview_requests(principal, rows):
    """The Overview's recent requests, for roles that read usage."""
    if not principal.can("usage.read"):
        return {"recent": None}
    return {"recent": list(tenant_requests(tenant=principal.tenant).select_related(
        "adapter_version__adapter", "base_model")[:rows])}
