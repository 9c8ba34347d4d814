"""Reading the audit log: GET /api/v1/audit-log and the dashboard's Audit log page, owners and admins only.

Both read through ``access.tenant_audit_log`` with the principal's tenant, so another tenant's entries are
never in reach; a filter naming an unknown action is a 400 that lists the known ones."""

from django.core.exceptions import PermissionDenied as PageDenied
from django.shortcuts import render
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from vajra.converters import MAX_ID
from vajra.schema import constant, data_list, shape
from vajra.serializers import StrictSerializer

from . import access
from .audit import ACTIONS
from .permissions import require_session
from .views import tenant_member_required

MAX_PAGE = 100
PAGE_ROWS = 50


class AuditQuery(StrictSerializer):
    limit = serializers.IntegerField(min_value=1, max_value=MAX_PAGE, default=PAGE_ROWS)
    before = serializers.IntegerField(min_value=1, max_value=MAX_ID, required=False)
    action = serializers.ChoiceField(choices=sorted(ACTIONS), required=False, error_messages={
        "invalid_choice": f'"{{input}}" is not an audit action; choose from {", ".join(sorted(ACTIONS))}.'})


class AuditEntryOut(serializers.Serializer):
    id = serializers.IntegerField()
    object = serializers.SerializerMethodField()
    created_at = serializers.DateTimeField()
    action = serializers.CharField()
    actor = serializers.SerializerMethodField()
    target = serializers.SerializerMethodField()
    details = serializers.JSONField()
    ip = serializers.CharField(allow_null=True)
    request_id = serializers.CharField()

    @extend_schema_field({"type": "string", "enum": ["audit_entry"]})
    def get_object(self, entry):
        return "audit_entry"

    @extend_schema_field(shape("AuditActor", {
        "user": serializers.EmailField(allow_null=True), "api_key": serializers.CharField(allow_null=True)}))
    def get_actor(self, entry):
        return {"user": entry.actor_email or None, "api_key": entry.actor_key_prefix or None}

    @extend_schema_field(shape("AuditTarget", {"type": serializers.CharField(),
                                                            "id": serializers.CharField()}))
    def get_target(self, entry):
        return {"type": entry.target_type, "id": entry.target_id}


def audit_page(*, tenant, query):
    """One page of entries, newest first, and whether older ones remain (then ``before`` = the last id)."""
    rows = list(access.tenant_audit_log(tenant=tenant, action=query.get("action"), before=query.get("before"))
                [:query["limit"] + 1])
    return rows[:query["limit"]], len(rows) > query["limit"]


class AuditLogView(APIView):
    """Who did what in this tenant: key creation and revocation, tier and role changes, training starts and
    cancels, invoice actions. ?action= filters, ?before=<id> pages back, ?limit= (1-100, default 50)."""

    required_action = "audit.read"

    @extend_schema(parameters=[AuditQuery], responses={200: data_list(
        AuditEntryOut, object=constant("list"), has_more=serializers.BooleanField())})
    def get(self, request):
        require_session(request)
        query = AuditQuery(data=request.query_params.dict())
        query.is_valid(raise_exception=True)
        rows, more = audit_page(tenant=request.auth.tenant, query=query.validated_data)
        return Response({"object": "list", "data": AuditEntryOut(rows, many=True).data, "has_more": more})


@tenant_member_required
def audit_log(request):
    principal = request.principal
    if not principal.can("audit.read"):
        raise PageDenied(f"Your role '{principal.role}' cannot read the audit log; owners and admins can.")
    query = AuditQuery(data=request.GET.dict())
    if not query.is_valid():
        problem = " ".join(str(m) for messages in query.errors.values() for m in messages)
        context = {"entries": [], "actions": ACTIONS, "problem": problem}
        return render(request, "tenants/audit_log.html", context, status=400)
    rows, more = audit_page(tenant=principal.tenant, query=query.validated_data)
    context = {"entries": rows, "more": more, "actions": ACTIONS, "selected": query.validated_data.get("action", ""),
               "older": rows[-1].id if more else None}
    return render(request, "tenants/audit_log.html", context)
