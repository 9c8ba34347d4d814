"""OpenAPI descriptions of VAJRA's authentication, for drf-spectacular."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class APIKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "tenants.auth.APIKeyAuthentication"
    name = "apiKey"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "bearerFormat": "<prefix>.<secret>",
                "description": "A tenant API key: `Authorization: Bearer <key>`. Create keys on the API keys page."}


class SessionAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "tenants.auth.SessionAuthentication"
    name = "session"

    def get_security_definition(self, auto_schema):
        return {"type": "apiKey", "in": "cookie", "name": "sessionid",
                "description": "The dashboard's session (with the CSRF token on writes)."}
