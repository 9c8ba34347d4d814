"""``manage.py import_model SOURCE --name NAME``: imports a base model into the model store and the catalog.

SOURCE is a Hugging Face directory, a .zip or .tar(.gz) of one, a .gguf file or an s3:// URL. The conversion runs in
the model store's own process (it loads torch; the web's processes never do); this command prints its progress and
enters the model into the catalog when it succeeds. A refused source exits non-zero with the reason.
"""

import subprocess
import tempfile
import time
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from adapters.model_imports import base_model_register, import_command, import_env
from gpu_runtime.model_import import read_progress


class Command(BaseCommand):
    help = "Import a base model (directory, archive, GGUF or s3:// URL) into the model store and the catalog."

    def add_arguments(self, parser):
        parser.add_argument("source", help="a Hugging Face directory, a .zip/.tar(.gz) of one, a .gguf or s3://...")
        parser.add_argument("--name", required=True, help="the base model's name (its model id)")
        parser.add_argument("--force", action="store_true", help="replace a model of that name in the store")

    def handle(self, *args, source, name, force, **options):
        if not source.startswith("s3://"):
            source = str(Path(source).resolve())
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "progress.json"
            proc = subprocess.Popen(import_command(name=name, source=source, progress=path, force=force),
                                    env=import_env(), cwd=settings.BASE_DIR, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, text=True)
            shown = None
            while proc.poll() is None:
                shown = self.show(read_progress(path), shown)
                time.sleep(0.5)
            stderr = proc.stderr.read()
            progress = read_progress(path) or {}
            self.show(progress, shown)
        if progress.get("state") != "succeeded":
            error = progress.get("error") or {"code": "import_failed", "message": stderr.strip()[-2000:]}
            raise CommandError(f"{name} was not imported ({error['code']}): {error['message']}")
        base = base_model_register(manifest=progress["manifest"])
        variants = ", ".join(f"{v} {info['bytes']} bytes" for v, info in base.variants.items())
        self.stdout.write(self.style.SUCCESS(
            f"imported {base.name}: {base.architecture['model_type']}, context {base.context_length}, "
            f"source sha256 {base.source.get('sha256', '-')}, variants: {variants}"))

    def show(self, progress, shown):
        if progress and (progress.get("phase"), progress.get("percent")) != shown:
            shown = (progress.get("phase"), progress.get("percent"))
            self.stdout.write(f"{shown[1]:3d}% {shown[0]}")
        return shown
