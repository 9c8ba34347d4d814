"""Invoice PDFs: the invoice page's own document template, printed by WeasyPrint (so the PDF and the page never
disagree). WeasyPrint is imported on first use: it costs the web process half a second at start otherwise."""

from django.template.loader import render_to_string


def invoice_pdf(*, context, base_url=None):
    """The PDF bytes of ``billing/invoice_document.html`` rendered with ``context``."""
    from weasyprint import HTML

    html = render_to_string("billing/invoice_document.html", {**context, "for_pdf": True})
    return HTML(string=html, base_url=base_url).write_pdf()
