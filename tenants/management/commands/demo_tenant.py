"""Creates (idempotently) the demo tenant, its owner login and an API key; writes them to var/demo.env.

A second run keeps the same login and key when they still work, so a restarted platform does not
invalidate what a developer pasted into their shell.
"""

import os
import secrets
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import transaction

from tenants.models import APIKey, Membership, Tenant, User
from tenants.roles import OWNER, SCOPES

DEMO_EMAIL = "demo@vajra.local"
DEMO_SLUG = "demo"


def read_env_file(path):
    values = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            name, sep, value = line.partition("=")
            if sep and not name.startswith("#"):
                values[name.strip()] = value.strip()
    return values


def write_env_file(path, values):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("# Written by `manage.py demo_tenant` (make up). Secrets: keep this file private.\n")
        for name, value in values.items():
            f.write(f"{name}={value}\n")
    os.chmod(path, 0o600)


class Command(BaseCommand):
    help = "Create the demo tenant, owner login and API key; write them to var/demo.env (mode 0600)."

    def add_arguments(self, parser):
        parser.add_argument("--url", default=os.environ.get("VAJRA_URL", "http://127.0.0.1:8000"))
        parser.add_argument("--env-file", default=str(Path(settings.VAR_DIR) / "demo.env"))

    @transaction.atomic
    def handle(self, *args, url, env_file, **options):
        path = Path(env_file)
        previous = read_env_file(path)
        tenant, _ = Tenant.objects.get_or_create(slug=DEMO_SLUG, defaults={"name": "Demo"})
        user = User.objects.filter(email=DEMO_EMAIL).first()
        password = previous.get("VAJRA_PASSWORD")
        if user is None:
            password = password or secrets.token_urlsafe(12)
            user = User.objects.create_user(email=DEMO_EMAIL, password=password, name="Demo owner")
        elif not password or not user.check_password(password):
            password = secrets.token_urlsafe(12)
            user.set_password(password)
            user.save(update_fields=["password"])
        Membership.objects.get_or_create(tenant=tenant, user=user, defaults={"role": OWNER})

        secret = previous.get("VAJRA_API_KEY", "")
        key = APIKey.objects.filter(tenant=tenant, prefix=secret.partition(".")[0]).first() if secret else None
        if key is None or key.revoked or key.is_expired or not key.is_valid(secret):
            key, secret = APIKey.objects.create_key(name="demo", tenant=tenant, created_by=user,
                                                    scopes=list(SCOPES))
        write_env_file(path, {
            "VAJRA_URL": url,
            "VAJRA_API_KEY": secret,
            "VAJRA_LOGIN": DEMO_EMAIL,
            "VAJRA_PASSWORD": password,
            "VAJRA_TENANT": DEMO_SLUG,
        })
        self.stdout.write(f"demo tenant '{DEMO_SLUG}', login {DEMO_EMAIL}, key {key.prefix}.…  -> {path}")
