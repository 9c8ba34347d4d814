"""Input serializers that refuse what they do not know, instead of silently dropping it."""

from rest_framework import serializers


class StrictSerializer(serializers.Serializer):
    """Unknown fields are a 400 that names them; a body that is not an object is a 400 too."""

    def to_internal_value(self, data):
        if not isinstance(data, dict):
            raise serializers.ValidationError(
                {"non_field_errors": ["The request body must be a JSON object."]}, code="invalid_body"
            )
        unknown = sorted(set(data) - set(self.fields))
        if unknown:
            allowed = ", ".join(sorted(name for name, f in self.fields.items() if not f.read_only))
            raise serializers.ValidationError(
                {unknown[0]: [f"Unknown field(s): {', '.join(unknown)}. Allowed fields: {allowed}."]},
                code="unknown_field",
            )
        return super().to_internal_value(data)
