"""OpenAI's files API over a tenant's training datasets, so the unmodified ``openai`` package uploads them:

    POST   /v1/files                 multipart ``file`` + ``purpose=fine-tune`` -> the file
    GET    /v1/files                 newest first; ?after=<file id>, ?limit=1..100, ?order=asc|desc, ?purpose=
    GET    /v1/files/{file_id}
    DELETE /v1/files/{file_id}
    GET    /v1/files/{file_id}/content   the JSONL as uploaded

A file is a dataset: one upload path (training.datasets.dataset_upload, every bad line reported in the 400), one
row, and its id is the dataset's id. Uploads through this API are named as OpenAI names files (``file-...``); a
dataset uploaded through /api/v1/datasets (``ds_...``) is listed here too, and either id trains through either API.
Only ``fine-tune`` files are kept: VAJRA has no other use for a file.
"""

from datetime import datetime

from django.db.models import Q
from django.http import FileResponse, Http404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.parsers import MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from adapters.services import adapter_storage
from vajra.errors import InvalidRequest
from vajra.negotiation import JSONErrors
from vajra.schema import errors
from vajra.serializers import StrictSerializer

from . import access, datasets

PURPOSE = "fine-tune"
MAX_PAGE = 100


def unix(moment):
    return int(moment.timestamp()) if isinstance(moment, datetime) else None


class FileOut(serializers.Serializer):
    """OpenAI's file object."""

    id = serializers.CharField()
    object = serializers.SerializerMethodField()
    bytes = serializers.IntegerField(source="size_bytes")
    created_at = serializers.SerializerMethodField()
    filename = serializers.CharField(source="name")
    purpose = serializers.SerializerMethodField()
    status = serializers.SerializerMethodField()
    expires_at = serializers.SerializerMethodField()
    status_details = serializers.SerializerMethodField()

    def get_object(self, dataset) -> str:
        return "file"

    def get_created_at(self, dataset) -> int:
        return unix(dataset.created_at)

    def get_purpose(self, dataset) -> str:
        return PURPOSE

    def get_status(self, dataset) -> str:
        return "processed"  # a file is stored only once every line has passed

    def get_expires_at(self, dataset) -> int | None:
        return None

    def get_status_details(self, dataset) -> str | None:
        return None


class FileListOut(serializers.Serializer):
    object = serializers.CharField(default="list")
    data = FileOut(many=True)
    has_more = serializers.BooleanField()
    first_id = serializers.CharField(allow_null=True)
    last_id = serializers.CharField(allow_null=True)


class FileDeletedOut(serializers.Serializer):
    id = serializers.CharField()
    object = serializers.CharField(default="file")
    deleted = serializers.BooleanField()


class FileUploadIn(StrictSerializer):
    purpose = serializers.ChoiceField(choices=[PURPOSE], error_messages={
        "invalid_choice": "\"{input}\" is not supported: VAJRA keeps only fine-tuning files (purpose "
                          "'fine-tune')."})


def page_param(request, name, default, *, minimum, maximum):
    """An integer query parameter within bounds (a 400 naming it otherwise)."""
    raw = request.query_params.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequest(f"{name} must be an integer, got {raw!r}.", param=name, code="invalid_value") from None
    if not minimum <= value <= maximum:
        raise InvalidRequest(f"{name} must be between {minimum} and {maximum}, got {value}.", param=name,
                             code="invalid_value")
    return value


def after_cursor(rows, cursor, *, descending):
    """The rows after ``cursor`` (a row of the same list) in (created_at, id) order."""
    if descending:
        return rows.filter(Q(created_at__lt=cursor.created_at) | Q(created_at=cursor.created_at, pk__lt=cursor.pk))
    return rows.filter(Q(created_at__gt=cursor.created_at) | Q(created_at=cursor.created_at, pk__gt=cursor.pk))


LIST_PARAMETERS = [
    OpenApiParameter("after", str, description="The id of the last file of the previous page."),
    OpenApiParameter("limit", int, description="1 to 100 files (default 100)."),
    OpenApiParameter("order", str, enum=["asc", "desc"], description="By creation time (default desc)."),
    OpenApiParameter("purpose", str, description="Only files of this purpose (every file here is 'fine-tune')."),
]


class FileListView(APIView):
    required_actions = {"GET": "datasets.read", "POST": "datasets.write"}
    parser_classes = [MultiPartParser]

    @extend_schema(operation_id="v1_files_list", parameters=LIST_PARAMETERS,
                   responses={200: FileListOut, **errors(404)})  # 404: an ``after`` that is no file of yours
    def get(self, request):
        tenant = request.auth.tenant
        limit = page_param(request, "limit", MAX_PAGE, minimum=1, maximum=MAX_PAGE)
        order = request.query_params.get("order") or "desc"
        if order not in ("asc", "desc"):
            raise InvalidRequest(f"order must be 'asc' or 'desc', got {order!r}.", param="order", code="invalid_value")
        descending = order == "desc"
        rows = access.tenant_datasets(tenant=tenant).order_by(*(("-created_at", "-id") if descending
                                                               else ("created_at", "id")))
        if request.query_params.get("purpose") not in (None, "", PURPOSE):
            rows = rows.none()
        after = request.query_params.get("after")
        if after:
            rows = after_cursor(rows, access.access_dataset(tenant=tenant, dataset_id=after), descending=descending)
        page = list(rows[:limit + 1])
        data = FileOut(page[:limit], many=True).data
        return Response({"object": "list", "data": data, "has_more": len(page) > limit,
                         "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None})

    @extend_schema(operation_id="v1_files_create", request={"multipart/form-data": FileUploadIn},
                   responses={200: FileOut}, description="The multipart body's 'file' is the JSONL, one chat record "
                                                         "{\"messages\": [...]} per line, beside its purpose.")
    def post(self, request):
        data = FileUploadIn(data={k: request.data[k] for k in request.data if k not in request.FILES})
        data.is_valid(raise_exception=True)  # the purpose is checked before the file is read
        files = [f for name in request.FILES for f in request.FILES.getlist(name)]
        if len(files) != 1 or "file" not in request.FILES:
            raise InvalidRequest("Attach one JSONL file as 'file': one JSON object per line, each a chat record "
                                 "{\"messages\": [...]}.", param="file", code="no_file")
        dataset = datasets.dataset_upload(principal=request.auth, file=files[0], dataset_id=datasets.new_file_id())
        return Response(FileOut(dataset).data)


class FileDetailView(APIView):
    required_actions = {"GET": "datasets.read", "DELETE": "datasets.write"}

    @extend_schema(operation_id="v1_files_retrieve", responses={200: FileOut})
    def get(self, request, file_id):
        return Response(FileOut(access.access_dataset(tenant=request.auth.tenant, dataset_id=file_id)).data)

    @extend_schema(operation_id="v1_files_delete", responses={200: FileDeletedOut})
    def delete(self, request, file_id):
        dataset = datasets.dataset_delete(principal=request.auth, dataset_id=file_id)
        return Response({"id": dataset.id, "object": "file", "deleted": True})


class FileContentView(APIView):
    required_action = "datasets.read"
    content_negotiation_class = JSONErrors  # the client asks for application/binary

    @extend_schema(operation_id="v1_files_content", responses={(200, "application/jsonl"): OpenApiResponse(
        OpenApiTypes.BINARY, description="The file's bytes as uploaded.")})
    def get(self, request, file_id):
        dataset = access.access_dataset(tenant=request.auth.tenant, dataset_id=file_id)
        try:
            handle = adapter_storage().open(dataset.storage_key, "rb")
        except OSError:
            raise Http404(f"The content of file '{dataset.id}' is no longer in storage.") from None
        return FileResponse(handle, content_type="application/jsonl", as_attachment=True, filename=dataset.name)
