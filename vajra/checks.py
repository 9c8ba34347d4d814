"""Deploy checks that Django's own make by import path: its CSRF and X-Frame-Options checks look for
``django.middleware.csrf.CsrfViewMiddleware`` and ``django.middleware.clickjacking.XFrameOptionsMiddleware`` in
MIDDLEWARE by name, which names their subclasses (vajra/page_middleware.py). Those two are silenced in the settings
and made here by class, with the same ids' meaning."""

from django.conf import settings
from django.core import checks
from django.utils.module_loading import import_string


def _in_middleware(cls):
    return any(issubclass(import_string(path), cls) for path in settings.MIDDLEWARE)


@checks.register(checks.Tags.security, deploy=True)
def browser_protections(app_configs, **kwargs):
    from django.middleware.clickjacking import XFrameOptionsMiddleware
    from django.middleware.csrf import CsrfViewMiddleware

    found = []
    if not _in_middleware(XFrameOptionsMiddleware):
        found.append(checks.Warning("No XFrameOptionsMiddleware (or a subclass) in MIDDLEWARE: pages are served "
                                    "without an X-Frame-Options header, so another site may frame them.",
                                    id="vajra.W002"))
    if not _in_middleware(CsrfViewMiddleware):
        found.append(checks.Warning("No CsrfViewMiddleware (or a subclass) in MIDDLEWARE: forms and session-"
                                    "authenticated API calls have no cross-site request forgery protection.",
                                    id="vajra.W003"))
    return found
