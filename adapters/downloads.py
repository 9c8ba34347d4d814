"""Adapter versions out: the PEFT folder (``adapter_config.json`` + ``adapter_model.safetensors``) as a zip,
streamed from storage a block at a time, never whole in memory. The same zip serves a training checkpoint."""

import zipfile

from django.http import Http404, StreamingHttpResponse

from gpu_runtime.adapter_validation import CONFIG_FILE, WEIGHTS_FILE

from .access import access_adapter
from .models import AdapterVersion
from .services import adapter_storage

PEFT_FILES = (CONFIG_FILE, WEIGHTS_FILE)
BLOCK_BYTES = 1 << 20
MAX_VERSION_NUMBER = 2 ** 31 - 1  # the column's range: a larger number names no version


class _Pipe:
    """The unseekable file zipfile writes into; each block it wrote is taken out and sent on."""

    def __init__(self):
        self.chunks = []

    def write(self, data):
        self.chunks.append(bytes(data))
        return len(data)

    def flush(self):
        pass

    def take(self):
        data = b"".join(self.chunks)
        self.chunks.clear()
        return data


def zip_stream(storage, folder_key, names=PEFT_FILES):
    """Yields a zip of the files ``names`` under ``folder_key`` in ``storage``, one block at a time. Stored, not
    deflated: safetensors weights barely compress."""
    pipe = _Pipe()
    with zipfile.ZipFile(pipe, "w", zipfile.ZIP_STORED) as archive:
        for name in names:
            key = f"{folder_key}/{name}"
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.file_size = storage.size(key)  # past 2 GiB zipfile writes zip64 records
            with storage.open(key, "rb") as source, archive.open(info, "w") as target:
                while block := source.read(BLOCK_BYTES):
                    target.write(block)
                    yield pipe.take()
            yield pipe.take()
    yield pipe.take()


def folder_zip_response(folder_key, filename, missing_message):
    """A streamed zip of the PEFT folder at ``folder_key`` of the adapters storage, named ``filename``; a folder
    whose files are gone from storage is a 404 before any byte is sent."""
    storage = adapter_storage()
    if not all(storage.exists(f"{folder_key}/{name}") for name in PEFT_FILES):
        raise Http404(missing_message)
    response = StreamingHttpResponse(zip_stream(storage, folder_key), content_type="application/zip")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    response["Cache-Control"] = "private, no-store"
    return response


def access_downloadable_version(*, tenant, name, number):
    """The tenant's ready version ``number`` of adapter ``name``, uploaded or trained; anything else is a 404 that
    never says whether another tenant has it."""
    adapter = access_adapter(tenant=tenant, name=name)
    version = None
    if number <= MAX_VERSION_NUMBER:
        version = AdapterVersion.objects.filter(adapter=adapter, number=number).first()
    if version is None:
        raise Http404(f"Adapter '{adapter.name}' has no version {number}.")
    if version.status != AdapterVersion.READY:
        raise Http404(f"Version {number} of '{adapter.name}' is {version.status}: only ready versions have files.")
    version.adapter = adapter
    return version


def version_download(*, tenant, name, number):
    version = access_downloadable_version(tenant=tenant, name=name, number=number)
    return folder_zip_response(version.storage_key, f"{version.adapter.name}-v{version.number}.zip",
                               f"The files of {version.adapter.name} v{version.number} are no longer in storage.")
