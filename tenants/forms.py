"""Dashboard forms. They only check shape; the services decide what is allowed and what conflicts."""

from datetime import UTC, datetime, time, timedelta

from django import forms
from django.utils import timezone

from .models import SLUG_RE
from .roles import DEVELOPER, ROLE_CHOICES, SCOPE_CHOICES, can_grant_role, scopes_for_role

SLUG_HELP = "Lowercase letters, digits and hyphens; it appears in URLs and cannot be changed later."
SLUG_ERROR = "Use 1-40 lowercase letters, digits and hyphens, starting and ending with a letter or digit."


def add_service_error(form, exc):
    """Puts a service's APIException message on the field it names, else on the whole form."""
    field = getattr(exc, "param", None)
    form.add_error(field if field in form.fields else None, str(exc.detail))


class SignupForm(forms.Form):
    # Field names match tenant_signup's keywords, so a Conflict's param names the field at fault.
    email = forms.EmailField(max_length=254, widget=forms.EmailInput(attrs={"autocomplete": "email"}))
    name = forms.CharField(label="Your name", max_length=120, required=False,
                           widget=forms.TextInput(attrs={"autocomplete": "name"}))
    password = forms.CharField(max_length=128, strip=False, help_text="At least 10 characters.",
                               widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}))
    tenant_name = forms.CharField(label="Organisation name", max_length=100,
                                  widget=forms.TextInput(attrs={"autocomplete": "organization"}))
    tenant_slug = forms.RegexField(SLUG_RE, label="Tenant slug", max_length=40, help_text=SLUG_HELP,
                                   error_messages={"invalid": SLUG_ERROR},
                                   widget=forms.TextInput(attrs={"data-slug-from": "id_tenant_name"}))


class TenantSwitchForm(forms.Form):
    slug = forms.RegexField(SLUG_RE, max_length=40, error_messages={"invalid": SLUG_ERROR})


class LoginForm(forms.Form):
    email = forms.EmailField(max_length=254,
                             widget=forms.EmailInput(attrs={"autocomplete": "email", "autofocus": True}))
    password = forms.CharField(max_length=128, strip=False,
                               widget=forms.PasswordInput(attrs={"autocomplete": "current-password"}))


class TenantForm(forms.Form):
    name = forms.CharField(label="Organisation name", max_length=100)
    slug = forms.RegexField(SLUG_RE, label="Tenant slug", max_length=40, help_text=SLUG_HELP,
                            error_messages={"invalid": SLUG_ERROR},
                            widget=forms.TextInput(attrs={"data-slug-from": "id_name"}))


class APIKeyForm(forms.Form):
    name = forms.CharField(label="Key name", max_length=50, help_text="Where it is used, e.g. 'staging'.")
    scopes = forms.MultipleChoiceField(widget=forms.CheckboxSelectMultiple,
                                       help_text="A key can do only what its scopes allow.")
    expires_on = forms.DateField(label="Expires on", required=False,
                                 help_text="The key stops working at 00:00 UTC that day. Empty: never.",
                                 widget=forms.DateInput(attrs={"type": "date"}))

    def __init__(self, *args, role, **kwargs):
        super().__init__(*args, **kwargs)
        # Only the scopes the member's own role has: the service refuses the rest anyway.
        allowed = set(scopes_for_role(role))
        self.fields["scopes"].choices = [(s, f"{s}: {label}") for s, label in SCOPE_CHOICES if s in allowed]
        tomorrow = timezone.now().date() + timedelta(days=1)
        self.fields["expires_on"].widget.attrs["min"] = tomorrow.isoformat()

    def service_kwargs(self):
        day = self.cleaned_data["expires_on"]
        return {
            "name": self.cleaned_data["name"],
            "scopes": self.cleaned_data["scopes"],
            "expires_at": datetime.combine(day, time.min, tzinfo=UTC) if day else None,
        }


def grantable_roles(role):
    """The roles this member may give others (none for non-managers)."""
    return [(value, label) for value, label in ROLE_CHOICES if can_grant_role(role, value)]


class InviteForm(forms.Form):
    email = forms.EmailField(max_length=254, help_text="They sign in (or sign up) with this email to join.")
    role = forms.ChoiceField(choices=ROLE_CHOICES, initial=DEVELOPER)

    def __init__(self, *args, role, **kwargs):
        super().__init__(*args, **kwargs)
        # A non-manager never sees this form; if they post it anyway, the service explains the refusal.
        self.fields["role"].choices = grantable_roles(role) or ROLE_CHOICES


class MemberRoleForm(forms.Form):
    role = forms.ChoiceField(choices=ROLE_CHOICES)
