"""The Usage page's date range for its charts and export (?start=&end=, whole UTC days, the month so far by
default), and the CSV export of the ledger over that range."""

import csv
from datetime import UTC, datetime, timedelta

from django import forms
from django.http import HttpResponse

from .selectors import usage_metrics

MAX_RANGE_DAYS = 366
CSV_COLUMNS = ("bucket", "kind", "tier", "adapter", "requests", "prompt_tokens", "completion_tokens", "gpu_ms",
               "billed_gpu_ms", "gradients", "units", "cost")


class UsageRangeForm(forms.Form):
    start = forms.DateField(required=False, label="From", widget=forms.DateInput(attrs={"type": "date"}))
    end = forms.DateField(required=False, label="To", widget=forms.DateInput(attrs={"type": "date"}))

    def __init__(self, data, *, today):
        super().__init__(data)
        self.today = today

    def clean(self):
        data = super().clean()
        end = data.get("end") or self.today
        start = data.get("start") or end.replace(day=1)
        if start > end:
            raise forms.ValidationError("The range starts after it ends; choose a start on or before the end.",
                                        code="range_reversed")
        if (end - start).days >= MAX_RANGE_DAYS:
            raise forms.ValidationError(f"Choose at most {MAX_RANGE_DAYS} days.", code="range_too_long")
        return {"start": start, "end": end}


def usage_range(params, *, today):
    """(form, start date, end date inclusive): the month so far when the parameters are absent or invalid."""
    form = UsageRangeForm(params, today=today)
    if form.is_valid():
        return form, form.cleaned_data["start"], form.cleaned_data["end"]
    return form, today.replace(day=1), today


def range_bounds(start, end):
    """The datetimes [start 00:00 UTC, the day after end 00:00 UTC) of a range of whole days."""
    return datetime(start.year, start.month, start.day, tzinfo=UTC), \
        datetime(end.year, end.month, end.day, tzinfo=UTC) + timedelta(days=1)


def usage_csv(*, tenant, start, end):
    """The ledger between two dates by day, kind, tier and adapter, as a CSV download (costs in dollars)."""
    low, high = range_bounds(start, end)
    rows = usage_metrics(tenant=tenant, start=low, end=high, granularity="day")["data"]
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="usage-{tenant.slug}-{start}-{end}.csv"'
    writer = csv.writer(response)
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow([row["bucket"][:10] if name == "bucket" else
                         ("" if row.get(name) is None else row[name]) for name in CSV_COLUMNS])
    return response
