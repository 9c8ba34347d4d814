"""Dashboard forms for adapters and datasets. They only check shape; the services decide what is allowed."""

from django import forms
from django.conf import settings

from .api import NAME_RE
from .models import Adapter, BaseModel

NAME_ERROR = "Use 1-64 lowercase letters, digits, '.', '_' and '-', starting with a letter or digit."
ACCEPT = ".zip,.tar,.tar.gz,.tgz,.json,.safetensors"


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
                "files": [(f.name, f.read()) for f in data["file"]]}


class AdapterTierForm(forms.Form):
    tier = forms.ChoiceField(choices=Adapter.TIER_CHOICES, widget=forms.RadioSelect)


class DatasetUploadForm(forms.Form):
    # Field names match dataset_upload's keywords, so a service error's param names the field at fault.
    file = forms.FileField(label="JSONL file", widget=forms.FileInput(attrs={"accept": ".jsonl,.json,.txt"}),
                           help_text="One JSON object per line: chat records ({\"messages\": [...]} with system, "
                                     "user and assistant roles) or {\"prompt\": ..., \"completion\": ...}.")
    name = forms.CharField(max_length=200, required=False, help_text="Defaults to the file's name.")
    base_model = forms.ChoiceField(label="Base model", required=False,
                                   help_text="Records must fit its context; its tokenizer counts the tokens.")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        names = list(BaseModel.objects.order_by("name").values_list("name", flat=True))
        self.fields["base_model"].choices = [(n, n) for n in names]
        if settings.VAJRA_DEFAULT_BASE_MODEL in names:
            self.fields["base_model"].initial = settings.VAJRA_DEFAULT_BASE_MODEL
        elif not names:  # no node has reported a model yet: the upload is checked without a length limit
            del self.fields["base_model"]
