"""REST API for adapters imported by URL: POST starts an import (202), GET follows it."""

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from vajra.parsers import JSONParser
from vajra.schema import data_list
from vajra.serializers import StrictSerializer

from . import access, url_import
from .api import NAME_RE


class ImportOut(serializers.Serializer):
    id = serializers.CharField()
    object = serializers.SerializerMethodField()
    name = serializers.CharField()
    base_model = serializers.CharField(source="base_model.name")
    url = serializers.CharField()
    status = serializers.CharField()
    bytes_received = serializers.IntegerField()
    bytes_total = serializers.IntegerField(allow_null=True)
    model = serializers.SerializerMethodField()
    error = serializers.SerializerMethodField()
    created_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)

    def get_object(self, row) -> str:
        return "adapter.import"

    def get_model(self, row) -> str | None:
        return f"{row.name}@v{row.version.number}" if row.version_id else None

    def get_error(self, row) -> dict | None:
        return url_import.import_error(row)


class ImportListView(APIView):
    required_actions = {"GET": "adapters.view", "POST": "adapters.write"}
    parser_classes = [JSONParser]

    class ImportIn(StrictSerializer):
        name = serializers.RegexField(NAME_RE, max_length=64, error_messages={
            "invalid": "Use 1-64 lowercase letters, digits, '.', '_' and '-', starting with a letter or digit."})
        base_model = serializers.CharField(max_length=100)
        url = serializers.CharField(max_length=2000)
        description = serializers.CharField(max_length=500, required=False, default="", allow_blank=True)

    @extend_schema(responses={200: data_list(ImportOut)})
    def get(self, request):
        rows = url_import.tenant_imports(tenant=request.auth.tenant)[:100]
        return Response({"data": ImportOut(rows, many=True).data})

    @extend_schema(request=ImportIn, responses={202: ImportOut})
    def post(self, request):
        data = self.ImportIn(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        row = url_import.adapter_import_create(
            principal=request.auth, base_model=access.access_base_model(name=values["base_model"]),
            name=values["name"], url=values["url"], description=values["description"])
        return Response(ImportOut(row).data, status=status.HTTP_202_ACCEPTED)


class ImportDetailView(APIView):
    required_action = "adapters.view"

    @extend_schema(responses={200: ImportOut})
    def get(self, request, import_id):
        return Response(ImportOut(access.access_adapter_import(tenant=request.auth.tenant, import_id=import_id)).data)
