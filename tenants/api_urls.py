# Named api-v1-*: the dashboard (tenants/urls.py) has pages named api-keys and api-key-revoke.

from django.urls import path

from . import api, audit_views

urlpatterns = [
    path("me", api.MeView.as_view(), name="api-v1-me"),
    path("signup", api.SignupView.as_view(), name="api-v1-signup"),
    path("tenants", api.TenantListView.as_view(), name="api-v1-tenants"),
    path("keys", api.APIKeyListView.as_view(), name="api-v1-keys"),
    path("keys/<str:prefix>", api.APIKeyDetailView.as_view(), name="api-v1-key"),
    path("members", api.MemberListView.as_view(), name="api-v1-members"),
    path("members/<id:member_id>", api.MemberDetailView.as_view(), name="api-v1-member"),
    path("invites", api.InviteListView.as_view(), name="api-v1-invites"),
    path("invites/<id:invite_id>", api.InviteDetailView.as_view(), name="api-v1-invite"),
    path("audit-log", audit_views.AuditLogView.as_view(), name="api-v1-audit-log"),
]
