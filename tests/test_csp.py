"""Content-Security-Policy: every HTML page carries the strict policy, and no page VAJRA renders
holds inline code the policy would block (a <script> without src, a <style> block, a style= or on*= attribute,
a javascript: URL). The Swagger UI page alone allows inline styles, and says so in its header."""

import ipaddress
from html.parser import HTMLParser

import pytest
from django.urls import reverse

from adapters.models import Adapter
from tenants.models import User
from tests.billing_helpers import close, invoice_of, usage
from tests.factories import make_base, make_dataset, make_job, make_node

pytestmark = pytest.mark.usefixtures("local_only")

STRICT = {
    "default-src": "'self'", "script-src": "'self'", "style-src": "'self'", "img-src": "'self' data:",
    "font-src": "'self'", "connect-src": "'self' ws://testserver", "object-src": "'none'", "base-uri": "'self'",
    "frame-ancestors": "'none'",
}
PAGES = ["dashboard", "api-keys", "members", "adapters", "playground", "training", "usage", "billing", "plan",
         "tenant-create", "audit-log", "nodes"]


def policy(response):
    header = response.headers["Content-Security-Policy"]
    return dict(part.strip().split(" ", 1) for part in header.split(";"))


class InlineCode(HTMLParser):
    """Collects what a strict CSP would refuse to run or apply."""

    def __init__(self):
        super().__init__()
        self.found, self._in_script = [], False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "script":  # a JSON block (json_script) is data the browser never runs, so CSP does not apply
            self._in_script = "src" not in attrs and attrs.get("type") != "application/json"
        if tag == "style":
            self.found.append("<style> block")
        for name, value in attrs.items():
            if name == "style" or name.startswith("on"):
                self.found.append(f"<{tag} {name}=...>")
            if name in ("href", "src", "action") and (value or "").strip().lower().startswith("javascript:"):
                self.found.append(f"<{tag} {name}=javascript:...>")

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._in_script and data.strip():
            self.found.append(f"inline <script>: {data.strip()[:60]}")


def inline_code(html):
    parser = InlineCode()
    parser.feed(html)
    return parser.found


@pytest.fixture
def staff_alice(alice):
    User.objects.filter(pk=alice.pk).update(is_staff=True)
    return alice


@pytest.fixture
def objects(acme, plan):
    """One of each thing a detail page shows: an adapter, a training job, an invoice, a node."""
    base = make_base()
    adapter = Adapter.objects.create(tenant=acme, base_model=base, name="support-bot")
    job = make_job(acme, adapter, make_dataset(acme))
    usage(acme, "3.2100000000", tier="warm")
    close()
    make_node("n1", base=base.name, state={})
    return {"adapter-detail": [adapter.name], "training-job": [job.id], "invoice": [invoice_of(acme).id]}


def every_page(objects):
    return [reverse(name) for name in PAGES] + [reverse(name, args=args) for name, args in objects.items()]


def test_every_dashboard_page_has_the_strict_policy_and_no_inline_code(client, staff_alice, objects, settings):
    settings.TEMPLATES[0]["OPTIONS"]["debug"] = True  # a template error fails the page, not just renders blank
    client.force_login(staff_alice)
    for url in every_page(objects):
        response = client.get(url)
        assert response.status_code == 200, url
        assert policy(response) == STRICT, url
        assert inline_code(response.content.decode()) == [], url


@pytest.mark.parametrize("url", ["/login/", "/signup/", "/no-such-page/"])
def test_signed_out_pages_and_errors_too(client, db, url):
    response = client.get(url)
    assert policy(response) == STRICT
    assert inline_code(response.content.decode()) == []


def test_the_server_error_page_is_clean(rf):
    from django.views.defaults import server_error

    assert inline_code(server_error(rf.get("/")).content.decode()) == []


def test_https_pages_allow_wss_back_to_the_host(client, db, settings):
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    settings.VAJRA_TRUSTED_PROXIES = (ipaddress.ip_network("10.0.0.0/8"),)  # the ingress that ends TLS
    settings.ALLOWED_HOSTS = ["vajra.example.com"]
    response = client.get("/login/", HTTP_X_FORWARDED_PROTO="https", HTTP_HOST="vajra.example.com",
                          REMOTE_ADDR="10.1.2.3")
    assert policy(response)["connect-src"] == "'self' wss://vajra.example.com"


def test_api_docs_keep_the_strict_policy(client, db):
    response = client.get("/api/docs/")
    assert response.status_code == 200
    assert policy(response) == STRICT
    assert inline_code(response.content.decode()) == []
    script = client.get("/static/vajra/api-docs.js")
    assert script.status_code == 200 and b"SwaggerUIBundle" in b"".join(script.streaming_content)
    assert "Content-Security-Policy" not in script.headers  # JavaScript, not a page


def test_json_and_the_admin(client, staff_alice):
    assert "Content-Security-Policy" not in client.get("/healthz").headers
    User.objects.filter(pk=staff_alice.pk).update(is_superuser=True)
    client.force_login(staff_alice)
    response = client.get("/admin/tenants/auditentry/")
    assert response.status_code == 200 and policy(response) == STRICT


def test_an_inline_script_would_be_caught():
    """The checker itself: each kind of inline code it must find."""
    found = inline_code('<script>alert(1)</script><p style="color:red" onclick="x()"><a href="javascript:x()">'
                        '<style>p{}</style><script src="/static/a.js"></script>'
                        '<script type="application/json">{"x": [1]}</script>')
    assert len(found) == 5, found
