"""Dashboard pages: signing in, the active tenant, API keys, members and invites.

Views stay short: they call the services, which decide what is allowed; a refusal (an APIException) is
shown on the page, and Http404 from the access functions propagates as a 404."""

from functools import wraps

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import authenticate, login, logout
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import BadRequest
from django.shortcuts import redirect, render, resolve_url
from django.utils.cache import add_never_cache_headers
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.cache import never_cache
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_POST
from rest_framework.exceptions import APIException

from vajra.client_ip import client_ip
from vajra.errors import InvalidRequest

from . import access, forms, services
from .active import SESSION_KEY, active_membership
from .api import invite_accept_url
from .keys import principal_from_membership
from .limits import hit, login_failed, login_retry_after, login_succeeded
from .models import Invite
from .roles import can_grant_role

OVERVIEW_ROWS = 5  # adapters and recent requests on the Overview


def tenant_member_required(view):
    """A signed-in member of a usable active tenant; puts their Principal on ``request.principal``."""

    @login_required
    @wraps(view)
    def wrapper(request, *args, **kwargs):
        try:
            request.principal = principal_from_membership(active_membership(request))
        except APIException as exc:  # no tenant yet, or the active one is suspended
            return render(request, "tenants/no_tenant.html", {"problem": exc.detail}, status=exc.status_code)
        return view(request, *args, **kwargs)

    return wrapper


def _next_url(request, default="dashboard"):
    """Where to go afterwards: a ``next`` on this site only, so a link cannot bounce people elsewhere."""
    url = request.POST.get("next") or request.GET.get("next")
    if url and url_has_allowed_host_and_scheme(url, allowed_hosts={request.get_host()},
                                               require_https=request.is_secure()):
        return url
    return resolve_url(default)


def _too_many(request, template, context, wait, message):
    context["form"].add_error(None, message)
    response = render(request, template, context, status=429)
    response["Retry-After"] = str(wait)
    return response


@sensitive_post_parameters("password")
@never_cache
def signup(request):
    next_url = _next_url(request)
    if request.user.is_authenticated and request.method == "GET":
        return redirect(next_url)
    form = forms.SignupForm(request.POST or None)
    context = {"form": form, "next": next_url}
    if request.method != "POST":
        return render(request, "registration/signup.html", context)
    wait = hit(f"signup:{client_ip(request)}", limit=settings.VAJRA_SIGNUPS_PER_IP_PER_HOUR, window=3600)
    if wait:
        return _too_many(request, "registration/signup.html", context, wait,
                         f"Too many sign-ups from your address; try again in {wait} seconds.")
    if not form.is_valid():
        return render(request, "registration/signup.html", context, status=400)
    try:
        membership = services.tenant_signup(**form.cleaned_data)
    except APIException as exc:
        forms.add_service_error(form, exc)
        return render(request, "registration/signup.html", context, status=exc.status_code)
    login(request, membership.user, backend="django.contrib.auth.backends.ModelBackend")
    request.session[SESSION_KEY] = membership.tenant_id
    messages.success(request, f"Welcome to VAJRA. You own the tenant {membership.tenant.name}.")
    return redirect(next_url)


@sensitive_post_parameters("password")
@never_cache
def login_view(request):
    next_url = _next_url(request)
    if request.user.is_authenticated and request.method == "GET":
        return redirect(next_url)
    form = forms.LoginForm(request.POST or None)
    context = {"form": form, "next": next_url}
    if request.method != "POST":
        return render(request, "registration/login.html", context)
    if not form.is_valid():
        return render(request, "registration/login.html", context, status=400)
    email, ip = form.cleaned_data["email"].lower(), client_ip(request)
    # Checked before the password, so a locked-out address learns nothing even from the right one.
    wait = login_retry_after(email, ip)
    if wait:
        return _too_many(request, "registration/login.html", context, wait,
                         f"Too many failed sign-in attempts; try again in {wait} seconds.")
    user = authenticate(request, email=email, password=form.cleaned_data["password"])
    if user is None:
        login_failed(email, ip)
        form.add_error(None, "The email or password is incorrect.")
        return render(request, "registration/login.html", context, status=400)
    login_succeeded(email, ip)
    login(request, user)
    return redirect(next_url)


@require_POST
def logout_view(request):
    logout(request)
    messages.info(request, "You are signed out.")
    return redirect("login")


# What apps above tenants add to the Overview, registered from their AppConfig.ready (tenants imports none of
# them): billing, the month's spend; adapters, the adapters; serving, the recent requests. Each is called with
# (principal, rows) and returns context entries (None for what the principal's role may not see).
overview_facts = []


@tenant_member_required
def dashboard(request):
    tenant, principal = request.principal.tenant, request.principal
    context = {
        "rate_limit": tenant.rate_limit_per_minute or settings.VAJRA_RATE_LIMIT_PER_TENANT,
        "member_count": access.tenant_members(tenant=tenant).count(),
        "active_key_count": sum(key.state == "active" for key in access.tenant_api_keys(tenant=tenant)),
        "pending_invite_count": sum(inv.state == "pending" for inv in access.tenant_invites(tenant=tenant)),
    }
    for facts in overview_facts:
        context.update(facts(principal, OVERVIEW_ROWS))
    return render(request, "tenants/dashboard.html", context)


@require_POST
@login_required
def tenant_switch(request):
    form = forms.TenantSwitchForm(request.POST)
    if not form.is_valid():
        raise BadRequest(form.errors.as_text())
    membership = access.access_tenant_membership(user=request.user, slug=form.cleaned_data["slug"])
    request.session[SESSION_KEY] = membership.tenant_id
    return redirect(_next_url(request))


@login_required
def tenant_create(request):
    form = forms.TenantForm(request.POST or None)
    if request.method != "POST":
        return render(request, "tenants/tenant_create.html", {"form": form})
    if not form.is_valid():
        return render(request, "tenants/tenant_create.html", {"form": form}, status=400)
    try:
        membership = services.tenant_create(user=request.user, **form.cleaned_data)
    except APIException as exc:
        forms.add_service_error(form, exc)
        return render(request, "tenants/tenant_create.html", {"form": form}, status=exc.status_code)
    request.session[SESSION_KEY] = membership.tenant_id
    messages.success(request, f"Created {membership.tenant.name}; it is now your active tenant.")
    return redirect("dashboard")


def _invite_for_token(token):
    # The token is the credential here, so there is no tenant to go through; only its hash is stored.
    return Invite.objects.select_related("tenant", "invited_by").filter(
        token_hash=services._hash_token(token)).first()


@never_cache
def invite_accept(request, token):
    invite = _invite_for_token(token)
    status = 200 if invite else 404
    if request.method == "POST":
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        try:
            membership = services.invite_accept(user=request.user, token=token)
        except APIException as exc:
            messages.error(request, exc.detail)
            status = exc.status_code
        else:
            request.session[SESSION_KEY] = membership.tenant_id
            messages.success(request, f"You joined {membership.tenant.name} as {membership.role}.")
            return redirect("dashboard")
    return render(request, "tenants/invite_accept.html", {"invite": invite}, status=status)


def _keys_page(request, form, *, status=200, new_key=None, secret=None):
    principal = request.principal
    keys = list(access.tenant_api_keys(tenant=principal.tenant))
    manage_all = principal.can("keys.manage_all")
    for key in keys:
        key.can_revoke = key.state == "active" and (manage_all or key.created_by_id == principal.user.pk)
    context = {"keys": keys, "form": form, "new_key": new_key, "secret": secret}
    return render(request, "tenants/api_keys.html", context, status=status)


@tenant_member_required
def api_keys(request):
    principal = request.principal
    form = forms.APIKeyForm(request.POST or None, role=principal.role)
    if request.method != "POST":
        return _keys_page(request, form)
    if not form.is_valid():
        return _keys_page(request, form, status=400)
    try:
        key, secret = services.api_key_create(principal=principal, **form.service_kwargs())
    except APIException as exc:
        forms.add_service_error(form, exc)
        return _keys_page(request, form, status=exc.status_code)
    # The only time the secret is shown: in this response, never in the session, a URL or a cache.
    response = _keys_page(request, forms.APIKeyForm(role=principal.role), new_key=key, secret=secret)
    add_never_cache_headers(response)
    return response


@require_POST
@tenant_member_required
def api_key_revoke(request, prefix):
    principal = request.principal
    try:
        key = services.api_key_revoke(principal=principal, prefix=prefix)
    except APIException as exc:
        messages.error(request, exc.detail)
        return _keys_page(request, forms.APIKeyForm(role=principal.role), status=exc.status_code)
    messages.success(request, f"Revoked the key {key.prefix} ({key.name}); requests with it now get 401.")
    return redirect("api-keys")


def _members_page(request, invite_form=None, *, status=200, invite_link=None):
    principal = request.principal
    manages = principal.can("members.manage")
    members = list(access.tenant_members(tenant=principal.tenant))
    for member in members:
        member.is_me = member.user_id == principal.user.pk
        member.manageable = manages and not member.is_me and can_grant_role(principal.role, member.role)
    context = {
        "members": members,
        "invites": access.tenant_invites(tenant=principal.tenant),
        "manages": manages,
        "grantable_roles": forms.grantable_roles(principal.role),
        "invite_form": invite_form or forms.InviteForm(role=principal.role),
        "invite_link": invite_link,
    }
    return render(request, "tenants/members.html", context, status=status)


@tenant_member_required
def members(request):
    """The member list; POST invites someone."""
    principal = request.principal
    if request.method != "POST":
        return _members_page(request)
    form = forms.InviteForm(request.POST, role=principal.role)
    if not form.is_valid():
        return _members_page(request, form, status=400)
    try:
        invite, token = services.invite_create(principal=principal, accept_url_for=invite_accept_url(request),
                                               **form.cleaned_data)
    except APIException as exc:
        forms.add_service_error(form, exc)
        return _members_page(request, form, status=exc.status_code)
    messages.success(request, f"Invited {invite.email} as {invite.role}; the link is on its way by email.")
    # Shown once, for when mail is not set up; only the invitee's email can accept it anyway.
    response = _members_page(request, invite_link=invite_accept_url(request)(token))
    add_never_cache_headers(response)
    return response


def _refused(request, exc):
    messages.error(request, exc.detail)
    return _members_page(request, status=exc.status_code)


@require_POST
@tenant_member_required
def member_role(request, member_id):
    principal = request.principal
    form = forms.MemberRoleForm(request.POST)
    if not form.is_valid():
        return _refused(request, InvalidRequest("Choose one of the listed roles.", param="role"))
    try:
        member = services.membership_set_role(principal=principal, membership_id=member_id,
                                              role=form.cleaned_data["role"])
    except APIException as exc:
        return _refused(request, exc)
    messages.success(request, f"{member.user.email} is now {member.get_role_display().lower()}.")
    return redirect("members")


@require_POST
@tenant_member_required
def member_remove(request, member_id):
    principal = request.principal
    try:
        member = services.membership_remove(principal=principal, membership_id=member_id)
    except APIException as exc:
        return _refused(request, exc)
    if member.user_id == principal.user.pk:
        messages.success(request, f"You left {principal.tenant.name}.")
        return redirect("dashboard")
    messages.success(request, f"Removed {member.user.email}; the API keys they created here are revoked.")
    return redirect("members")


@require_POST
@tenant_member_required
def invite_revoke(request, invite_id):
    principal = request.principal
    try:
        invite = services.invite_revoke(principal=principal, invite_id=invite_id)
    except APIException as exc:
        return _refused(request, exc)
    messages.success(request, f"Revoked the invite for {invite.email}; its link no longer works.")
    return redirect("members")
