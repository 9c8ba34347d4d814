"""OpenAPI for views that are not DRF views (the async /v1 inference API), and the error shape every API answers
with, for drf-spectacular.

``documented(post={...})`` gives a plain view a schema-only DRF view class: drf-spectacular documents the routes
whose view has one. Each method's dict holds ``extend_schema`` keyword arguments; the view itself still serves.
"""

from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.views import APIView

ErrorOut = inline_serializer("Error", {"error": inline_serializer("ErrorDetail", {
    "message": serializers.CharField(),
    "type": serializers.CharField(),
    "param": serializers.CharField(allow_null=True),
    "code": serializers.CharField(allow_null=True),
})})

ERROR = OpenApiResponse(ErrorOut, description="The one error shape (OpenAI's); the x-request-id header names the "
                                              "request.")


def errors(*statuses):
    """``responses`` entries in the error shape for these statuses."""
    return {status: ERROR for status in statuses}


def documented(**operations):
    def decorate(view):
        from tenants.auth import APIKeyAuthentication

        attributes = {"authentication_classes": [APIKeyAuthentication], "permission_classes": [],
                      "__doc__": view.__doc__, "__module__": view.__module__}
        for method, spec in operations.items():
            def operation(self, request, *args, **kwargs):
                raise NotImplementedError("schema only: the documented view serves this route")

            attributes[method] = extend_schema(**spec)(operation)
        view.cls = type(f"{view.__name__}_schema", (APIView,), attributes)
        view.initkwargs = {}
        return view

    return decorate
