"""The API reference page (/api/docs/) shows every operation of the schema, the /v1 ones included, in its sections,
and a streamed endpoint's answer as text/event-stream with its events."""

import pytest
from playwright.sync_api import expect

from tests.helpers import api_schema

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    pytest.mark.filterwarnings("ignore:Session-scoped fixtures defined as instance methods"
                               ":pytest.PytestRemovedIn10Warning"),
]


def test_the_api_reference_lists_every_operation_with_its_streams(live_server, page):
    schema = api_schema()
    page.goto(f"{live_server.url}/api/docs/")
    for tag in ("Inference", "OpenAI-compatible", "Training", "Usage and billing", "Adapters",
                "Tenants, people and keys", "Base models"):
        expect(page.locator(f'.opblock-tag[data-tag="{tag}"]')).to_be_visible()
    for path, item in schema["paths"].items():
        for method in item:
            operation = page.locator(f'.opblock-{method}:has(.opblock-summary-path[data-path="{path}"])')
            expect(operation).to_have_count(1)
    chat = page.locator('.opblock-post:has(.opblock-summary-path[data-path="/v1/chat/completions"])')
    chat.locator(".opblock-summary").click()
    expect(chat.locator(".responses-wrapper")).to_contain_text("text/event-stream")
    expect(chat.locator(".responses-wrapper")).to_contain_text("402")
