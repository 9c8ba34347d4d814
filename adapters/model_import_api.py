"""Staff API for base-model imports (/api/v1/base-models/imports): start one, follow its progress."""

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.exceptions import NotFound, PermissionDenied
from rest_framework.permissions import BasePermission
from rest_framework.response import Response
from rest_framework.views import APIView

from tenants.permissions import require_session
from vajra.parsers import JSONParser
from vajra.schema import data_list
from vajra.serializers import StrictSerializer

from .model_imports import base_model_import_refresh, base_model_import_start, import_summary, recent_imports
from .models import BaseModelImport


class IsStaff(BasePermission):
    """A signed-in member of the platform's staff (session only): base models are shared by every tenant."""

    def has_permission(self, request, view):
        require_session(request)
        if not request.user.is_authenticated:
            return False
        if not request.user.is_staff:
            raise PermissionDenied("Importing base models is for platform staff.", code="staff_only")
        return True


class BaseModelImportOut(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    source = serializers.CharField()
    status = serializers.CharField()
    phase = serializers.CharField()
    percent = serializers.IntegerField()
    created_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)
    error = serializers.DictField(allow_null=True)


class BaseModelImportListView(APIView):
    permission_classes = [IsStaff]
    throttle_classes = []
    parser_classes = [JSONParser]

    class BaseModelImportIn(StrictSerializer):
        name = serializers.CharField(max_length=64)
        source = serializers.CharField(max_length=1000, help_text="a path inside VAJRA_MODEL_IMPORT_DIR (a Hugging "
                                       "Face directory, a .zip/.tar of one, a .gguf) or an s3:// URL")

    @extend_schema(responses={200: data_list(BaseModelImportOut)})
    def get(self, request):
        rows = recent_imports(limit=50)
        return Response({"data": BaseModelImportOut([import_summary(r) for r in rows], many=True).data})

    @extend_schema(request=BaseModelImportIn, responses={202: BaseModelImportOut})
    def post(self, request):
        data = self.BaseModelImportIn(data=request.data)
        data.is_valid(raise_exception=True)
        row = base_model_import_start(user=request.user, **data.validated_data)
        return Response(BaseModelImportOut(import_summary(row)).data, status=status.HTTP_202_ACCEPTED)


class BaseModelImportDetailView(APIView):
    permission_classes = [IsStaff]
    throttle_classes = []

    @extend_schema(responses={200: BaseModelImportOut})
    def get(self, request, import_id):
        if not BaseModelImport.objects.filter(pk=import_id).exists():
            raise NotFound("No such import.", code="import_not_found")
        return Response(BaseModelImportOut(import_summary(base_model_import_refresh(import_id=import_id))).data)
