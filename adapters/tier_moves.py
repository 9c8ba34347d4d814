"""Tier moves on the nodes. Where an adapter version lives is the fleet's decision (placement picks the nodes and
sends the move); the adapter services only change an adapter's tier. The fleet app sits above this one, so it
registers its two functions here when Django starts (fleet/apps.py) and nothing here imports it."""

from django.db import transaction

_fleet = {}


def register(*, check_hot, send):
    """``check_hot(base_model=, adapter=)`` raises Conflict (409 ``no_hot_capacity``) when no node serving the base
    model has hot capacity left for the adapter; ``send(version, tier)`` moves a version to a tier (None: its
    adapter's) on the nodes."""
    _fleet.update(check_hot=check_hot, send=send)


def _registered(name):
    try:
        return _fleet[name]
    except KeyError:
        raise RuntimeError("no fleet registered for tier moves: the fleet app registers at start") from None


def check_hot(*, base_model, adapter):
    _registered("check_hot")(base_model=base_model, adapter=adapter)


def send_on_commit(version, tier=None):
    """Moves the version on the nodes once the transaction commits."""
    send = _registered("send")
    transaction.on_commit(lambda: send(version, tier))
