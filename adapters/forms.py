"""Dashboard forms for adapters. They only check shape; the services decide what is allowed."""

from django import forms

from .api import NAME_RE
from .models import Adapter, BaseModel

NAME_ERROR = "Use 1-64 lowercase letters, digits, '.', '_' and '-', starting with a letter or digit."
ACCEPT = ".zip,.tar,.tar.gz,.tgz,.json,.safetensors"
# The linear layers a LoRA may target (gpu_runtime.adapter_validation.BaseFacts names the same).
TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class MultipleFileInput(forms.FileInput):
    allow_multiple_selected = True


class MultipleFileField(forms.FileField):
    """One archive, or the two files: a list of UploadedFile either way."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("widget", MultipleFileInput(attrs={"multiple": True, "accept": ACCEPT}))
        super().__init__(*args, **kwargs)

    def clean(self, data, initial=None):
        files = [f for f in (data if isinstance(data, (list, tuple)) else [data]) if f]
        if not files:
            raise forms.ValidationError(self.error_messages["required"], code="required")
        cleaned = []
        for f in files:
            cleaned.append(super().clean(f, initial))
        return cleaned


class AdapterUploadForm(forms.Form):
    # Field names match adapter_upload's keywords, so a service error's param names the field at fault.
    name = forms.RegexField(NAME_RE, max_length=64, error_messages={"invalid": NAME_ERROR},
                            help_text="Uploading again under the same name adds a new version.")
    base_model = forms.ChoiceField(label="Base model")
    description = forms.CharField(max_length=500, required=False)
    file = MultipleFileField(label="Adapter files", help_text=(
        "A .zip, .tar, .tar.gz or .tgz of the PEFT folder, or the two files adapter_config.json and "
        "adapter_model.safetensors together. Pickled .bin and .pt files are refused."))

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["base_model"].choices = [(b.name, b.name) for b in BaseModel.objects.order_by("name")]

    def service_kwargs(self):
        data = self.cleaned_data
        return {"name": data["name"], "description": data["description"],
                "files": [(f.name, f) for f in data["file"]]}  # streamed from their temporary files


class AdapterImportForm(forms.Form):
    name = forms.RegexField(NAME_RE, max_length=64, error_messages={"invalid": NAME_ERROR},
                            help_text="Importing again under the same name adds a new version.")
    base_model = forms.ChoiceField(label="Base model")
    url = forms.CharField(label="Archive URL", max_length=2000, help_text=(
        "An https:// or s3:// URL of a .zip, .tar, .tar.gz or .tgz of the PEFT folder, from a host or bucket this "
        "platform allows."))
    description = forms.CharField(max_length=500, required=False)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["base_model"].choices = [(b.name, b.name) for b in BaseModel.objects.order_by("name")]


class AdapterTierForm(forms.Form):
    tier = forms.ChoiceField(choices=Adapter.TIER_CHOICES, widget=forms.RadioSelect)


