"""The Stripe fake for tests: localstripe 1.15.10, run in its own process on a free port (real HTTP, the real
``stripe`` client), extended here for exactly what VAJRA uses and localstripe lacks.

localstripe has no invoice without a subscription (``POST /v1/invoices`` answers "No upcoming invoices"), no
``finalize``, no ``mark_uncollectible``, cannot void an invoice that has no payment intent, does not put an invoice
item created with ``invoice=`` on that invoice's lines, has no billing portal, and ignores idempotency keys.
Those are added below, on localstripe's own objects (``Invoice``, ``InvoiceItem``, its store), shaped by Stripe's
OpenAPI spec: the accepted parameters are those of the ``stripe`` package's ``*Params`` types (generated from the
spec), responses follow the spec's fixtures (``openapi/fixtures3.json`` in github.com/stripe/openapi), and errors
are Stripe's ``{"error": {"type", "message", "param"}}``. Everything else is localstripe as published.

For the tests, under localstripe's unauthenticated ``/_config/``: ``GET /_config/vajra/journal`` lists every API
request (method, path, idempotency key, parameters); ``POST /_config/vajra/fail`` (``path`` regex, ``times``) makes
the next matching requests fail with a 500, unexecuted; ``DELETE /_config/data`` (localstripe's reset) also clears
those and the idempotency cache. State is pickled to a private file (``--state``), not localstripe's shared
/tmp/localstripe.pickle.

Run: ``python -m tests.stripe_fake --port 8420 --state /tmp/dir``.
"""

import argparse
import json
import pickle
import re
import secrets
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


# ---- the server (runs in the fake's own process) ---------------------------------------------------------------

def build_app(state_file, public_base):
    from aiohttp import web
    from localstripe import resources, server
    from localstripe.errors import UserError
    from stripe._request_options import RequestOptions
    from stripe.params import (
        InvoiceCreateParams,
        InvoiceFinalizeInvoiceParams,
        InvoiceItemCreateParams,
        InvoiceMarkUncollectibleParams,
        InvoiceVoidInvoiceParams,
    )
    from stripe.params.billing_portal import SessionCreateParams

    def dump_to_disk(self):
        with open(state_file, "wb") as f:
            pickle.dump(dict(self), f, protocol=pickle.HIGHEST_PROTOCOL)

    resources.Store.dump_to_disk = dump_to_disk
    Invoice, InvoiceItem, InvoiceLineItem = resources.Invoice, resources.InvoiceItem, resources.InvoiceLineItem
    journal, idempotent, failures = [], {}, []

    # Stripe's "uncollectible" status, which localstripe's Invoice.status does not know.
    plain_status = Invoice.status.fget
    Invoice.status = property(lambda self: "uncollectible" if getattr(self, "_uncollectible", False)
                              and not self._voided else plain_status(self))

    def error(status, message, param=None, kind="invalid_request_error"):
        return UserError(status, message, {"type": kind, **({"param": param} if param else {})})

    def check_params(data, params_type):
        allowed = set(params_type.__annotations__) - set(RequestOptions.__annotations__)
        for name in data:
            if name not in allowed:
                raise error(400, f"Received unknown parameter: {name}", name)

    def flag(value):
        return value in (True, "true")

    def retrieve_invoice(invoice_id):
        try:
            return Invoice._api_retrieve(invoice_id)
        except UserError:
            raise error(404, f"No such invoice: '{invoice_id}'", "invoice") from None

    def retrieve_customer(customer_id, param="customer"):
        if not customer_id:
            raise error(400, f"Missing required param: {param}.", param)
        try:
            return resources.Customer._api_retrieve(customer_id)
        except UserError:
            raise error(400, f"No such customer: '{customer_id}'", param) from None

    def export(obj):
        return server.json_response(obj._export())

    async def invoice_create(request, data, handler):
        if data.get("subscription"):
            return await handler(request)  # localstripe's own subscription invoices
        check_params(data, InvoiceCreateParams)
        retrieve_customer(data.get("customer"))
        pending = [ii for ii in InvoiceItem._api_list_all(None, customer=data["customer"], limit=99)._list
                   if ii.invoice is None]
        invoice = Invoice(customer=data["customer"], metadata=data.get("metadata"),
                          description=data.get("description"))
        # Since API version 2022-08-01 pending items stay off a new invoice unless asked for ("include").
        if data.get("pending_invoice_items_behavior", "exclude") != "include":
            for ii in pending:
                ii.invoice = None
            invoice.lines._list = []
        invoice.currency = data.get("currency") or "usd"
        invoice.collection_method = data.get("collection_method") or "charge_automatically"
        invoice.auto_advance = flag(data.get("auto_advance", False))
        invoice.billing_reason = "manual"
        invoice.number = data.get("number")
        invoice.hosted_invoice_url = invoice.invoice_pdf = None
        invoice.status_transitions["marked_uncollectible_at"] = None
        invoice._uncollectible = False
        return export(invoice)

    async def invoice_item_create(request, data, handler):
        if not data.get("invoice"):
            return await handler(request)  # a pending item: localstripe's own
        check_params(data, InvoiceItemCreateParams)
        invoice = retrieve_invoice(data["invoice"])
        if invoice.status != "draft":
            raise error(400, f"You can only add invoice items to draft invoices; {invoice.id} is {invoice.status}.",
                        "invoice")
        item = InvoiceItem._api_create(**data)
        invoice.lines._list.append(InvoiceLineItem(item))
        resources.store.dump_to_disk()
        return export(item)

    async def invoice_finalize(request, data, invoice_id):
        check_params(data, InvoiceFinalizeInvoiceParams)
        invoice = retrieve_invoice(invoice_id)
        if invoice.status != "draft":
            raise error(400, "This invoice is already finalized, you can't re-finalize a non-draft invoice.")
        invoice._finalize()
        invoice.auto_advance = flag(data.get("auto_advance", getattr(invoice, "auto_advance", True)))
        invoice.number = invoice.number or f"FAKE-{secrets.token_hex(4).upper()}-0001"
        invoice.hosted_invoice_url = f"{public_base}/i/{invoice.id}"
        invoice.invoice_pdf = f"{public_base}/i/{invoice.id}/pdf"
        return export(invoice)

    async def invoice_void(request, data, invoice_id, handler):
        invoice = retrieve_invoice(invoice_id)
        if invoice.payment_intent:
            return await handler(request)  # localstripe's own
        check_params(data, InvoiceVoidInvoiceParams)
        if invoice.status not in ("open", "uncollectible"):
            raise error(400, f"You can only void open or uncollectible invoices; {invoice.id} is {invoice.status}.")
        invoice._voided = True
        invoice.status_transitions["voided_at"] = int(time.time())
        return export(invoice)

    async def invoice_mark_uncollectible(request, data, invoice_id):
        check_params(data, InvoiceMarkUncollectibleParams)
        invoice = retrieve_invoice(invoice_id)
        if invoice.status != "open":
            raise error(400, f"You can only mark open invoices uncollectible; {invoice.id} is {invoice.status}.")
        invoice._uncollectible = True
        invoice.status_transitions["marked_uncollectible_at"] = int(time.time())
        return export(invoice)

    async def portal_session_create(request, data):
        check_params(data, SessionCreateParams)
        customer = retrieve_customer(data.get("customer"))
        secret = secrets.token_urlsafe(16)
        return server.json_response({
            "id": f"bps_{secrets.token_hex(12)}", "object": "billing_portal.session", "configuration": "bpc_fake",
            "created": int(time.time()), "customer": customer.id, "customer_account": None, "flow": None,
            "livemode": False, "locale": data.get("locale"), "on_behalf_of": None,
            "return_url": data.get("return_url"), "url": f"{public_base}/p/session/{secret}"})

    routes = [
        ("POST", re.compile(r"^/v1/invoices$"), lambda rq, d, h, m: invoice_create(rq, d, h)),
        ("POST", re.compile(r"^/v1/invoiceitems$"), lambda rq, d, h, m: invoice_item_create(rq, d, h)),
        ("POST", re.compile(r"^/v1/invoices/(\w+)/finalize$"), lambda rq, d, h, m: invoice_finalize(rq, d, m[1])),
        ("POST", re.compile(r"^/v1/invoices/(\w+)/void$"), lambda rq, d, h, m: invoice_void(rq, d, m[1], h)),
        ("POST", re.compile(r"^/v1/invoices/(\w+)/mark_uncollectible$"),
         lambda rq, d, h, m: invoice_mark_uncollectible(rq, d, m[1])),
        ("POST", re.compile(r"^/v1/billing_portal/sessions$"), lambda rq, d, h, m: portal_session_create(rq, d)),
    ]

    async def route(request, handler):
        for method, pattern, serve in routes:
            match = pattern.match(request.path)
            if match and request.method == method:
                data = await server.get_post_data(request) or {}
                data.pop("expand", None)
                return await serve(request, dict(data), handler, match)
        return await handler(request)

    @web.middleware
    async def extension(request, handler):
        if request.path == "/_config/data" and request.method == "DELETE":
            journal.clear(), idempotent.clear(), failures.clear()
            return await handler(request)
        if request.path == "/_config/vajra/journal":
            return web.json_response(journal)
        if request.path == "/_config/vajra/fail" and request.method == "POST":
            form = await request.post()
            failures.append([re.compile(form["path"]), int(form.get("times", 1))])
            return web.json_response({"ok": True})
        if not request.path.startswith("/v1/"):
            return await handler(request)
        key = request.headers.get("Idempotency-Key")
        body = await request.read()
        params = await server.get_post_data(request) if request.method == "POST" else dict(request.query)
        journal.append({"method": request.method, "path": request.path, "idempotency_key": key,
                        "params": params or {}})
        for failure in failures:
            if failure[1] > 0 and failure[0].search(request.path):
                failure[1] -= 1
                return web.json_response({"error": {"type": "api_error", "message": "Injected failure."}},
                                         status=500)
        if request.method == "POST" and key:
            seen = idempotent.get(key)
            if seen is not None:
                if seen["request"] != (request.path, body):
                    raise error(400, "Keys for idempotent requests can only be used with the same parameters "
                                     "they were first used with.", kind="idempotency_error")
                return web.Response(body=seen["body"], status=seen["status"], content_type="application/json",
                                    headers={"Idempotent-Replayed": "true"})
        response = await route(request, handler)
        if request.method == "POST" and key and 200 <= response.status < 300:
            idempotent[key] = {"request": (request.path, body), "status": response.status, "body": response.body}
        return response

    server.app.middlewares.append(extension)
    return server.app


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--state", required=True, help="a private directory for the pickled store")
    args = parser.parse_args()
    from aiohttp import web

    app = build_app(str(Path(args.state) / "localstripe.pickle"), f"http://127.0.0.1:{args.port}")
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


# ---- the launcher (runs in the test process) -------------------------------------------------------------------

def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class StripeFake:
    """A running fake: ``url`` for ``STRIPE_API_BASE``, ``reset()``, ``journal()``, ``fail(path, times)``."""

    def __init__(self, state_dir):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(Path(state_dir) / "stripe_fake.log", "wb")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen([sys.executable, "-m", "tests.stripe_fake", "--port", str(self.port),
                                         "--state", str(state_dir)], cwd=ROOT, stdout=self.log,
                                        stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                self.journal()
                break
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"the Stripe fake did not start; see {self.log.name}") from None
                time.sleep(0.05)

    def _call(self, method, path, form=None):
        data = urllib.parse.urlencode(form).encode() if form else None
        request = urllib.request.Request(self.url + path, data=data, method=method)
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.read()

    def reset(self):
        self._call("DELETE", "/_config/data")

    def journal(self):
        return json.loads(self._call("GET", "/_config/vajra/journal"))

    def fail(self, path, times=1):
        self._call("POST", "/_config/vajra/fail", {"path": path, "times": times})

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self.log.close()


if __name__ == "__main__":
    main()
