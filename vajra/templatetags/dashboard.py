"""Template helpers of the dashboard: links that keep a page's other query parameters, dollars beside units."""

from decimal import Decimal, InvalidOperation

from django import template
from django.contrib.humanize.templatetags.humanize import intcomma

register = template.Library()


@register.simple_tag
def query_with(query, **changes):
    """``query`` (a QueryDict) with ``changes`` applied, URL-encoded: a pager link keeps the page's filters."""
    out = query.copy()
    for name, value in changes.items():
        out[name] = value
    return out.urlencode()


@register.filter
def usd(value, places=4):
    """Dollars with thousands separators and at least ``places`` decimals, more where a small price needs them:
    0.0000016667 shows as $0.0000016667, never as $0.0000."""
    try:
        amount = Decimal(str(value))
    except (InvalidOperation, TypeError, ValueError):
        return ""
    places = int(places)
    text = format(amount.normalize(), "f")
    decimals = len(text.split(".")[1]) if "." in text else 0
    shown = max(places, min(decimals, 10))
    whole, _, fraction = format(amount.quantize(Decimal(1).scaleb(-shown)), "f").partition(".")
    sign = "-" if whole.startswith("-") else ""
    return f"{sign}${intcomma(whole.lstrip('-'))}{'.' + fraction if fraction else ''}"


@register.filter
def get_item(mapping, key):
    return mapping.get(key) if hasattr(mapping, "get") else None
