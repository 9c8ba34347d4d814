from django.urls import path

from . import api

urlpatterns = [
    path("me", api.MeView.as_view(), name="api-me"),
    path("signup", api.SignupView.as_view(), name="api-signup"),
    path("tenants", api.TenantListView.as_view(), name="api-tenants"),
    path("keys", api.APIKeyListView.as_view(), name="api-keys"),
    path("keys/<str:prefix>", api.APIKeyDetailView.as_view(), name="api-key"),
    path("members", api.MemberListView.as_view(), name="api-members"),
    path("members/<int:member_id>", api.MemberDetailView.as_view(), name="api-member"),
    path("invites", api.InviteListView.as_view(), name="api-invites"),
    path("invites/<int:invite_id>", api.InviteDetailView.as_view(), name="api-invite"),
]
