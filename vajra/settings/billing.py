"""Billing: the Stripe connection, invoices (the close, the issuer and payment terms), payment standing, and the
training jobs the plan's gradient prices apply to."""

import json
from urllib.parse import urlparse

from django.core.exceptions import ImproperlyConfigured

from .env import env_int, env_str

# Prices (tier units, unit price, GPU time and its granularity, the price of a million gradients) are the
# tenant's price plan (billing.PricePlan, edited in the admin), never settings: billing.plans prices from it.
# Stripe: unset STRIPE_SECRET_KEY runs local-only (invoices issued here, no payment collection).
# STRIPE_API_KEY is the older name, still read when STRIPE_SECRET_KEY is unset.
STRIPE_SECRET_KEY = env_str("STRIPE_SECRET_KEY") or env_str("STRIPE_API_KEY", "")
STRIPE_API_KEY = STRIPE_SECRET_KEY
STRIPE_WEBHOOK_SECRET = env_str("STRIPE_WEBHOOK_SECRET", "")
STRIPE_API_BASE = env_str("STRIPE_API_BASE", "")  # only for a Stripe fake; empty means api.stripe.com
STRIPE_MAX_NETWORK_RETRIES = env_int("STRIPE_MAX_NETWORK_RETRIES", 2, minimum=0, maximum=10)
if STRIPE_SECRET_KEY and not STRIPE_SECRET_KEY.startswith(("sk_", "rk_")):
    raise ImproperlyConfigured("STRIPE_SECRET_KEY must be a Stripe secret or restricted key (sk_... or rk_...).")
if STRIPE_SECRET_KEY and not STRIPE_WEBHOOK_SECRET:
    raise ImproperlyConfigured("STRIPE_WEBHOOK_SECRET must be set with STRIPE_SECRET_KEY: without it no payment "
                               "would ever be recorded (the webhook refuses every event).")
if STRIPE_API_BASE and urlparse(STRIPE_API_BASE).scheme not in ("http", "https"):
    raise ImproperlyConfigured(f"STRIPE_API_BASE={STRIPE_API_BASE!r} is not an http(s) URL.")
# Invoices: the daily close (control.invoices_close_period) finalizes at most this many per run and stops
# starting new ones after this many seconds; a full batch queues the next run at once.
VAJRA_INVOICE_CLOSE_BATCH = env_int("VAJRA_INVOICE_CLOSE_BATCH", 100, minimum=1)
VAJRA_INVOICE_CLOSE_SECONDS = env_int("VAJRA_INVOICE_CLOSE_SECONDS", 40, minimum=1)
# The invoice as a document: who issues it (copied onto each invoice when it is finalized, so a later change
# never rewrites an issued one) and its payment terms (due this many days after it is issued; 0: on receipt).
VAJRA_INVOICE_ISSUER_NAME = env_str("VAJRA_INVOICE_ISSUER_NAME", "VAJRA")
# Address lines separated by "\n" (the two characters, as an env file can hold them) or real newlines.
VAJRA_INVOICE_ISSUER_ADDRESS = [line.strip() for line in
                                env_str("VAJRA_INVOICE_ISSUER_ADDRESS", "").replace("\\n", "\n").splitlines()
                                if line.strip()]
VAJRA_INVOICE_ISSUER_EMAIL = env_str("VAJRA_INVOICE_ISSUER_EMAIL", "")
VAJRA_INVOICE_ISSUER_TAX_ID = env_str("VAJRA_INVOICE_ISSUER_TAX_ID", "")
VAJRA_INVOICE_PAYMENT_TERMS_DAYS = env_int("VAJRA_INVOICE_PAYMENT_TERMS_DAYS", 14, minimum=0, maximum=365)
if len(VAJRA_INVOICE_ISSUER_NAME) > 200:
    raise ImproperlyConfigured("VAJRA_INVOICE_ISSUER_NAME is longer than 200 characters.")
if len(VAJRA_INVOICE_ISSUER_ADDRESS) > 8 or any(len(line) > 200 for line in VAJRA_INVOICE_ISSUER_ADDRESS):
    raise ImproperlyConfigured("VAJRA_INVOICE_ISSUER_ADDRESS has more than 8 lines or a line over 200 characters.")
if len(VAJRA_INVOICE_ISSUER_TAX_ID) > 50:
    raise ImproperlyConfigured("VAJRA_INVOICE_ISSUER_TAX_ID is longer than 50 characters.")
if VAJRA_INVOICE_ISSUER_EMAIL:
    from django.core.exceptions import ValidationError
    from django.core.validators import validate_email

    try:
        validate_email(VAJRA_INVOICE_ISSUER_EMAIL)
    except ValidationError:
        raise ImproperlyConfigured(f"VAJRA_INVOICE_ISSUER_EMAIL={VAJRA_INVOICE_ISSUER_EMAIL!r} is not an email "
                                   "address.") from None

# Training jobs: a checkpoint every this many optimizer steps (a redelivered job resumes from the last one);
# a job no node can take is retried this often, and fails with no_capacity after waiting this long.
VAJRA_TRAIN_CHECKPOINT_EVERY = env_int("VAJRA_TRAIN_CHECKPOINT_EVERY", 10, minimum=1)
VAJRA_TRAIN_PLACE_RETRY_SECONDS = env_int("VAJRA_TRAIN_PLACE_RETRY_SECONDS", 15, minimum=1)
VAJRA_TRAIN_QUEUE_TIMEOUT_SECONDS = env_int("VAJRA_TRAIN_QUEUE_TIMEOUT_SECONDS", 3600, minimum=1)


def _dataset_url_prefixes(name):
    """{"tenant-slug": ["s3://bucket/prefix/", "file:///srv/data/"]}: where a tenant's train requests may name a
    dataset by URL. Unset: nowhere (datasets are uploaded)."""
    raw = env_str(name)
    if raw is None:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} is not valid JSON.") from None
    if not isinstance(value, dict) or not all(isinstance(v, list) for v in value.values()):
        raise ImproperlyConfigured(f"{name} must be a JSON object of tenant slug -> list of URL prefixes.")
    for slug, prefixes in value.items():
        for prefix in prefixes:
            parsed = urlparse(prefix) if isinstance(prefix, str) else None
            if parsed is None or parsed.scheme not in ("s3", "file") or not prefix.endswith("/"):
                raise ImproperlyConfigured(f"{name}: {prefix!r} for {slug!r} must be an s3:// or file:// URL "
                                           "ending in '/'.")
    return value


VAJRA_TENANT_DATASET_URL_PREFIXES = _dataset_url_prefixes("VAJRA_TENANT_DATASET_URL_PREFIXES")

# Failed payments (billing/standing.py): an account past due this many days is suspended, its tenant with it, by
# control.billing_suspend_past_due (hourly on beat); a later payment reactivates it.
VAJRA_PAYMENT_GRACE_DAYS = env_int("VAJRA_PAYMENT_GRACE_DAYS", 7, minimum=0)
