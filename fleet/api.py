"""REST API of the base-model catalog (/api/v1/base-models): each model with the nodes that serve it."""

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from vajra.schema import data_list

from .catalog import base_models_with_nodes


class ServingNodeOut(serializers.Serializer):
    name = serializers.CharField()
    status = serializers.CharField()
    device = serializers.CharField()


class BaseModelOut(serializers.Serializer):
    id = serializers.CharField()
    aliases = serializers.ListField(child=serializers.CharField())
    context_length = serializers.IntegerField()
    architecture = serializers.DictField()
    nodes = ServingNodeOut(many=True)


class BaseModelListView(APIView):
    required_action = "catalog.read"

    @extend_schema(responses={200: data_list(BaseModelOut)})
    def get(self, request):
        return Response({"data": [{"id": b.name, "aliases": b.aliases, "context_length": b.context_length,
                                   "architecture": b.architecture, "nodes": nodes}
                                  for b, nodes in base_models_with_nodes()]})
