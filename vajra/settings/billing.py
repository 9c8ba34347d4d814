"""Billing: tier prices in units per query (both papers) and the Stripe connection."""

from .env import env_int, env_str

VAJRA_TIER_UNITS = {"cold": 1, "warm": 5, "hot": 20}
VAJRA_BILLING_GRANULARITY_MS = env_int("VAJRA_BILLING_GRANULARITY_MS", 10, minimum=1)
STRIPE_API_KEY = env_str("STRIPE_API_KEY", "")
STRIPE_WEBHOOK_SECRET = env_str("STRIPE_WEBHOOK_SECRET", "")
STRIPE_API_BASE = env_str("STRIPE_API_BASE", "")
