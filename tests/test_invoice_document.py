"""The invoice as a document: the issuer block, due date and payment terms from VAJRA_INVOICE_* (fixed on the
invoice when it is finalized; bad values refuse to start), the upcoming invoice on the billing page and through
the API, and the JSON invoice API (list, detail, PDF) for keys and members that may read billing."""

from datetime import date, timedelta
from decimal import Decimal

import pytest
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone

from billing.document import document_context, invoice_preview
from billing.models import Invoice
from billing.plans import period_of
from tests.billing_helpers import NOW, PERIOD, close, invoice_of, usage
from tests.factories import create_key, key_client
from tests.helpers import assert_error, run_django

pytestmark = pytest.mark.usefixtures("local_only")
NOVEMBER = date(2026, 11, 1)

ISSUER = {"VAJRA_INVOICE_ISSUER_NAME": "Vajra Cloud Ltd", "VAJRA_INVOICE_ISSUER_ADDRESS": ["1 Frozen Core Way",
          "Bengaluru 560001"], "VAJRA_INVOICE_ISSUER_EMAIL": "billing@vajra.example", "VAJRA_INVOICE_ISSUER_TAX_ID":
          "GSTIN 29ABCDE1234F1Z5", "VAJRA_INVOICE_PAYMENT_TERMS_DAYS": 30}


@pytest.fixture
def issuer(settings):
    for name, value in ISSUER.items():
        setattr(settings, name, value)
    return settings


@pytest.fixture
def open_invoice(acme, plan, issuer):
    usage(acme, "12.3456000000", tier="warm")
    close()
    return invoice_of(acme)


@pytest.mark.parametrize("name,value", [
    ("VAJRA_INVOICE_ISSUER_EMAIL", "billing at vajra"),
    ("VAJRA_INVOICE_PAYMENT_TERMS_DAYS", "net thirty"),
    ("VAJRA_INVOICE_PAYMENT_TERMS_DAYS", "-1"),
])
def test_bad_invoice_settings_fail_at_start_naming_the_variable(name, value):
    result = run_django("print('started')", **{name: value})
    assert result.returncode != 0 and "ImproperlyConfigured" in result.stderr
    assert name in result.stderr.splitlines()[-1], result.stderr[-500:]


def test_the_issuer_due_date_and_terms_are_on_the_page_and_the_pdf_and_stay_as_issued(open_invoice, alice_client,
                                                                                     settings):
    assert open_invoice.issuer == {"name": "Vajra Cloud Ltd", "address": ["1 Frozen Core Way", "Bengaluru 560001"],
                                   "email": "billing@vajra.example", "tax_id": "GSTIN 29ABCDE1234F1Z5"}
    assert open_invoice.payment_terms_days == 30
    assert open_invoice.due_on == (open_invoice.finalized_at + timedelta(days=30)).date()
    settings.VAJRA_INVOICE_ISSUER_NAME = "Someone Else Inc"  # a later change never rewrites an issued invoice
    page = alice_client.get(reverse("invoice", args=[open_invoice.id])).content.decode()
    document = render_to_string("billing/invoice_document.html", document_context(open_invoice))
    for html in (page, document):
        assert "Vajra Cloud Ltd" in html and "1 Frozen Core Way" in html and "Bengaluru 560001" in html
        assert "billing@vajra.example" in html and "GSTIN 29ABCDE1234F1Z5" in html
        assert f"{open_invoice.due_on:%Y-%m-%d}" in html and "Net 30: due 30 days after the invoice date" in html
        assert "Someone Else Inc" not in html and "{#" not in html and "{%" not in html


def test_the_upcoming_invoice_on_the_billing_page_and_through_the_api(acme, alice, alice_client, plan, issuer,
                                                                      unchanged_db):
    current = period_of(timezone.now())
    usage(acme, "0.0123456789", tier="hot", period=current)
    usage(acme, "2.0000000000", tier="cold", period=current)
    _, secret = create_key(alice, acme, scopes=["billing:read"])
    with unchanged_db():
        page = alice_client.get(reverse("billing")).content.decode()
        body = key_client(secret).get(reverse("api-v1-billing-invoice-upcoming")).json()
    assert "data-upcoming" in page and "Upcoming invoice" in page and "USD 2.01" in page
    assert (body["object"], body["status"], body["id"], body["period"]) == ("invoice.upcoming", "upcoming", None,
                                                                             f"{current:%Y-%m}")
    assert (body["total"], body["currency"], body["payment_terms"]) == ("2.01", "usd", "Net 30: due 30 days after "
                                                                                       "the invoice date")
    assert [line["amount_exact"] for line in body["lines"]] == ["2.0000000000", "0.0123456789"]
    assert sum(Decimal(line["amount"]) for line in body["lines"]) == Decimal(body["total"])
    assert body["issuer"]["name"] == "Vajra Cloud Ltd" and not Invoice.objects.exists()


def test_the_upcoming_invoice_takes_last_months_rows_only_once_that_month_is_invoiced(acme, plan):
    usage(acme, "3.0000000000", period=PERIOD)  # October, before its invoice is finalized
    usage(acme, "1.0000000000", period=NOVEMBER)
    _, lines = invoice_preview(tenant=acme, now=NOW)
    assert [(line.amount_exact, line.usage_period) for line in lines] == [(Decimal("1.0000000000"), None)]
    close()  # October's invoice takes its row; a row recorded afterwards is late usage on November's invoice
    usage(acme, "0.5000000000", period=PERIOD)
    _, lines = invoice_preview(tenant=acme, now=NOW)
    assert [(line.amount_exact, line.usage_period) for line in lines] == [(Decimal("1.0000000000"), None),
                                                                         (Decimal("0.5000000000"), PERIOD)]
    assert "recorded after that month closed" in lines[1].description


def test_the_invoice_api_lists_details_and_downloads_with_billing_read(open_invoice, alice, acme):
    _, secret = create_key(alice, acme, scopes=["billing:read"])
    client = key_client(secret)
    listing = client.get(reverse("api-v1-billing-invoices")).json()
    assert listing["object"] == "list" and [i["number"] for i in listing["data"]] == ["VAJ-202610-0001"]
    assert "lines" not in listing["data"][0]
    detail = client.get(reverse("api-v1-billing-invoice", args=[open_invoice.id])).json()
    assert (detail["object"], detail["id"], detail["status"], detail["total"]) == ("invoice", open_invoice.id, "open",
                                                                                   "12.35")
    assert detail["due_on"] == open_invoice.due_on.isoformat() and detail["issuer"]["tax_id"] == "GSTIN 29ABCDE1234F1Z5"
    assert detail["lines"] == [{"kind": "inference", "description": "Inference, warm tier, base model: 1 requests, "
                                "0 GPU-ms", "tier": "warm", "adapter": None, "usage_period": None, "quantity": "1",
                                "unit": "requests", "amount": "12.35", "amount_exact": "12.3456000000"}]
    assert detail["pdf_url"].endswith(reverse("api-v1-billing-invoice-pdf", args=[open_invoice.id]))
    pdf = client.get(detail["pdf_url"], HTTP_ACCEPT="application/pdf")
    assert pdf.status_code == 200 and pdf["Content-Type"] == "application/pdf" and pdf.content.startswith(b"%PDF")


def test_the_invoice_api_refuses_in_the_error_shape_and_writes_nothing(open_invoice, alice, bob, acme, charlie,
                                                                       contoso, bob_client, unchanged_db):
    _, no_billing = create_key(alice, acme, scopes=["infer"])
    _, other_tenant = create_key(charlie, contoso, scopes=["billing:read"])
    urls = [reverse("api-v1-billing-invoices"), reverse("api-v1-billing-invoice-upcoming"),
            reverse("api-v1-billing-invoice", args=[open_invoice.id]),
            reverse("api-v1-billing-invoice-pdf", args=[open_invoice.id])]
    with unchanged_db():
        for url in urls:
            assert_error(key_client(no_billing).get(url), 403)
            assert_error(bob_client.get(url), 403)  # a developer sees no invoices
        for url in urls[2:]:
            assert_error(key_client(other_tenant).get(url), 404)
        pdf_url = urls[3]  # refusals of the PDF are JSON whatever the Accept header asked for
        assert_error(key_client(no_billing).get(pdf_url, HTTP_ACCEPT="application/pdf"), 403)
        assert_error(key_client(other_tenant).get(pdf_url, HTTP_ACCEPT="application/pdf"), 404)
        assert key_client(other_tenant).get(urls[0]).json()["data"] == []
        assert_error(key_client(other_tenant).get(reverse("api-v1-billing-invoice", args=["inv_nope"])), 404)


def test_the_invoice_api_is_in_the_schema(db):
    from django.test import Client

    paths = Client().get("/api/schema/?format=json").json()["paths"]
    for route in ("/api/v1/billing/invoices", "/api/v1/billing/invoices/upcoming",
                  "/api/v1/billing/invoices/{invoice_id}", "/api/v1/billing/invoices/{invoice_id}/pdf"):
        assert "get" in paths[route], route
