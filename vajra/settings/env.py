"""Environment readers that fail loudly.

Every setting comes from an environment variable with an embedded default that runs a fresh checkout.
A value that cannot be parsed raises ``ImproperlyConfigured`` naming the variable, at start, not at the
first request that happens to need it.
"""

import ipaddress
import os
from pathlib import Path
from urllib.parse import urlparse

from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent.parent
VAR_DIR = Path(os.environ.get("VAJRA_VAR_DIR") or BASE_DIR / "var").resolve()

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _raw(name):
    value = os.environ.get(name)
    return None if value is None or value.strip() == "" else value.strip()


def env_str(name, default=None, *, required=False):
    value = _raw(name)
    if value is None:
        if required:
            raise ImproperlyConfigured(f"{name} must be set.")
        return default
    return value


def env_bool(name, default):
    value = _raw(name)
    if value is None:
        return default
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name}={value!r} is not a boolean: use true or false.")


def env_int(name, default, *, minimum=None, maximum=None):
    value = _raw(name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r} is not an integer.") from None
    if minimum is not None and number < minimum:
        raise ImproperlyConfigured(f"{name}={number} is below the minimum {minimum}.")
    if maximum is not None and number > maximum:
        raise ImproperlyConfigured(f"{name}={number} is above the maximum {maximum}.")
    return number


def env_float(name, default, *, minimum=None, maximum=None):
    value = _raw(name)
    if value is None:
        return default
    try:
        number = float(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r} is not a number.") from None
    if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
        raise ImproperlyConfigured(f"{name}={number} is outside [{minimum}, {maximum}].")
    return number


def env_list(name, default):
    value = _raw(name)
    if value is None:
        return list(default)
    return [item.strip() for item in value.split(",") if item.strip()]


def env_networks(name, default):
    """A comma-separated list of IP addresses or CIDR networks (``10.0.0.0/8, 192.0.2.7``)."""
    networks = []
    for item in env_list(name, default):
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ImproperlyConfigured(f"{name}: {item!r} is not an IP address or network.") from None
    return tuple(networks)


def env_choice(name, default, choices):
    value = _raw(name) or default
    if value not in choices:
        raise ImproperlyConfigured(f"{name}={value!r} is not one of {', '.join(sorted(choices))}.")
    return value


def env_url(name, default, *, schemes):
    value = _raw(name) or default
    scheme = urlparse(value).scheme
    if scheme not in schemes:
        raise ImproperlyConfigured(
            f"{name}={value!r} has scheme {scheme!r}; expected one of {', '.join(sorted(schemes))}."
        )
    return value
