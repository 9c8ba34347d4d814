"""Apps, middleware, templates, static files, logging, DRF and the API schema."""

from .env import BASE_DIR, VAR_DIR, env_bool, env_choice, env_str

DEBUG = env_bool("DJANGO_DEBUG", True)

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.humanize",  # intcomma: thousands separators on the dashboard
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework_api_key",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "django_prometheus",
    "vajra",
    "tenants",
    "inference",
    "adapters",
    "fleet",
    "serving",
    "training",
    "billing",
]

# The Prometheus pair brackets the others (first and last); vajra.metrics runs django-prometheus's hooks inline,
# without the thread hop Django would add around them on async (streaming) requests.
MIDDLEWARE = [
    "vajra.metrics.PrometheusBeforeMiddleware",
    "vajra.middleware.ForwardedProtoMiddleware",
    "vajra.middleware.RequestIdMiddleware",
    "vajra.middleware.ContentLengthMiddleware",
    "vajra.middleware.NullCharacterMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "vajra.middleware.ContentSecurityPolicyMiddleware",
    # the browser's, left out for the views that take API keys alone (vajra/page_middleware.py)
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "vajra.metrics.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "vajra.urls"
ASGI_APPLICATION = "vajra.asgi.application"
WSGI_APPLICATION = "vajra.wsgi.application"
AUTH_USER_MODEL = "tenants.User"
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "dashboard"
LOGOUT_REDIRECT_URL = "login"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "tenants.context_processors.tenancy",
            ],
        },
    },
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

STATIC_URL = "/static/"
STATIC_ROOT = env_str("DJANGO_STATIC_ROOT", str(VAR_DIR / "static"))
STATICFILES_DIRS = [BASE_DIR / "vajra" / "static"]
# Serve straight from the app directories until collectstatic has run (make up runs it).
WHITENOISE_USE_FINDERS = DEBUG

EMAIL_BACKEND = env_str("DJANGO_EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
DEFAULT_FROM_EMAIL = env_str("DJANGO_DEFAULT_FROM_EMAIL", "VAJRA <noreply@vajra.local>")

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "tenants.auth.APIKeyAuthentication",
        "tenants.auth.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["tenants.permissions.IsTenantPrincipal"],
    "DEFAULT_THROTTLE_CLASSES": ["tenants.limits.TenantRateThrottle"],
    "DEFAULT_PARSER_CLASSES": ["vajra.parsers.JSONParser"],  # DRF's, bounded in depth
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "EXCEPTION_HANDLER": "vajra.errors.api_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "vajra.schema.VajraAutoSchema",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "VAJRA API",
    "DESCRIPTION": "Multi-tenant LoRA adapter serving: tenants, API keys, adapters, inference, training, billing.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # "role": a member's role in a tenant and the OpenAI API's message roles; "type": a tool's and others
    "ENUM_NAME_OVERRIDES": {"MemberRoleEnum": "tenants.roles.ROLES",
                            "MessageRoleEnum": ["system", "developer", "user", "assistant"],
                            "FunctionTypeEnum": ["function"]},
}

LOG_LEVEL = env_choice("VAJRA_LOG_LEVEL", "INFO", {"DEBUG", "INFO", "WARNING", "ERROR"})
# plain for people, json (one object per line with the request id, vajra/logging.py) for log pipelines
VAJRA_LOG_FORMAT = env_choice("VAJRA_LOG_FORMAT", "plain", {"plain", "json"})
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"request_id": {"()": "vajra.middleware.RequestIdLogFilter"}},
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"},
        "json": {"()": "vajra.logging.JsonFormatter"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": VAJRA_LOG_FORMAT, "filters": ["request_id"]},
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
