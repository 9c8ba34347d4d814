from django.urls import path

from . import audit_views, views

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("signup/", views.signup, name="signup"),
    path("login/", views.login_view, name="login"),
    path("logout/", views.logout_view, name="logout"),
    path("tenants/switch/", views.tenant_switch, name="tenant-switch"),
    path("tenants/new/", views.tenant_create, name="tenant-create"),
    path("keys/", views.api_keys, name="api-keys"),
    path("keys/<str:prefix>/revoke/", views.api_key_revoke, name="api-key-revoke"),
    path("members/", views.members, name="members"),
    path("members/<id:member_id>/role/", views.member_role, name="member-role"),
    path("members/<id:member_id>/remove/", views.member_remove, name="member-remove"),
    path("invites/<id:invite_id>/revoke/", views.invite_revoke, name="invite-revoke"),
    path("invites/<str:token>/accept/", views.invite_accept, name="invite-accept"),
    path("audit-log/", audit_views.audit_log, name="audit-log"),
]
