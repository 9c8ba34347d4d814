"""A new customer signs up, creates a key, uses it, and revokes it: all through the browser."""

import re

import pytest
from playwright.sync_api import Error, expect

from tests.factories import PASSWORD

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    # pytest-playwright 0.10's own base_url fixture trips a pytest 9 deprecation; nothing of ours.
    pytest.mark.filterwarnings("ignore:Session-scoped fixtures defined as instance methods"
                               ":pytest.PytestRemovedIn10Warning"),
]


def call_me(page, live_server, secret):
    return page.request.get(f"{live_server.url}/api/v1/me", headers={"Authorization": f"Bearer {secret}"})


def test_signup_create_use_and_revoke_a_key(page, live_server):
    page.goto(f"{live_server.url}/signup/")
    page.get_by_label("Email").fill("frida@example.test")
    page.get_by_label("Your name").fill("Frida")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_label("Organisation name").fill("Frida Foods")
    expect(page.get_by_label("Tenant slug")).to_have_value("frida-foods")  # suggested from the name
    page.get_by_role("button", name="Create account").click()

    expect(page).to_have_url(f"{live_server.url}/")
    expect(page.get_by_role("heading", level=1)).to_have_text("Frida Foods")
    expect(page.locator("header")).to_contain_text("frida@example.test")

    page.get_by_role("navigation", name="Main").get_by_role("link", name="API keys").click()
    expect(page).to_have_url(f"{live_server.url}/keys/")
    page.get_by_label("Key name").fill("ci")
    page.get_by_role("checkbox", name=re.compile(r"^infer:")).check()
    page.get_by_role("button", name="Create key").click()

    secret = page.locator("#new-key-secret").inner_text().strip()
    assert re.fullmatch(r"[A-Za-z0-9]{8}\.[A-Za-z0-9]+", secret), secret
    expect(page.get_by_text("it will not be shown again")).to_be_visible()
    page.screenshot(path="/tmp/dashboard.png", full_page=True)

    response = call_me(page, live_server, secret)
    assert response.status == 200, response.text()
    assert response.json()["tenant"]["slug"] == "frida-foods"
    assert response.json()["scopes"] == ["infer"]

    page.reload()  # the secret page replaced its history entry, so this is a GET, not a second POST
    expect(page.locator("#new-key-secret")).to_have_count(0)
    assert secret not in page.content()
    page.goto(f"{live_server.url}/keys/")
    assert secret not in page.content()
    row = page.get_by_role("row").filter(has_text="ci")
    expect(row.get_by_text("active", exact=True)).to_be_visible()

    page.once("dialog", lambda dialog: dialog.accept())
    row.get_by_role("button", name="Revoke").click()
    expect(page.get_by_role("status")).to_contain_text("Revoked the key")
    expect(page.get_by_role("row").filter(has_text="ci").get_by_text("revoked", exact=True)).to_be_visible()

    response = call_me(page, live_server, secret)
    assert response.status == 401
    assert response.json()["error"]["code"] == "api_key_revoked"


def test_the_policy_refuses_inline_script_and_the_tests_notice(page, live_server, csp_violations):
    """Proof that a CSP break cannot pass unseen: an injected inline script is refused, and reported."""
    page.goto(f"{live_server.url}/login/")
    with pytest.raises(Error):
        page.add_script_tag(content="window.injected = true")
    assert page.evaluate("window.injected === undefined")
    expect(page.get_by_role("button", name="Sign in")).to_be_visible()  # app.js and app.css still apply
    assert any("inline script" in text for text in csp_violations)
    csp_violations.clear()  # expected here; any other test that sees one fails
