"""REST API for the base-model catalog and a tenant's adapters (/api/v1/...)."""

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.parsers import MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from billing.plans import tier_info
from vajra.errors import InvalidRequest
from vajra.parsers import JSONParser
from vajra.schema import data_list, enum, errors, shape
from vajra.serializers import StrictSerializer

from . import access, downloads, services
from .models import Adapter

NAME_RE = r"^[a-z0-9][a-z0-9._-]{0,63}$"


class VersionOut(serializers.Serializer):
    number = serializers.IntegerField()
    status = serializers.CharField()
    source = serializers.CharField()
    sha256 = serializers.CharField()
    size_bytes = serializers.IntegerField()
    rank = serializers.IntegerField()
    alpha = serializers.FloatField()
    target_modules = serializers.ListField(child=serializers.CharField())
    dtype = serializers.CharField()
    created_at = serializers.DateTimeField()


TierCardOut = shape("TierCard", {
    "tier": enum(*(tier for tier, _ in Adapter.TIER_CHOICES)), "units_per_query": serializers.IntegerField(),
    "usd_per_query": serializers.FloatField(), "micro_usd_per_query": serializers.IntegerField(),
    "plan": serializers.CharField(), "adapter_ready_ms_guarantee": serializers.IntegerField()},
    help_text="The adapter's tier with its price per query under the tenant's plan (billing.plans.tier_info).")


class AdapterOut(serializers.Serializer):
    name = serializers.CharField()
    description = serializers.CharField()
    base_model = serializers.CharField(source="base_model.name")
    current_version = VersionOut(allow_null=True)
    created_at = serializers.DateTimeField()
    tier = serializers.SerializerMethodField()
    model = serializers.SerializerMethodField()

    @extend_schema_field(TierCardOut)
    def get_tier(self, instance):
        infos = self.context.get("tier_infos")  # a list passes each tier's card once, not once per adapter
        return infos[instance.tier] if infos else tier_info(instance.tier, tenant=instance.tenant_id)

    @extend_schema_field(serializers.CharField(allow_null=True, help_text="name@vN of its current version, as "
                                                                          "adapter_id and model take it."))
    def get_model(self, instance):
        return f"{instance.name}@v{instance.current_version.number}" if instance.current_version else None


class AdapterListView(APIView):
    required_actions = {"GET": "adapters.view", "POST": "adapters.write"}
    parser_classes = [MultiPartParser]

    class UploadIn(StrictSerializer):
        name = serializers.RegexField(NAME_RE, max_length=64, error_messages={
            "invalid": "Use 1-64 lowercase letters, digits, '.', '_' and '-', starting with a letter or digit."})
        base_model = serializers.CharField(max_length=100)
        description = serializers.CharField(max_length=500, required=False, default="", allow_blank=True)

    @extend_schema(responses={200: data_list(AdapterOut)})
    def get(self, request):
        tenant = request.auth.tenant
        infos = {tier: tier_info(tier, tenant=tenant) for tier, _ in Adapter.TIER_CHOICES}
        return Response({"data": AdapterOut(access.tenant_adapters(tenant=tenant), many=True,
                                            context={"tier_infos": infos}).data})

    @extend_schema(request={"multipart/form-data": UploadIn}, responses={201: AdapterOut, **errors(409)})
    def post(self, request):
        fields = {k: request.data[k] for k in request.data if k not in request.FILES}
        data = self.UploadIn(data=fields)
        data.is_valid(raise_exception=True)
        files = [(f.name, f) for name in request.FILES for f in request.FILES.getlist(name)]  # streamed, never read()
        if not files:
            raise InvalidRequest("Attach the adapter as 'file': a zip or tar of the PEFT folder, or the two files "
                                 "adapter_config.json and adapter_model.safetensors.", param="file", code="no_file")
        base_model = access.access_base_model(name=data.validated_data["base_model"])
        version = services.adapter_upload(principal=request.auth, base_model=base_model, files=files,
                                          name=data.validated_data["name"],
                                          description=data.validated_data["description"])
        return Response(AdapterOut(version.adapter).data, status=status.HTTP_201_CREATED)


class AdapterDetailView(APIView):
    required_actions = {"GET": "adapters.view", "PATCH": "adapters.write", "DELETE": "adapters.write"}
    parser_classes = [JSONParser]

    class TierIn(StrictSerializer):
        tier = serializers.ChoiceField(choices=[t for t, _ in Adapter.TIER_CHOICES])

    @extend_schema(responses={200: AdapterOut})
    def get(self, request, name):
        return Response(AdapterOut(access.access_adapter(tenant=request.auth.tenant, name=name)).data)

    @extend_schema(request=TierIn, responses={200: AdapterOut})
    def patch(self, request, name):
        data = self.TierIn(data=request.data)
        data.is_valid(raise_exception=True)
        adapter = services.adapter_set_tier(principal=request.auth, name=name, **data.validated_data)
        return Response(AdapterOut(adapter).data)

    @extend_schema(responses={204: None})
    def delete(self, request, name):
        services.adapter_delete(principal=request.auth, name=name)
        return Response(status=status.HTTP_204_NO_CONTENT)


class AdapterVersionListView(APIView):
    required_action = "adapters.view"

    @extend_schema(responses={200: data_list(VersionOut)})
    def get(self, request, name):
        adapter = access.access_adapter(tenant=request.auth.tenant, name=name)
        return Response({"data": VersionOut(adapter.versions.order_by("-number"), many=True).data})


class AdapterVersionDownloadView(APIView):
    required_action = "adapters.view"

    @extend_schema(responses={(200, "application/zip"): OpenApiResponse(
        OpenApiTypes.BINARY, description="The version's PEFT folder as a zip: adapter_config.json and "
                                         "adapter_model.safetensors, loadable by PeftModel.from_pretrained.")})
    def get(self, request, name, number):
        return downloads.version_download(tenant=request.auth.tenant, name=name, number=number)
