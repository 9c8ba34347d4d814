"""Billing: tier prices in units per query (both papers) and the Stripe connection."""

from .env import env_int, env_str

VAJRA_TIER_UNITS = {"cold": 1, "warm": 5, "hot": 20}
# What a unit costs, in micro-dollars (integers: money is never a float). Default $0.0001 per unit.
VAJRA_UNIT_PRICE_MICRO_USD = env_int("VAJRA_UNIT_PRICE_MICRO_USD", 100, minimum=0)
VAJRA_BILLING_GRANULARITY_MS = env_int("VAJRA_BILLING_GRANULARITY_MS", 10, minimum=1)
STRIPE_API_KEY = env_str("STRIPE_API_KEY", "")
STRIPE_WEBHOOK_SECRET = env_str("STRIPE_WEBHOOK_SECRET", "")
STRIPE_API_BASE = env_str("STRIPE_API_BASE", "")
