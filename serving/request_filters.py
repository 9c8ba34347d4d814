"""The Usage page's recent requests: filtered by status, tier and adapter name, in pages."""

from django import forms
from django.core.paginator import Paginator

from adapters.models import Adapter

from .models import InferenceRequest

REQUESTS_PER_PAGE = 20
MAX_PAGE = 10_000


class RequestFilterForm(forms.Form):
    status = forms.ChoiceField(required=False, choices=[("", "Any status"), *InferenceRequest.STATUS_CHOICES])
    tier = forms.ChoiceField(required=False, choices=[("", "Any tier"), *Adapter.TIER_CHOICES])
    adapter = forms.CharField(required=False, max_length=80, strip=True)
    page = forms.IntegerField(required=False, min_value=1, max_value=MAX_PAGE)


def filtered_requests(requests, params):
    """(form, page of requests) for the recent-requests table: filters by status, tier and adapter name; an
    invalid filter shows the unfiltered first page beside the form's errors."""
    form = RequestFilterForm(params)
    query = form.cleaned_data if form.is_valid() else {}
    if query.get("status"):
        requests = requests.filter(status=query["status"])
    if query.get("tier"):
        requests = requests.filter(tier=query["tier"])
    if query.get("adapter"):
        requests = requests.filter(adapter_version__adapter__name=query["adapter"])
    page = Paginator(requests, REQUESTS_PER_PAGE).get_page(query.get("page") or 1)
    return form, page

