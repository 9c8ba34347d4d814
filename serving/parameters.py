"""The sampling parameters of an inference request, defined once for the three ways in: ``POST
/v1/models/{id}/infer`` (under ``parameters``), the OpenAI-compatible API and the playground websocket.

    temperature   a number in [0, 2]; 0 is greedy
    top_p         a number in (0, 1]
    top_k         an integer in [0, 1000000]; 0 is off
    max_tokens    an integer in [1, 8192], then at most the plan's cap (checked at submit, dispatch.py)
    seed          an integer in [0, 2^63-1]
    stop          a string or a list of at most 4 strings of 1 to 64 characters
    presence_penalty, frequency_penalty
                  numbers in [-2, 2]; 0 is off (OpenAI's, over the generated tokens)
    repetition_penalty
                  a number in (0, 10]; 1 is off (transformers' and vLLM's, over the prompt and generated tokens)
    logit_bias    an object of at most 300 token ids (strings of digits, in the base model's vocabulary) to numbers
                  in [-100, 100], added to those tokens' logits
    min_tokens    an integer in [0, 8192], at most max_tokens: EOS and stop strings are suppressed until that many
                  tokens were generated (vLLM's)

The bounds are the runtime's own (gpu_runtime/generation.py); gpu_runtime/sampling.py says how the options change
the logits. The sampling dict sent to the runtime carries an option only when the request sets it off its neutral
value. A number is a JSON number: booleans, strings, NaN and
Infinity are refused, whatever their value. null leaves a parameter at its default (OpenAI's convention), which
each API states (``defaults``). A refusal names every bad field at once: its param and code are the first's, its
message says all of them, the first first, in the same words whichever way the request came in.
"""

import json
import math

from drf_spectacular.extensions import OpenApiSerializerFieldExtension
from rest_framework import serializers

from gpu_runtime.generation import (
    MAX_LOGIT_BIAS,
    MAX_LOGIT_BIAS_ENTRIES,
    MAX_PENALTY,
    MAX_REPETITION_PENALTY,
    MAX_SEED,
    MAX_STOP_LENGTH,
    MAX_STOP_SEQUENCES,
    MAX_TEMPERATURE,
    MAX_TOKENS,
    MAX_TOP_K,
)
from vajra.errors import InvalidRequest

SHOWN_CHARS = 40  # a refused value is quoted in the message up to this length


def shown(value):
    text = json.dumps(value)  # NaN and Infinity as JSON spells them
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS - 3] + "..."


class NumberField(serializers.Field):
    """A JSON number in [low, high] ((low, high] with ``low_open``); with ``integer``, a whole one (5.0 counts)."""

    def __init__(self, *, low, high, integer=False, low_open=False, **kwargs):
        super().__init__(required=False, allow_null=True, **kwargs)
        self.low, self.high, self.integer, self.low_open = low, high, integer, low_open

    def rule(self):
        kind = "an integer" if self.integer else "a number"
        return f"{self.field_name} must be {kind} in {'(' if self.low_open else '['}{self.low}, {self.high}]"

    def refuse(self, data, code):
        raise serializers.ValidationError(f"{self.rule()}; got {shown(data)}.", code=code)

    def to_internal_value(self, data):
        number = isinstance(data, int) and not isinstance(data, bool)
        if isinstance(data, float):  # JSON has no NaN nor Infinity; Python's parser takes them all the same
            number = math.isfinite(data) and (data.is_integer() or not self.integer)
        if not number:
            self.refuse(data, "invalid_type")
        above_low = data > self.low if self.low_open else data >= self.low
        if not (above_low and data <= self.high):  # an int of any size compares exactly, before any conversion
            self.refuse(data, "out_of_range")
        return int(data) if self.integer else float(data)

    def to_representation(self, value):
        return value


class StopField(serializers.Field):
    """A string or a list of strings, each 1 to MAX_STOP_LENGTH characters, at most MAX_STOP_SEQUENCES of them."""

    def __init__(self, **kwargs):
        super().__init__(required=False, allow_null=True, **kwargs)

    def to_internal_value(self, data):
        stops = [data] if isinstance(data, str) else data
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            code = "invalid_type"
        elif len(stops) > MAX_STOP_SEQUENCES or not all(0 < len(s) <= MAX_STOP_LENGTH for s in stops):
            code = "out_of_range"
        elif any("\x00" in s for s in stops):
            code = "null_characters_not_allowed"
        else:
            return stops
        raise serializers.ValidationError(
            f"{self.field_name} must be a string or a list of at most {MAX_STOP_SEQUENCES} strings of 1 to "
            f"{MAX_STOP_LENGTH} characters without NUL; got {shown(data)}.", code=code)

    def to_representation(self, value):
        return value


MAX_TOKEN_ID_DIGITS = 18  # past any vocabulary; a longer string of digits is refused before it becomes a number


class LogitBiasField(serializers.Field):
    """An object of token ids (strings of ASCII digits, as JSON object keys are) to biases in [-MAX_LOGIT_BIAS,
    MAX_LOGIT_BIAS], at most MAX_LOGIT_BIAS_ENTRIES of them; whether the ids are in the base model's vocabulary is
    checked at submit (dispatch.check_vocabulary), where the base model is known."""

    def __init__(self, **kwargs):
        super().__init__(required=False, allow_null=True, **kwargs)

    def refuse(self, why, code):
        raise serializers.ValidationError(f"logit_bias {why}.", code=code)

    def to_internal_value(self, data):
        if not isinstance(data, dict):
            self.refuse(f"must be an object of token ids to numbers; got {shown(data)}", "invalid_type")
        if len(data) > MAX_LOGIT_BIAS_ENTRIES:
            self.refuse(f"may bias at most {MAX_LOGIT_BIAS_ENTRIES} tokens; got {len(data)}", "out_of_range")
        biases = {}
        for key, bias in data.items():
            if not (key.isascii() and key.isdigit() and len(key) <= MAX_TOKEN_ID_DIGITS):
                self.refuse(f"keys must be token ids (non-negative integers); got {shown(key)}", "invalid_token_id")
            # an int of any size compares exactly; math.isfinite would overflow on a 400-digit one
            number = (isinstance(bias, int) and not isinstance(bias, bool)) or (
                isinstance(bias, float) and math.isfinite(bias))
            if not number or not -MAX_LOGIT_BIAS <= bias <= MAX_LOGIT_BIAS:
                self.refuse(f"values must be numbers in [-{MAX_LOGIT_BIAS}, {MAX_LOGIT_BIAS}]; got {shown(bias)} for "
                            f"token {key}", "out_of_range" if number else "invalid_type")
            biases[str(int(key))] = bias
        return biases

    def to_representation(self, value):
        return value


class NumberFieldSchema(OpenApiSerializerFieldExtension):
    """The API schema states a NumberField's type and bounds (OpenAPI 3.0)."""

    target_class = NumberField

    def map_serializer_field(self, auto_schema, direction):
        field = self.target
        return {"type": "integer" if field.integer else "number", "minimum": field.low, "maximum": field.high,
                "nullable": True, **({"exclusiveMinimum": True} if field.low_open else {})}


class StopFieldSchema(OpenApiSerializerFieldExtension):
    target_class = StopField

    def map_serializer_field(self, auto_schema, direction):
        text = {"type": "string", "minLength": 1, "maxLength": MAX_STOP_LENGTH}
        return {"oneOf": [text, {"type": "array", "items": text, "maxItems": MAX_STOP_SEQUENCES}], "nullable": True}


class LogitBiasFieldSchema(OpenApiSerializerFieldExtension):
    target_class = LogitBiasField

    def map_serializer_field(self, auto_schema, direction):
        return {"type": "object", "additionalProperties": {"type": "number", "minimum": -MAX_LOGIT_BIAS,
                                                           "maximum": MAX_LOGIT_BIAS},
                "maxProperties": MAX_LOGIT_BIAS_ENTRIES, "nullable": True}


def max_tokens_field():
    return NumberField(low=1, high=MAX_TOKENS, integer=True)


class SamplingFields(serializers.Serializer):
    """The parameters as fields, for an API's input serializer to inherit (flat, or nested as ``parameters``)."""

    temperature = NumberField(low=0, high=MAX_TEMPERATURE)
    top_p = NumberField(low=0, high=1, low_open=True)
    top_k = NumberField(low=0, high=MAX_TOP_K, integer=True)
    max_tokens = max_tokens_field()
    seed = NumberField(low=0, high=MAX_SEED, integer=True)
    stop = StopField()
    presence_penalty = NumberField(low=-MAX_PENALTY, high=MAX_PENALTY)
    frequency_penalty = NumberField(low=-MAX_PENALTY, high=MAX_PENALTY)
    repetition_penalty = NumberField(low=0, high=MAX_REPETITION_PENALTY, low_open=True)
    logit_bias = LogitBiasField()
    min_tokens = NumberField(low=0, high=MAX_TOKENS, integer=True)


# The options: the runtime's neutral value of each, which the sampling dict leaves out.
OPTIONS = {"presence_penalty": 0, "frequency_penalty": 0, "repetition_penalty": 1, "logit_bias": {}, "min_tokens": 0,
           "n": 1, "logprobs": None}
NAMES = tuple(name for name in SamplingFields().fields if name not in OPTIONS)


def defaults(*, temperature):
    """The defaults of one API (they differ only in temperature: OpenAI's is 1); max_tokens None is the plan's
    default (dispatch.sampling_within_plan)."""
    return {"temperature": temperature, "top_p": 1.0, "top_k": 0, "max_tokens": None, "seed": None, "stop": []}


def sampling(data, default):
    """The runtime's sampling dict from validated fields: every parameter that is missing or null at its default,
    and the options the request sets off their neutral value (``OPTIONS``: n and logprobs as each API reads them)."""
    values = {name: default[name] if data.get(name) is None else data[name] for name in NAMES}
    return {**values, **{name: data[name] for name in OPTIONS
                         if data.get(name) is not None and data[name] != OPTIONS[name]}}


def problems(detail, prefix=""):
    """Every (param, message, code) in a DRF error detail, in field order; a message that does not start with its
    field's name is prefixed with the param (as vajra.errors words a single problem)."""
    if isinstance(detail, dict):
        found = []
        for key, value in detail.items():
            name = prefix if key == "non_field_errors" else (f"{prefix}.{key}" if prefix else str(key))
            found += problems(value, name)
        return found
    if isinstance(detail, list):
        return [problem for item in detail for problem in problems(item, prefix)]
    message = str(detail)
    if prefix and not message.lower().startswith(prefix.split(".")[-1].lower()):
        message = f"{prefix}: {message}"
    return [(prefix or None, message, getattr(detail, "code", None) or "invalid")]


def refusal(errors, *, each=False):
    """A serializer's errors as one 400: the first problem's param and code, and a message that says them all; with
    ``each``, also every problem on its own (``errors``: param, message, code), for a form that marks each field."""
    found = problems(errors)
    param, _, code = found[0]
    extra = {"errors": [{"param": p, "message": m, "code": c} for p, m, c in found]} if each else None
    return InvalidRequest(" ".join(message for _, message, _ in found), param=param, code=code, extra=extra)
