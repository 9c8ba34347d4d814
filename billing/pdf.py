"""Invoice PDFs: the invoice page's own document template, printed by WeasyPrint (so the PDF and the page never
disagree). WeasyPrint is imported on first use: it costs the web process half a second at start otherwise."""

from django.contrib.staticfiles import finders
from django.template.loader import render_to_string

# The page's stylesheet, then the print rules; read from the source tree, so no HTTP fetch back to ourselves.
STYLESHEETS = ("vajra/invoice.css", "vajra/invoice-print.css")


def invoice_pdf(*, context, base_url=None):
    """The PDF bytes of ``billing/invoice_document.html`` rendered with ``context``."""
    from weasyprint import CSS, HTML

    html = render_to_string("billing/invoice_document.html", context)
    return HTML(string=html, base_url=base_url).write_pdf(
        stylesheets=[CSS(filename=finders.find(name)) for name in STYLESHEETS])
