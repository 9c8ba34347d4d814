"""Dashboard forms for datasets and training jobs. They only check shape; the services decide what is allowed."""

from django import forms
from django.conf import settings

from adapters.api import NAME_RE
from adapters.forms import NAME_ERROR, TARGET_MODULES
from adapters.models import BaseModel
from gpu_runtime.training_spec import LR_SCHEDULERS


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


class TrainingJobForm(forms.Form):
    """The Training page's start form. Its values become a train request (training_quote / training_create);
    the service checks every range, and ``add_service_error`` puts its message on the field it names."""

    adapter_id = forms.RegexField(NAME_RE, max_length=64, label="Adapter", error_messages={"invalid": NAME_ERROR},
                                  help_text="An existing adapter continues from its current version; a new name "
                                            "creates the adapter.")
    base_model = forms.ChoiceField(label="Base model")
    dataset = forms.ChoiceField(label="Dataset")
    validation_dataset = forms.ChoiceField(label="Validation dataset", required=False,
                                           help_text="Its loss is measured after each epoch (the eval loss).")
    learning_rate = forms.FloatField(label="Learning rate", initial=1e-4)
    epochs = forms.IntegerField(initial=3)
    batch_size = forms.IntegerField(label="Batch size", initial=4, help_text="Records per optimizer step.")
    max_steps = forms.IntegerField(label="Max steps", required=False,
                                   help_text="Stops the job after this many steps, whatever the epochs.")
    seed = forms.IntegerField(initial=0)
    lr_scheduler = forms.ChoiceField(label="Learning-rate schedule", required=False, initial="constant",
                                     choices=[(s, s.capitalize()) for s in LR_SCHEDULERS],
                                     help_text="After the warmup: constant, or decaying linearly or as a cosine.")
    warmup_steps = forms.IntegerField(label="Warmup steps", required=False, initial=0,
                                      help_text="Steps whose rate rises linearly to the learning rate.")
    # A new adapter's shape; an adapter that has a version keeps its own (training_create refuses another).
    rank = forms.IntegerField(initial=8, required=False)
    alpha = forms.FloatField(initial=16, required=False)
    target_modules = forms.MultipleChoiceField(
        label="Target modules", choices=[(m, m) for m in TARGET_MODULES], initial=["q_proj", "v_proj"],
        required=False, widget=forms.CheckboxSelectMultiple)

    HYPERPARAMETERS = ("learning_rate", "epochs", "batch_size", "max_steps", "seed", "lr_scheduler", "warmup_steps")
    SHAPE = ("rank", "alpha", "target_modules")

    def __init__(self, *args, datasets, adapter_names=(), **kwargs):
        kwargs.setdefault("prefix", "job")  # the dataset form on the same page has a base_model field too
        super().__init__(*args, **kwargs)
        names = list(BaseModel.objects.order_by("name").values_list("name", flat=True))
        self.fields["base_model"].choices = [(n, n) for n in names]
        if settings.VAJRA_DEFAULT_BASE_MODEL in names:
            self.fields["base_model"].initial = settings.VAJRA_DEFAULT_BASE_MODEL
        self.fields["dataset"].choices = [
            (d.id, f"{d.name} · {d.records} record{'s' if d.records != 1 else ''} · {d.id}") for d in datasets]
        self.fields["validation_dataset"].choices = [("", "None")] + self.fields["dataset"].choices
        self.adapter_names = list(adapter_names)
        self.fields["adapter_id"].widget.attrs.update({"list": "job-adapter-names", "autocomplete": "off"})

    def hyperparameters(self, *, keep_shape):
        """The train request's hyperparameters; ``keep_shape`` (the adapter has a version) leaves the shape out."""
        data = self.cleaned_data
        names = self.HYPERPARAMETERS + (() if keep_shape else self.SHAPE)
        return {n: data[n] for n in names if data.get(n) not in (None, "", [])}

    def add_service_error(self, exc):
        """tenants.forms.add_service_error, for params like ``hyperparameters.rank`` and ``adapter_id``."""
        field = (getattr(exc, "param", None) or "").removeprefix("hyperparameters.")
        self.add_error(field if field in self.fields else None, str(exc.detail))
