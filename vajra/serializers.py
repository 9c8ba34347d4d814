"""Input serializers that refuse what they do not know, instead of silently dropping it."""

from rest_framework import serializers

NOT_AN_OBJECT = "The request body must be a JSON object."


class StrictSerializer(serializers.Serializer):
    """Unknown fields are a 400 that names them; a body that is not an object is a 400 too."""

    def validate_empty_values(self, data):
        if data is None and self.parent is None:  # a body of JSON null: DRF would only say "No data provided"
            raise serializers.ValidationError({"non_field_errors": [NOT_AN_OBJECT]}, code="invalid_body")
        return super().validate_empty_values(data)

    def to_internal_value(self, data):
        if not isinstance(data, dict):
            raise serializers.ValidationError({"non_field_errors": [NOT_AN_OBJECT]}, code="invalid_body")
        unknown = sorted(set(data) - set(self.fields))
        if unknown:
            allowed = ", ".join(sorted(name for name, f in self.fields.items() if not f.read_only))
            raise serializers.ValidationError(
                {unknown[0]: [f"Unknown field(s): {', '.join(unknown)}. Allowed fields: {allowed}."]},
                code="unknown_field",
            )
        return super().to_internal_value(data)
