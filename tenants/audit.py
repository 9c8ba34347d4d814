"""The audit log's one writer: each service that creates or revokes keys, uploads, deletes or switches adapter
versions, changes tiers or roles, uploads, fetches or deletes datasets, starts or cancels training, or moves an invoice
calls ``audit_record`` inside its own transaction, once per action.

The IP and request id come from the request being served (vajra.middleware's context), so services need no
request; work that no request started (the period close, Stripe's webhook retries) records neither."""

from django.db import transaction

from vajra.middleware import request_id_var, request_ip_var

from .models import AuditEntry

# What the log records, in the product's words; the API's ?action= filter accepts exactly these.
ACTIONS = {
    "api_key.created": "API key created",
    "api_key.revoked": "API key revoked",
    "adapter.uploaded": "Adapter version uploaded",
    "adapter.made_current": "Adapter version made current",
    "adapter.tier_changed": "Adapter tier changed",
    "adapter.deleted": "Adapter deleted",
    "dataset.uploaded": "Dataset uploaded",
    "dataset.fetched": "Dataset fetched from a URL",
    "dataset.deleted": "Dataset deleted",
    "training.started": "Training job started",
    "training.cancelled": "Training job cancelled",
    "invoice.finalized": "Invoice finalized",
    "invoice.voided": "Invoice voided",
    "invoice.marked_uncollectible": "Invoice marked uncollectible",
    "invoice.paid": "Invoice paid",
    "member.role_changed": "Member role changed",
    "member.removed": "Member removed",
}


def audit_record(*, tenant, action, target_type, target_id, target_name="", principal=None, details=None):
    """Appends one entry; ``target_name`` is what people call the target (an adapter's name@vN, a dataset's
    name), kept as text so the entry still says which after the target is gone. Refuses to run outside a
    transaction: an entry must commit or roll back with its action, never outlive a refused one."""
    if action not in ACTIONS:
        raise ValueError(f"Unknown audit action {action!r}.")
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("audit_record must run inside the action's transaction.")
    user = getattr(principal, "user", None)
    key = getattr(principal, "api_key", None)
    request_id = request_id_var.get()
    return AuditEntry.objects.create(
        tenant_id=getattr(tenant, "pk", tenant), action=action, target_type=target_type, target_id=str(target_id),
        target_name=str(target_name)[:200],
        actor_user=user, actor_email=user.email if user else "", actor_api_key=key,
        actor_key_prefix=key.prefix if key else "", details=details or {},
        ip=request_ip_var.get() or None, request_id="" if request_id == "-" else request_id,
    )
