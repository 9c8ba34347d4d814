"""REST API for tenants, members, invites and API keys (/api/v1/...). Views stay short: validate, call
one service, serialize."""

from django.conf import settings
from django.contrib.auth import login
from django.urls import reverse
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.exceptions import Throttled
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from vajra.client_ip import client_ip
from vajra.schema import data_list, errors, shape
from vajra.serializers import StrictSerializer

from . import access, services
from .limits import hit
from .models import SLUG_RE
from .permissions import IsPerson, require_session
from .roles import ROLES, SCOPES


def _choice(choices, what):
    """A choice field whose refusal lists what is allowed instead of only saying no."""
    return serializers.ChoiceField(choices=choices, error_messages={
        "invalid_choice": f'"{{input}}" is not a valid {what}; choose from {", ".join(choices)}.'})


class TenantOut(serializers.Serializer):
    slug = serializers.CharField()
    name = serializers.CharField()
    status = serializers.CharField()


class APIKeyOut(serializers.Serializer):
    prefix = serializers.CharField()
    name = serializers.CharField()
    scopes = serializers.ListField(child=serializers.CharField())
    state = serializers.CharField()
    created_at = serializers.DateTimeField(source="created")
    expires_at = serializers.DateTimeField(source="expiry_date", allow_null=True)
    last_used_at = serializers.DateTimeField(allow_null=True)
    revoked_at = serializers.DateTimeField(allow_null=True)
    created_by = serializers.EmailField(source="created_by.email", allow_null=True, default=None)


class MemberOut(serializers.Serializer):
    id = serializers.IntegerField()
    email = serializers.EmailField(source="user.email")
    name = serializers.CharField(source="user.name")
    role = serializers.CharField()
    joined_at = serializers.DateTimeField(source="created_at")


class InviteOut(serializers.Serializer):
    id = serializers.IntegerField()
    email = serializers.EmailField()
    role = serializers.CharField()
    state = serializers.CharField()
    expires_at = serializers.DateTimeField()


class TenantRoleOut(TenantOut):
    role = serializers.CharField(help_text="The person's role in it.")


class APIKeyCreatedOut(APIKeyOut):
    key = serializers.CharField(help_text="The secret, <prefix>.<secret>: shown this once, never stored.")


MeOut = shape("Me", {
    "tenant": TenantOut(), "user": serializers.EmailField(allow_null=True),
    "role": serializers.CharField(allow_null=True, help_text="A session's role; null for an API key."),
    "api_key": serializers.CharField(allow_null=True, help_text="An API key's prefix; null for a session."),
    "scopes": serializers.ListField(child=serializers.CharField())})
SignedUpOut = shape("SignedUp", {"tenant": TenantOut(), "user": serializers.EmailField(),
                                             "role": serializers.CharField()})


class MeView(APIView):
    """Who the credentials belong to: tenant, and role (session) or key and scopes."""

    @extend_schema(responses={200: MeOut})
    def get(self, request):
        p = request.auth
        return Response({
            "tenant": TenantOut(p.tenant).data,
            "user": p.user.email if p.user else None,
            "role": p.role,
            "api_key": p.api_key.prefix if p.is_key else None,
            "scopes": p.scopes,
        })


class SignupView(APIView):
    """Creates a person and their tenant (they become its owner) and signs them in."""

    authentication_classes = []
    permission_classes = [AllowAny]
    throttle_classes = []

    class SignupIn(StrictSerializer):
        email = serializers.EmailField(max_length=254)
        password = serializers.CharField(max_length=128, write_only=True, trim_whitespace=False)
        name = serializers.CharField(max_length=120, required=False, default="", allow_blank=True)
        tenant_name = serializers.CharField(max_length=100)
        tenant_slug = serializers.RegexField(SLUG_RE, max_length=40, error_messages={
            "invalid": "Use 1-40 lowercase letters, digits and hyphens, starting and ending with a letter or digit."})

    @extend_schema(request=SignupIn, responses={201: SignedUpOut, **errors(409, 429)})
    def post(self, request):
        wait = hit(f"signup:{client_ip(request)}", limit=settings.VAJRA_SIGNUPS_PER_IP_PER_HOUR, window=3600)
        if wait:
            raise Throttled(wait=wait)
        data = self.SignupIn(data=request.data)
        data.is_valid(raise_exception=True)
        membership = services.tenant_signup(**data.validated_data)
        login(request._request, membership.user, backend="django.contrib.auth.backends.ModelBackend")
        return Response({"tenant": TenantOut(membership.tenant).data, "user": membership.user.email,
                         "role": membership.role}, status=status.HTTP_201_CREATED)


class TenantListView(APIView):
    """The signed-in person's tenants; POST creates another one with them as owner."""

    permission_classes = [IsPerson]  # a person with no tenant yet may create one

    class TenantCreateIn(StrictSerializer):
        name = serializers.CharField(max_length=100)
        slug = serializers.RegexField(SLUG_RE, max_length=40)

    @extend_schema(responses={200: data_list(TenantRoleOut)})
    def get(self, request):
        memberships = access.user_memberships(user=request.user)
        return Response({"data": [dict(TenantOut(m.tenant).data, role=m.role) for m in memberships]})

    @extend_schema(request=TenantCreateIn, responses={201: TenantRoleOut, **errors(409)})
    def post(self, request):
        data = self.TenantCreateIn(data=request.data)
        data.is_valid(raise_exception=True)
        membership = services.tenant_create(user=request.user, **data.validated_data)
        return Response(dict(TenantOut(membership.tenant).data, role=membership.role), status=201)


class APIKeyListView(APIView):
    required_action = "keys.view"

    class APIKeyCreateIn(StrictSerializer):
        name = serializers.CharField(max_length=50)
        scopes = serializers.ListField(child=_choice(SCOPES, "scope"), min_length=1,
                                       max_length=len(SCOPES))
        expires_at = serializers.DateTimeField(required=False, allow_null=True, default=None)

    @extend_schema(responses={200: data_list(APIKeyOut)})
    def get(self, request):
        require_session(request)
        keys = access.tenant_api_keys(tenant=request.auth.tenant)
        return Response({"data": APIKeyOut(keys, many=True).data})

    @extend_schema(request=APIKeyCreateIn, responses={201: APIKeyCreatedOut})
    def post(self, request):
        require_session(request)
        data = self.APIKeyCreateIn(data=request.data)
        data.is_valid(raise_exception=True)
        key, secret = services.api_key_create(principal=request.auth, **data.validated_data)
        # The only time the secret is ever sent: it is not stored, only its hash.
        return Response(dict(APIKeyOut(key).data, key=secret), status=status.HTTP_201_CREATED)


class APIKeyDetailView(APIView):
    required_action = "keys.view"

    @extend_schema(responses={200: APIKeyOut})
    def get(self, request, prefix):
        require_session(request)
        return Response(APIKeyOut(access.access_api_key(tenant=request.auth.tenant, prefix=prefix)).data)

    @extend_schema(responses={200: APIKeyOut})
    def delete(self, request, prefix):
        """Revokes the key (it stays listed, marked revoked)."""
        require_session(request)
        key = services.api_key_revoke(principal=request.auth, prefix=prefix)
        return Response(APIKeyOut(key).data)


class MemberListView(APIView):
    required_action = "members.view"

    @extend_schema(responses={200: data_list(MemberOut)})
    def get(self, request):
        require_session(request)
        return Response({"data": MemberOut(access.tenant_members(tenant=request.auth.tenant), many=True).data})


class MemberDetailView(APIView):
    required_action = "members.view"

    class MemberRoleIn(StrictSerializer):
        role = _choice(ROLES, "role")

    @extend_schema(responses={200: MemberOut})
    def get(self, request, member_id):
        require_session(request)
        return Response(MemberOut(access.access_membership(tenant=request.auth.tenant,
                                                           membership_id=member_id)).data)

    @extend_schema(request=MemberRoleIn, responses={200: MemberOut, **errors(409)})
    def patch(self, request, member_id):
        require_session(request)
        data = self.MemberRoleIn(data=request.data)
        data.is_valid(raise_exception=True)
        member = services.membership_set_role(principal=request.auth, membership_id=member_id,
                                              **data.validated_data)
        return Response(MemberOut(member).data)

    @extend_schema(responses={204: None, **errors(409)})
    def delete(self, request, member_id):
        require_session(request)
        services.membership_remove(principal=request.auth, membership_id=member_id)
        return Response(status=status.HTTP_204_NO_CONTENT)


def invite_accept_url(request):
    return lambda token: request.build_absolute_uri(reverse("invite-accept", args=[token]))


class InviteListView(APIView):
    required_action = "members.view"

    class InviteCreateIn(StrictSerializer):
        email = serializers.EmailField(max_length=254)
        role = _choice(ROLES, "role")

    @extend_schema(responses={200: data_list(InviteOut)})
    def get(self, request):
        require_session(request)
        return Response({"data": InviteOut(access.tenant_invites(tenant=request.auth.tenant), many=True).data})

    @extend_schema(request=InviteCreateIn, responses={201: InviteOut, **errors(409)})
    def post(self, request):
        require_session(request)
        data = self.InviteCreateIn(data=request.data)
        data.is_valid(raise_exception=True)
        invite, _token = services.invite_create(principal=request.auth, accept_url_for=invite_accept_url(request),
                                                **data.validated_data)
        return Response(InviteOut(invite).data, status=status.HTTP_201_CREATED)


class InviteDetailView(APIView):
    required_action = "members.view"

    @extend_schema(responses={200: InviteOut, **errors(409)})
    def delete(self, request, invite_id):
        require_session(request)
        invite = services.invite_revoke(principal=request.auth, invite_id=invite_id)
        return Response(InviteOut(invite).data)
