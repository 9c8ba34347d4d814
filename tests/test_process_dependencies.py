"""Each process runs on its own dependencies: the web (daphne, control worker, beat) on the core and the `web`
extra of pyproject.toml, a runtime node on the core and the `runtime` extra.

One venv holds every extra, so a child process stands in for an install of one: an import hook refuses every
installed distribution outside the process's requirement closure (its extra, the core and what they require,
read from the installed metadata), exactly as a missing package would (ModuleNotFoundError). The child then
imports every module of the process's packages. The packages are the ones lint-imports checks
([tool.importlinter]), so a new web package is covered here once it is listed there.
"""

import json
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
CONTRACTS = {c["id"]: c for c in PYPROJECT["tool"]["importlinter"]["contracts"]}
WEB_PACKAGES = CONTRACTS["web-without-model-libraries"]["source_modules"]
RUNTIME_PACKAGES = CONTRACTS["runtime-without-web"]["source_modules"]

# (distribution and module names alike)
MODEL_LIBRARIES = {"torch", "transformers", "peft", "safetensors", "gguf", "llguidance"}
WEB_LIBRARIES = {"django", "rest_framework", "channels", "daphne", "psycopg", "stripe", "weasyprint"}
# Installers present in every Python 3.11 venv, whichever extras it holds.
VENV_TOOLS = {"pip", "setuptools", "wheel"}


def extra(name):
    return PROJECT["optional-dependencies"][name]


def closure(requirements):
    """Canonical names of the distributions that ``requirements`` install, from the installed metadata."""
    found, todo = set(), [Requirement(r) for r in requirements]
    seen = set()
    while todo:
        req = todo.pop()
        key = (canonicalize_name(req.name), frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        found.add(key[0])
        environments = [{"extra": e} for e in req.extras] or [{"extra": ""}]
        for line in metadata.distribution(req.name).requires or []:
            sub = Requirement(line)
            if sub.marker is None or any(sub.marker.evaluate(env) for env in environments):
                todo.append(sub)
    return found


def refused_modules(allowed):
    """Top-level modules of installed distributions outside ``allowed`` (canonical distribution names)."""
    allowed = allowed | {canonicalize_name(PROJECT["name"])} | VENV_TOOLS
    return sorted(module for module, dists in metadata.packages_distributions().items()
                  if not any(canonicalize_name(d) in allowed for d in dists))


# The child: refuses ``refused``, imports what the process imports, and reports what it loaded and what it was
# refused. A module that catches the refusal (an optional import) goes on, as it would without the package.
CHILD = """
import importlib, json, os, pkgutil, sys

refused_names, packages, process = json.loads(sys.argv[1])
refused_names = set(refused_names)
asked = {}


class Absent:
    # Wraps each finder of sys.meta_path: a refused name is found by none, so ``import`` raises
    # ModuleNotFoundError and importlib.util.find_spec answers None, as for a package that is not installed.
    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, fullname, path=None, target=None):
        top = fullname.partition(".")[0]
        if top in refused_names:
            caller = sys._getframe(1)
            while caller and caller.f_globals.get("__name__", "").startswith(("importlib", "_frozen_importlib")):
                caller = caller.f_back
            asked.setdefault(top, caller.f_globals.get("__name__", "?") if caller else "?")
            return None
        find_spec = getattr(self.finder, "find_spec", None)
        return find_spec(fullname, path, target) if find_spec else None

    def __getattr__(self, name):
        return getattr(self.finder, name)


sys.meta_path[:] = [Absent(finder) for finder in sys.meta_path]

if process == "web":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vajra.settings")
    import django
    django.setup()
    import vajra.asgi  # noqa: F401
    import vajra.celery
    vajra.celery.app.loader.import_default_modules()
    tasks = sorted(vajra.celery.app.tasks)
else:
    import gpu_runtime.celery_app
    gpu_runtime.celery_app.app.loader.import_default_modules()  # what the worker does at start
    tasks = sorted(gpu_runtime.celery_app.app.tasks)

imported = []
for name in packages:
    package = importlib.import_module(name)
    imported.append(name)
    for info in pkgutil.walk_packages(package.__path__, prefix=name + "."):
        importlib.import_module(info.name)
        imported.append(info.name)

print(json.dumps({"imported": imported, "tasks": tasks, "asked": asked,
                  "loaded": sorted({m.partition(".")[0] for m in sys.modules})}))
"""


def run_as(process, packages, allowed, also_refused=()):
    """Runs the child for ``process``; returns (refused module names, the child's report)."""
    refused = refused_modules(allowed) + list(also_refused)
    child = subprocess.run([sys.executable, "-c", CHILD, json.dumps([refused, packages, process])],
                           cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert child.returncode == 0, child.stderr[-4000:]
    return refused, json.loads(child.stdout.strip().splitlines()[-1])


def web_closure():
    return closure(PROJECT["dependencies"] + extra("web"))


def runtime_closure():
    return closure(PROJECT["dependencies"] + extra("runtime"))


def test_extras_name_what_each_process_needs():
    core = {canonicalize_name(Requirement(r).name) for r in PROJECT["dependencies"]}
    lists = {name: {canonicalize_name(Requirement(r).name) for r in extra(name)} for name in ("web", "runtime", "test")}
    # every pin is in one list only, so two processes never disagree on a version
    names = [canonicalize_name(Requirement(r).name) for r in PROJECT["dependencies"] + sum(
        (extra(n) for n in ("web", "runtime", "test")), [])]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
    assert {"celery", "kombu", "redis"} <= core
    assert {"django", "djangorestframework", "channels", "daphne", "tokenizers", "jinja2"} <= core | lists["web"]
    assert {"torch", "transformers", "gguf", "safetensors", "boto3"} <= core | lists["runtime"]
    # neither process pulls in the other's libraries, not even through a dependency of a dependency
    web_distributions = {"django", "djangorestframework", "channels", "channels-redis", "daphne", "psycopg",
                         "stripe", "weasyprint", "django-storages", "whitenoise"}
    assert not web_closure() & MODEL_LIBRARIES, web_closure() & MODEL_LIBRARIES
    assert not runtime_closure() & web_distributions, runtime_closure() & web_distributions
    # every pin is exact
    for line in PROJECT["dependencies"] + sum(PROJECT["optional-dependencies"].values(), []):
        assert [s.operator for s in Requirement(line).specifier] == ["=="], line
    # the one-machine install holds every process's extra
    makefile = (ROOT / "Makefile").read_text()
    assert "pip install --quiet -e '.[web,runtime,test]'" in makefile


def test_every_existing_top_level_package_is_packaged_and_checked():
    include = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests", "bench"}
    assert {f"{p}*" for p in packages} <= set(include)
    assert packages == set(PYPROJECT["tool"]["importlinter"]["root_packages"])
    assert set(WEB_PACKAGES) | set(RUNTIME_PACKAGES) == packages


OURS = set(WEB_PACKAGES) | set(RUNTIME_PACKAGES)
SETTINGS_TEXT = "\n".join(p.read_text() for p in (ROOT / "vajra" / "settings").glob("*.py"))
# Distributions a process needs that its code never imports by name.
LOADED_FOR_US = {
    "web": {"psycopg": "Django's postgresql backend, for a postgres:// DATABASE_URL"},
    "runtime": {"tokenizers": "transformers' fast tokenizers", "jinja2": "transformers' chat templates",
                "gguf": "transformers, reading the GGUF that the model store imports"},
}


def imported_libraries(packages):
    """Top-level names of the libraries that ``packages`` import, at module level or inside a function, and
    that the project's own modules they import (a gpu_runtime module the web uses) import in turn."""
    import grimp

    graph = grimp.build_graph(*sorted(OURS), include_external_packages=True)
    modules = set()
    for package in packages:
        for module in graph.find_descendants(package) | {package}:
            modules |= {module} | graph.find_upstream_modules(module)
    found = set()
    for module in modules:
        if module.partition(".")[0] in OURS:
            found |= {m.partition(".")[0] for m in graph.find_modules_directly_imported_by(module)}
    return found - OURS - set(sys.stdlib_module_names)


def distribution_modules():
    modules = {}
    for module, dists in metadata.packages_distributions().items():
        for dist in dists:
            modules.setdefault(canonicalize_name(dist), set()).add(module)
    return modules


@pytest.mark.parametrize("process", ["web", "runtime"])
def test_every_library_the_code_imports_is_in_its_extra_and_every_pin_is_used(process):
    packages, allowed = (WEB_PACKAGES, web_closure()) if process == "web" else (RUNTIME_PACKAGES, runtime_closure())
    imported = imported_libraries(packages)
    by_module = metadata.packages_distributions()
    missing = {m for m in imported if not {canonicalize_name(d) for d in by_module.get(m, [])} & allowed}
    assert not missing, f"{process} imports {sorted(missing)}, which its extra does not install"
    modules = distribution_modules()
    for line in PROJECT["dependencies"] + extra(process):
        name = canonicalize_name(Requirement(line).name)
        provided = modules.get(name, set())
        used = provided & imported or (process == "web" and any(f'"{m}' in SETTINGS_TEXT for m in provided))
        assert used or name in LOADED_FOR_US[process], f"{process} never imports {name} ({sorted(provided)})"


def asked_by_our_code(child):
    """Refused modules that the project's own code asked for: a dependency its process lacks."""
    return {name: who for name, who in child["asked"].items() if who.partition(".")[0] in OURS}


def test_the_web_imports_every_module_with_the_web_dependencies_only():
    refused, child = run_as("web", WEB_PACKAGES, web_closure())
    assert MODEL_LIBRARIES <= set(refused)
    assert not MODEL_LIBRARIES & set(child["loaded"])
    assert {"vajra.urls", "vajra.asgi", "vajra.celery", "tenants.urls", "tenants.views", "tenants.consumers",
            "billing.urls", "billing.views", "billing.tasks", "adapters.urls", "adapters.views", "fleet.tasks",
            "serving.urls", "serving.views", "serving.consumers", "serving.tasks", "training.urls", "training.views",
            "training.consumers", "training.tasks"} <= set(child["imported"])
    assert {"control.inference_finished", "control.node_heartbeat", "control.invoices_close_period"} <= set(
        child["tasks"])
    # third-party optional imports (stripe's other HTTP clients, DRF's pygments) are theirs to do without
    assert asked_by_our_code(child) == {}


def test_the_runtime_imports_every_module_with_the_runtime_dependencies_only():
    # the web's packages are the project's own, not a distribution: refused by name
    refused, child = run_as("runtime", RUNTIME_PACKAGES, runtime_closure(), also_refused=WEB_PACKAGES)
    assert WEB_LIBRARIES | set(WEB_PACKAGES) <= set(refused)
    assert not (WEB_LIBRARIES | set(WEB_PACKAGES)) & set(child["loaded"])
    assert {"gpu_runtime.celery_app", "gpu_runtime.node", "gpu_runtime.tasks", "gpu_runtime.engine",
            "gpu_runtime.trainer", "gpu_runtime.model_store", "gpu_runtime.base_model",
            "gpu_runtime.training_tasks"} <= set(child["imported"])
    assert {"runtime.infer", "runtime.train", "runtime.ping"} <= set(child["tasks"])
    # kombu probes Django for its JSON encoder, transformers probes accelerate: both go on without
    assert asked_by_our_code(child) == {}
