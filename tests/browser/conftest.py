"""Headless Chromium from Debian (``apt-get install chromium``): Playwright's download cannot work here."""

import os

import pytest

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    if not os.path.exists(CHROMIUM):
        message = f"{CHROMIUM} is missing: apt-get install chromium"
        if os.environ.get("CI") == "true":
            pytest.fail(message)  # CI must run the browser tests, never silently skip them
        pytest.skip(message)
    return {
        **browser_type_launch_args,
        "executable_path": CHROMIUM,
        "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
    }


@pytest.hookimpl(trylast=True)  # after pytest-django's own reordering
def pytest_collection_modifyitems(items):
    """Browser tests run last: Playwright's sync API keeps an event loop running in the main thread until
    the session ends, and asgiref's async_to_sync (channels, websocket tests) refuses to run there."""
    items.sort(key=lambda item: item.get_closest_marker("browser") is not None)


@pytest.fixture(autouse=True)
def csp_violations(page):
    """Every Content-Security-Policy refusal on any page a browser test visits fails that test: a script, style or
    websocket the policy blocks would otherwise only show as a page that quietly does less."""
    found = []
    page.on("console", lambda message: "Content Security Policy" in message.text and found.append(message.text))
    yield found
    assert found == [], f"the page broke the Content-Security-Policy: {found}"
