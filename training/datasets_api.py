"""REST API for a tenant's training datasets (/api/v1/datasets): JSONL upload, list, get, delete."""

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.parsers import MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from adapters.access import access_base_model
from vajra.errors import InvalidRequest
from vajra.schema import data_list, errors
from vajra.serializers import StrictSerializer

from . import access, datasets


class DatasetOut(serializers.Serializer):
    id = serializers.CharField()
    object = serializers.SerializerMethodField()
    name = serializers.CharField()
    format = serializers.CharField()
    records = serializers.IntegerField()
    size_bytes = serializers.IntegerField()
    tokens = serializers.IntegerField()
    tokens_exact = serializers.BooleanField()
    sha256 = serializers.CharField()
    created_at = serializers.DateTimeField()

    def get_object(self, instance) -> str:
        return "dataset"


class DatasetListView(APIView):
    required_actions = {"GET": "datasets.read", "POST": "datasets.write"}
    parser_classes = [MultiPartParser]

    class DatasetUploadIn(StrictSerializer):
        name = serializers.CharField(max_length=200, required=False)
        base_model = serializers.CharField(max_length=100, required=False)

    @extend_schema(responses={200: data_list(DatasetOut)})
    def get(self, request):
        return Response({"data": DatasetOut(access.tenant_datasets(tenant=request.auth.tenant), many=True).data})

    @extend_schema(request={"multipart/form-data": DatasetUploadIn}, responses={201: DatasetOut})
    def post(self, request):
        data = self.DatasetUploadIn(data={k: request.data[k] for k in request.data if k not in request.FILES})
        data.is_valid(raise_exception=True)
        files = [f for name in request.FILES for f in request.FILES.getlist(name)]
        if len(files) != 1 or "file" not in request.FILES:
            raise InvalidRequest("Attach one JSONL file as 'file': one JSON object per line, chat ('messages') or "
                                 "'prompt'/'completion' records.", param="file", code="no_file")
        base_name = data.validated_data.get("base_model")
        base_model = access_base_model(name=base_name) if base_name else None
        dataset = datasets.dataset_upload(principal=request.auth, file=files[0], base_model=base_model,
                                          name=data.validated_data.get("name"))
        return Response(DatasetOut(dataset).data, status=status.HTTP_201_CREATED)


class DatasetDetailView(APIView):
    required_actions = {"GET": "datasets.read", "DELETE": "datasets.write"}

    @extend_schema(responses={200: DatasetOut})
    def get(self, request, dataset_id):
        return Response(DatasetOut(access.access_dataset(tenant=request.auth.tenant, dataset_id=dataset_id)).data)

    @extend_schema(responses={204: None, **errors(409)})
    def delete(self, request, dataset_id):
        datasets.dataset_delete(principal=request.auth, dataset_id=dataset_id)
        return Response(status=status.HTTP_204_NO_CONTENT)
