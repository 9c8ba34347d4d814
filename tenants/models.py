"""Tenants (organisations), people, their memberships and roles, invites, and API keys."""

from django.contrib.auth.models import AbstractBaseUser, BaseUserManager, PermissionsMixin
from django.core.validators import RegexValidator
from django.db import models
from django.db.models.functions import Lower
from django.utils import timezone
from rest_framework_api_key.models import AbstractAPIKey

from .roles import ROLE_CHOICES, SCOPES

SLUG_RE = r"^[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?$"
slug_validator = RegexValidator(
    SLUG_RE, "Use 1-40 lowercase letters, digits and hyphens, starting and ending with a letter or digit."
)


class UserManager(BaseUserManager):
    use_in_migrations = True

    def create_user(self, email, password=None, **extra):
        if not email:
            raise ValueError("A user needs an email address.")
        user = self.model(email=self.normalize_email(email).lower(), **extra)
        user.set_password(password)
        user.save(using=self._db)
        return user

    def create_superuser(self, email, password=None, **extra):
        extra.update(is_staff=True, is_superuser=True)
        return self.create_user(email, password, **extra)


class User(AbstractBaseUser, PermissionsMixin):
    """A person. Signs in with an email; belongs to tenants through memberships."""

    email = models.EmailField(max_length=254, unique=True)
    name = models.CharField(max_length=120, blank=True)
    is_active = models.BooleanField(default=True)
    is_staff = models.BooleanField(default=False, help_text="Can use Django admin and see the Nodes page.")
    date_joined = models.DateTimeField(default=timezone.now)

    objects = UserManager()

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"

    class Meta:
        constraints = [models.UniqueConstraint(Lower("email"), name="user_email_unique_ci")]

    def __str__(self):
        return self.email


class Tenant(models.Model):
    """An organisation: owns adapters, keys, usage and invoices. Suspended tenants are refused service."""

    ACTIVE, SUSPENDED = "active", "suspended"
    STATUS_CHOICES = [(ACTIVE, "Active"), (SUSPENDED, "Suspended")]

    name = models.CharField(max_length=100)
    slug = models.SlugField(max_length=40, unique=True, validators=[slug_validator])
    status = models.CharField(max_length=16, choices=STATUS_CHOICES, default=ACTIVE)
    # Requests per minute over all of the tenant's keys; null means the platform default.
    rate_limit_per_minute = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self):
        return self.slug

    @property
    def is_active(self):
        return self.status == self.ACTIVE


class Membership(models.Model):
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=20, choices=ROLE_CHOICES)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "user"], name="membership_unique")]

    def __str__(self):
        return f"{self.user} in {self.tenant} as {self.role}"


class Invite(models.Model):
    """An emailed invitation to join a tenant with a role. Only a hash of the token is stored."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="invites")
    email = models.EmailField(max_length=254)
    role = models.CharField(max_length=20, choices=ROLE_CHOICES)
    token_hash = models.CharField(max_length=64, unique=True)
    invited_by = models.ForeignKey(User, on_delete=models.SET_NULL, null=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    accepted_at = models.DateTimeField(null=True, blank=True)
    accepted_by = models.ForeignKey(User, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                "tenant", Lower("email"),
                condition=models.Q(accepted_at__isnull=True, revoked_at__isnull=True),
                name="invite_one_open_per_email",
            )
        ]

    def __str__(self):
        return f"invite of {self.email} to {self.tenant} as {self.role}"

    @property
    def state(self):
        if self.revoked_at:
            return "revoked"
        if self.accepted_at:
            return "accepted"
        if self.expires_at <= timezone.now():
            return "expired"
        return "pending"


def _default_scopes():
    return ["infer"]


class APIKey(AbstractAPIKey):
    """A tenant's API key: visible prefix, SHA-512-hashed secret (djangorestframework-api-key), scopes."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="api_keys")
    created_by = models.ForeignKey(User, on_delete=models.SET_NULL, null=True, related_name="+")
    scopes = models.JSONField(default=_default_scopes)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta(AbstractAPIKey.Meta):
        verbose_name = "API key"
        verbose_name_plural = "API keys"

    def has_scope(self, scope):
        return scope in self.scopes

    @property
    def is_expired(self):
        return self.expiry_date is not None and self.expiry_date <= timezone.now()

    @property
    def state(self):
        if self.revoked:
            return "revoked"
        return "expired" if self.is_expired else "active"

    def clean(self):
        unknown = sorted(set(self.scopes) - set(SCOPES))
        if unknown:
            from django.core.exceptions import ValidationError

            raise ValidationError({"scopes": f"Unknown scopes: {', '.join(unknown)}."})


class AuditEntry(models.Model):
    """One security-relevant action on a tenant's things, written in the action's own transaction (so it exists
    exactly when the action does). Append-only: a saved entry is never changed or deleted through the ORM.
    The actor's email and key prefix are kept as text, so the entry still says who after they are gone."""

    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="audit_entries")
    actor_user = models.ForeignKey(User, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    actor_email = models.CharField(max_length=254, blank=True)
    actor_api_key = models.ForeignKey(APIKey, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    actor_key_prefix = models.CharField(max_length=8, blank=True)
    action = models.CharField(max_length=40)
    target_type = models.CharField(max_length=40)
    target_id = models.CharField(max_length=64)
    target_name = models.CharField(max_length=200, blank=True)  # e.g. support-bot@v3, as people name it
    details = models.JSONField(default=dict, blank=True)
    ip = models.GenericIPAddressField(null=True, blank=True)
    request_id = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name = "audit entry"
        verbose_name_plural = "audit log"
        indexes = [models.Index(fields=["tenant", "-id"], name="audit_tenant_newest"),
                   models.Index(fields=["tenant", "action", "-id"], name="audit_tenant_action_newest")]

    def __str__(self):
        return f"{self.action} {self.target_type}:{self.target_id} in {self.tenant_id}"

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise ValueError("Audit entries are append-only; they cannot be changed.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise ValueError("Audit entries are append-only; they cannot be deleted.")

    @property
    def target_label(self):
        """The target as people name it: its recorded name, else the name, email or number its details carry,
        else its kind and id (a training job: with its adapter's name)."""
        details = self.details if isinstance(self.details, dict) else {}
        for name in (self.target_name, details.get("name"), details.get("email"), details.get("number")):
            if name:
                return str(name)
        kind = self.target_type.replace("_", " ")
        return f"{kind} for {details['adapter']}" if details.get("adapter") else f"{kind} {self.target_id}"

    @property
    def actor(self):
        """Who, in words: a person, a key, or the platform itself (period close, Stripe's webhook)."""
        if self.actor_key_prefix:
            return f"API key {self.actor_key_prefix}" + (f" ({self.actor_email})" if self.actor_email else "")
        return self.actor_email or "system"
