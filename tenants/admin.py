"""Django admin for platform staff: people, tenants (suspend / reactivate), memberships, invites, keys."""

import functools

from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.contrib.auth.forms import AdminUserCreationForm, UserChangeForm
from django.http import HttpResponse
from django.utils import timezone
from rest_framework_api_key.admin import APIKeyModelAdmin
from rest_framework_api_key.models import APIKey as UnusedBaseAPIKey

from vajra.admin import ReadOnlyAdmin
from vajra.client_ip import client_ip

from . import services
from .limits import login_failed, login_retry_after, login_succeeded
from .models import APIKey, AuditEntry, Invite, Membership, Tenant, User


def with_login_lockout(login):
    """The admin site's sign-in behind the dashboard's lockout, on the same counters (this account from this
    address, this account from anywhere, this address against any account), so neither door adds tries to the
    other's. Checked before the password, like the dashboard's: a locked-out address learns nothing."""

    @functools.wraps(login)
    def locked_login(request, extra_context=None):
        if request.method != "POST":
            return login(request, extra_context)
        email, ip = str(request.POST.get("username", "")).strip().lower(), client_ip(request)
        wait = login_retry_after(email, ip)
        if wait:
            response = HttpResponse(f"Too many failed sign-in attempts; try again in {wait} seconds.",
                                    status=429, content_type="text/plain; charset=utf-8")
            response["Retry-After"] = str(wait)
            return response
        response = login(request, extra_context)
        if response.status_code == 302:  # the admin's LoginView redirects only once a staff account signed in
            login_succeeded(email, ip)
        else:
            login_failed(email, ip)
        return response

    return locked_login


admin.site.login = with_login_lockout(admin.site.login)

# The package registers its own concrete APIKey model; VAJRA never uses it, so keep it out of the admin.
if admin.site.is_registered(UnusedBaseAPIKey):
    admin.site.unregister(UnusedBaseAPIKey)


class UserCreationForm(AdminUserCreationForm):
    class Meta(AdminUserCreationForm.Meta):
        model = User
        fields = ("email", "name")

    def clean_email(self):
        # Emails are stored lowercased (UserManager does the same), so sign-in is case-insensitive.
        return self.cleaned_data["email"].strip().lower()


class UserEditForm(UserChangeForm):
    class Meta(UserChangeForm.Meta):
        model = User
        fields = "__all__"


@admin.register(User)
class UserAdmin(DjangoUserAdmin):
    form = UserEditForm
    add_form = UserCreationForm
    list_display = ("email", "name", "is_staff", "is_active", "date_joined")
    list_filter = ("is_staff", "is_superuser", "is_active")
    search_fields = ("email", "name")
    ordering = ("email",)
    fieldsets = (
        (None, {"fields": ("email", "password")}),
        ("Profile", {"fields": ("name",)}),
        ("Permissions", {"fields": ("is_active", "is_staff", "is_superuser", "groups", "user_permissions")}),
        ("Dates", {"fields": ("last_login", "date_joined")}),
    )
    add_fieldsets = (
        (None, {"classes": ("wide",),
                "fields": ("email", "name", "usable_password", "password1", "password2")}),
    )


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ("user",)


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    list_display = ("slug", "name", "status", "rate_limit_per_minute", "created_at")
    list_filter = ("status",)
    search_fields = ("slug", "name")
    # Status changes go through the actions, which also tell the tenant's live connections.
    readonly_fields = ("status", "created_at")
    inlines = [MembershipInline]
    actions = ["suspend", "reactivate"]

    def _set_status(self, request, queryset, status):
        for tenant_id in queryset.values_list("pk", flat=True):
            services.tenant_set_status(tenant_id=tenant_id, status=status)
        self.message_user(request, f"{len(queryset)} tenant(s) now {status}.", messages.SUCCESS)

    @admin.action(description="Suspend selected tenants")
    def suspend(self, request, queryset):
        self._set_status(request, queryset, Tenant.SUSPENDED)

    @admin.action(description="Reactivate selected tenants")
    def reactivate(self, request, queryset):
        self._set_status(request, queryset, Tenant.ACTIVE)


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ("user", "tenant", "role", "created_at")
    list_filter = ("role",)
    search_fields = ("user__email", "tenant__slug")
    list_select_related = ("user", "tenant")
    autocomplete_fields = ("user", "tenant")


@admin.register(Invite)
class InviteAdmin(admin.ModelAdmin):
    list_display = ("email", "tenant", "role", "state", "invited_by", "expires_at")
    list_filter = ("role",)
    search_fields = ("email", "tenant__slug")
    list_select_related = ("tenant", "invited_by")
    exclude = ("token_hash",)  # means nothing to staff, and changing it would break the emailed link
    readonly_fields = ("accepted_at", "accepted_by", "created_at")
    autocomplete_fields = ("tenant", "invited_by")


@admin.register(APIKey)
class TenantAPIKeyAdmin(APIKeyModelAdmin):
    list_display = ("prefix", "name", "tenant", "scopes", "created_by", "created", "expiry_date", "revoked")
    list_filter = ("revoked", "created")
    search_fields = ("prefix", "name", "tenant__slug")
    list_select_related = ("tenant", "created_by")
    actions = ["revoke"]

    def has_add_permission(self, request):
        # Keys are created by members on the dashboard, where their role limits the scopes they may grant.
        return False

    def save_model(self, request, obj, form, change):
        if obj.revoked and obj.revoked_at is None:
            obj.revoked_at = timezone.now()
        super().save_model(request, obj, form, change)

    @admin.action(description="Revoke selected keys")
    def revoke(self, request, queryset):
        count = queryset.filter(revoked=False).update(revoked=True, revoked_at=timezone.now())
        self.message_user(request, f"Revoked {count} key(s).", messages.SUCCESS)


@admin.register(AuditEntry)
class AuditEntryAdmin(ReadOnlyAdmin):
    """Read-only: the log is evidence, so not even staff edit or delete it."""

    list_display = ("created_at", "tenant", "action", "target_type", "target_id", "actor", "ip")
    list_filter = ("action",)
    search_fields = ("tenant__slug", "target_id", "actor_email", "actor_key_prefix", "request_id")
    list_select_related = ("tenant",)
    date_hierarchy = "created_at"
