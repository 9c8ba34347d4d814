"""The deployment files in platform/: every Kubernetes manifest validates against the
Kubernetes API schemas (kubernetes-validate, strict: unknown fields are errors), the pieces fit together
(selectors, services, probes, volumes, config references), the runtime is one GPU per pod with its own queue,
the autoscaler reads metrics web really exports, and every environment variable the code reads is set by the
ConfigMaps or the Secret, with values the settings accept in production."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from gpu_runtime import metrics as runtime_metrics
from vajra import metrics as web_metrics

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "platform" / "k8s"
SECRET_TEMPLATE = K8S / "secret.template.yaml"
KUBERNETES_VERSIONS = ("1.30", kubernetes_validate.utils.latest_version())
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "Job"}

# Read by the code but deliberately not set in Kubernetes, and why.
NOT_DEPLOYED = {
    "STRIPE_API_BASE": "points the Stripe client at a fake in tests; production talks to api.stripe.com",
    "STRIPE_API_KEY": "the older name of STRIPE_SECRET_KEY, read only when that one is unset",
    "VAJRA_NODE_NAME": "each runtime pod's own name, from the downward API (checked below)",
}
# Set for libraries, not read by VAJRA's code itself.
FOR_LIBRARIES = {"AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
SECRET_NAMES = {"DJANGO_SECRET_KEY", "DATABASE_URL", "REDIS_URL", "VAJRA_METRICS_TOKEN", "STRIPE_SECRET_KEY",
                "STRIPE_WEBHOOK_SECRET", "AWS_SECRET_ACCESS_KEY"}
# Values a real operator would put in the Secret, shaped like the real thing (nothing connects to them here).
SECRET_VALUES = {
    "DJANGO_SECRET_KEY": "k8s-manifest-test-secret-key-0123456789-abcdefghijklmnopqrstuvwxyz",
    "DATABASE_URL": "postgres://vajra:pw@postgres.vajra.svc:5432/vajra",
    "REDIS_URL": "redis://:pw@redis.vajra.svc:6379/0",
    "VAJRA_METRICS_TOKEN": "prometheus-bearer-token-0123456789",
    "STRIPE_SECRET_KEY": "sk_live_manifesttest",
    "STRIPE_WEBHOOK_SECRET": "whsec_manifesttest",
    "AWS_ACCESS_KEY_ID": "AKIAMANIFESTTEST",
    "AWS_SECRET_ACCESS_KEY": "manifest-test-secret",
}
_ENV_READ = re.compile(r'(?:\b(?:env_\w+|_\w+)\(\s*|os\.environ\.get\(\s*|os\.environ\[\s*|os\.getenv\(\s*)'
                       r'"([A-Z][A-Z0-9_]+)"')


def load(path):
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


@pytest.fixture(scope="module")
def docs():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    found = []
    for name in kustomization["resources"]:
        found.extend(load(K8S / name))
    return found


def by_kind(docs, kind):
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def the(docs, kind, name):
    return by_kind(docs, kind)[name]


def pod_spec(workload):
    return workload["spec"]["template"]["spec"]


def containers(workload, init=True):
    spec = pod_spec(workload)
    return [*spec.get("initContainers", []), *spec["containers"]] if init else spec["containers"]


def workloads(docs):
    return [doc for doc in docs if doc["kind"] in WORKLOAD_KINDS]


def config_data(docs, name):
    return the(docs, "ConfigMap", name)["data"]


def secret_data():
    (secret,) = load(SECRET_TEMPLATE)
    return secret["stringData"]


def selects(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


def env_vars_read(*folders, skip=("migrations", "management")):
    """Environment variable names the code under ``folders`` reads (env_* helpers, os.environ, os.getenv)."""
    names = set()
    for folder in folders:
        for path in (ROOT / folder).rglob("*.py"):
            if not set(skip) & set(path.parts):
                names |= set(_ENV_READ.findall(path.read_text()))
    return names


# ---- schema and structure -------------------------------------------------------------------------------------

def test_kustomization_lists_every_manifest_and_sets_the_two_images():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    manifests = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", SECRET_TEMPLATE.name}
    assert set(kustomization["resources"]) == manifests
    assert kustomization["namespace"] == "vajra"
    assert [image["name"] for image in kustomization["images"]] == ["vajra-web", "vajra-runtime"]


def test_each_image_is_built_with_its_process_extra():
    # The web image has no torch and the runtime image no Django: each installs its own extra of pyproject.toml.
    text = (ROOT / "platform" / "README.md").read_text()
    assert "`vajra-web`: `pip install '.[web]'`" in text
    assert "`vajra-runtime`: `pip install '.[runtime]'`" in text


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_validates_against_the_kubernetes_schemas(docs, version):
    for doc in [*docs, *load(SECRET_TEMPLATE)]:
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            assert doc["kind"] == "ScaledObject", f"{where}: no schema for it"  # a KEDA CRD: checked by hand below
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{where} against Kubernetes {version}: {'.'.join(map(str, exc.path))}: {exc.message}")


def test_the_platform_has_every_piece(docs):
    assert set(by_kind(docs, "Deployment")) == {"web", "control", "beat"}
    assert set(by_kind(docs, "StatefulSet")) == {"runtime"}
    assert set(by_kind(docs, "Service")) == {"web", "runtime"}
    assert set(by_kind(docs, "Ingress")) == {"web"}
    assert set(by_kind(docs, "HorizontalPodAutoscaler")) == {"web"}
    assert set(by_kind(docs, "PodDisruptionBudget")) == {"web", "control", "runtime"}
    assert set(by_kind(docs, "ConfigMap")) == {"vajra-config", "vajra-runtime-config"}
    assert set(by_kind(docs, "ScaledObject")) == {"runtime"}
    assert set(by_kind(docs, "Job")) == {"migrate"}
    assert load(SECRET_TEMPLATE)[0]["metadata"]["name"] == "vajra-secrets"


def test_selectors_services_and_budgets_find_their_pods(docs):
    pods = {w["metadata"]["name"]: w["spec"]["template"]["metadata"]["labels"] for w in workloads(docs)}
    for workload in workloads(docs):
        if workload["kind"] != "Job":
            selector = workload["spec"]["selector"]["matchLabels"]
            assert selects(selector, pods[workload["metadata"]["name"]]), workload["metadata"]["name"]
            others = [name for name, labels in pods.items() if name != workload["metadata"]["name"]]
            assert not any(selects(selector, pods[name]) for name in others), f"{workload['metadata']['name']} " \
                                                                               "selects another workload's pods"
        for key in ("app.kubernetes.io/name", "app.kubernetes.io/component"):
            assert key in workload["metadata"]["labels"] and key in pods[workload["metadata"]["name"]]
    for kind in ("Service", "PodDisruptionBudget"):
        for name, doc in by_kind(docs, kind).items():
            selector = doc["spec"]["selector"] if kind == "Service" else doc["spec"]["selector"]["matchLabels"]
            assert [w for w, labels in pods.items() if selects(selector, labels)] == [name], f"{kind}/{name}"
    # each Service port reaches a named port of the pods it selects
    for name, service in by_kind(docs, "Service").items():
        ports = {p["name"] for c in containers(the(docs, "Deployment" if name == "web" else "StatefulSet", name),
                                               init=False) for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, (name, port)
    ingress = the(docs, "Ingress", "web")
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            service = the(docs, "Service", backend["name"])
            assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}
    hpa = the(docs, "HorizontalPodAutoscaler", "web")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert 1 < hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]


def test_every_container_runs_the_image_with_limits_and_config(docs):
    configs = set(by_kind(docs, "ConfigMap"))
    for workload in workloads(docs):
        claims = {t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates", [])}
        volumes = {v["name"] for v in pod_spec(workload).get("volumes", [])} | claims
        assert pod_spec(workload)["securityContext"]["runAsNonRoot"] is True
        for container in containers(workload):
            where = f"{workload['metadata']['name']}/{container['name']}"
            # kustomization.yaml's images: sets each once; only runtime nodes run torch, the rest Django
            image = "vajra-runtime" if workload["metadata"]["name"] == "runtime" else "vajra-web"
            assert container["image"] == image, where
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][bound]), where
            refs = container["envFrom"]
            assert {r["configMapRef"]["name"] for r in refs if "configMapRef" in r} <= configs, where
            assert "vajra-config" in {r.get("configMapRef", {}).get("name") for r in refs}, where
            assert [r["secretRef"]["name"] for r in refs if "secretRef" in r] == ["vajra-secrets"], where
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, where
            assert {m["name"] for m in container.get("volumeMounts", [])} <= volumes, where
            ports = {p["name"] for p in container.get("ports", [])}
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                action = container.get(probe, {})
                port = (action.get("httpGet") or action.get("tcpSocket") or {}).get("port")
                assert port is None or port in ports, (where, probe)


def test_web_is_daphne_with_health_probes(docs):
    web = the(docs, "Deployment", "web")
    (container,) = containers(web, init=False)
    assert container["command"][0] == "daphne" and "vajra.asgi:application" in container["command"]
    # the client's address comes from VAJRA_TRUSTED_PROXIES (vajra/client_ip.py), never from any peer's header
    assert "--proxy-headers" not in container["command"]
    assert config_data(docs, "vajra-config")["VAJRA_TRUSTED_PROXIES"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    env = {e["name"]: e for e in container["env"]}
    # probes and Prometheus reach the pod by IP: its IP joins the public hosts
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert env["DJANGO_ALLOWED_HOSTS"]["value"] == "$(DJANGO_ALLOWED_HOSTS),$(POD_IP)"
    assert [c["command"][-2:] for c in pod_spec(web)["initContainers"]] == [["collectstatic", "--noinput"]]
    assert web["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_runtime_is_one_gpu_per_pod_with_its_own_queue_and_volumes(docs):
    runtime = the(docs, "StatefulSet", "runtime")
    spec = pod_spec(runtime)
    (container,) = containers(runtime, init=False)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert spec["nodeSelector"]
    env = {e["name"]: e for e in container["env"]}
    assert env["VAJRA_NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    command = container["command"]
    assert command[:4] == ["celery", "-A", "gpu_runtime.celery_app", "worker"]
    assert command[command.index("--pool") + 1] == "threads"  # never prefork
    shared, runtime_config = config_data(docs, "vajra-config"), config_data(docs, "vajra-runtime-config")
    assert int(command[command.index("--concurrency") + 1]) > int(runtime_config["VAJRA_MAX_BATCH"])
    # the runtime's own settings win over the shared ones (a generation may outlast a control task's limit)
    order = [r.get("configMapRef", {}).get("name") for r in container["envFrom"]]
    assert order.index("vajra-runtime-config") > order.index("vajra-config")
    assert int(runtime_config["CELERY_TASK_TIME_LIMIT"]) >= 300
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    claims = {t["metadata"]["name"] for t in runtime["spec"]["volumeClaimTemplates"]}
    assert {"model-store", "adapter-cache"} <= claims
    assert mounts["model-store"] == shared["VAJRA_MODEL_STORE"]
    assert mounts["adapter-cache"] == runtime_config["VAJRA_ADAPTER_CACHE"]
    (importer,) = spec["initContainers"]
    assert importer["command"][-2:] == ["gpu_runtime.model_store", "import"]
    assert {m["name"] for m in importer["volumeMounts"]} >= {"model-store"}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == int(runtime_config["VAJRA_METRICS_PORT"])
    assert runtime_config["VAJRA_METRICS_ADDR"] == "0.0.0.0"
    assert the(docs, "Service", "runtime")["spec"]["clusterIP"] == "None"
    assert runtime["spec"]["serviceName"] == "runtime"


def test_there_is_exactly_one_beat(docs):
    beat = the(docs, "Deployment", "beat")
    assert beat["spec"]["replicas"] == 1 and beat["spec"]["strategy"] == {"type": "Recreate"}
    assert containers(beat)[0]["command"][:4] == ["celery", "-A", "vajra", "beat"]
    targets = [d["spec"]["scaleTargetRef"]["name"] for d in docs if d["kind"] in ("HorizontalPodAutoscaler",
                                                                                    "ScaledObject")]
    assert "beat" not in targets
    mount = {m["name"]: m["mountPath"] for m in containers(beat)[0]["volumeMounts"]}["var"]
    assert mount == config_data(docs, "vajra-config")["VAJRA_VAR_DIR"] + "/run"  # where the schedule file goes


def test_processes_match_the_procfile(docs):
    procfile = dict(line.split(": ", 1) for line in (ROOT / "platform" / "Procfile").read_text().splitlines()
                    if line.strip())
    assert set(procfile) == {"web", "runtime", "control", "beat"}
    assert "--proxy-headers" not in shlex.split(procfile["web"])
    for name, kind in (("runtime", "StatefulSet"), ("control", "Deployment"), ("beat", "Deployment")):
        command = containers(the(docs, kind, name), init=False)[0]["command"]
        local = shlex.split(procfile[name])
        assert command[:4] == local[:4], name
        for flag in ("--pool", "--queues", "--concurrency"):
            if flag in local:
                assert command[command.index(flag) + 1] == local[local.index(flag) + 1], (name, flag)


# ---- runtime autoscaling (KEDA) ---------------------------------------------------------------------------------

def test_runtime_scales_on_queue_depth_and_the_scale_up_signal(docs):
    scaled = the(docs, "ScaledObject", "runtime")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "runtime"}
    assert 0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    assert isinstance(spec["pollingInterval"], int) and isinstance(spec["cooldownPeriod"], int)
    triggers = {t["name"]: t for t in spec["triggers"]}
    assert set(triggers) == {"queue-depth", "scale-up-signal"}
    base_model = config_data(docs, "vajra-config")["VAJRA_BASE_MODEL"]
    exported = set(web_metrics.METRIC_NAMES) | set(runtime_metrics.METRIC_NAMES)
    for trigger in triggers.values():
        assert trigger["type"] == "prometheus"
        metadata = trigger["metadata"]
        assert all(isinstance(v, str) for v in metadata.values())  # KEDA's metadata is string-valued
        assert metadata["serverAddress"].startswith("http")
        assert float(metadata["threshold"]) > 0
        for name in re.findall(r"\b(vajra_[a-z0-9_]+)", metadata["query"]):
            assert name.removesuffix("_total") in exported, name
        assert set(re.findall(r'base_model="([^"]+)"', metadata["query"])) == {base_model}
    assert "vajra_scale_up_signals_total" in triggers["scale-up-signal"]["metadata"]["query"]
    assert "vajra_node_queue_depth" in triggers["queue-depth"]["metadata"]["query"]
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 300


# ---- environment --------------------------------------------------------------------------------------------

def test_every_variable_the_code_reads_is_set(docs):
    shared, runtime_config = config_data(docs, "vajra-config"), config_data(docs, "vajra-runtime-config")
    secret = secret_data()
    django_side = env_vars_read("vajra", "tenants", "billing", "adapters", "fleet", "serving", "training")
    runtime_side = env_vars_read("gpu_runtime")
    runtime_env = {e["name"] for e in containers(the(docs, "StatefulSet", "runtime"), init=False)[0]["env"]}
    # web, control, beat and the migration job get vajra-config and the Secret only
    missing = django_side - set(shared) - set(secret) - set(NOT_DEPLOYED)
    assert not missing, f"read by the web/control code but not in vajra-config or vajra-secrets: {sorted(missing)}"
    missing = runtime_side - set(shared) - set(runtime_config) - set(secret) - runtime_env - set(NOT_DEPLOYED)
    assert not missing, f"read by the runtime but not set for its pods: {sorted(missing)}"
    # and nothing is set that nobody reads (a typo would silently fall back to the default)
    unread = (set(shared) | set(runtime_config) | set(secret)) - django_side - runtime_side - FOR_LIBRARIES
    assert not unread, f"set but read by no code: {sorted(unread)}"
    # secrets only in the Secret
    assert not SECRET_NAMES & (set(shared) | set(runtime_config))
    assert SECRET_NAMES <= set(secret)
    assert set(SECRET_VALUES) == set(secret)


def _production_env(docs, *configs, secret_values=SECRET_VALUES):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "VAJRA_", "CELERY_", "STRIPE_"))}
    for name in configs:
        env.update(config_data(docs, name))
    env.update(secret_values)
    return env


def test_the_config_passes_check_deploy(docs, tmp_path):
    env = _production_env(docs, "vajra-config")
    env["DJANGO_ALLOWED_HOSTS"] = env["DJANGO_ALLOWED_HOSTS"] + ",10.1.2.3"  # as web.yaml expands it
    env["VAJRA_VAR_DIR"], env["DJANGO_STATIC_ROOT"] = str(tmp_path), str(tmp_path / "static")  # not /var/lib here
    result = subprocess.run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    code = ("import django; django.setup(); from django.conf import settings as s; print(s.DEBUG, "
            "s.VAJRA_ADAPTER_STORAGE, s.VAJRA_LOG_FORMAT, s.SECURE_SSL_REDIRECT, bool(s.VAJRA_METRICS_TOKEN))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={**env, "DJANGO_SETTINGS_MODULE": "vajra.settings"})
    assert result.stdout.split() == ["False", "s3", "json", "True", "True"], result.stderr


@pytest.mark.parametrize("name", ["DJANGO_SECRET_KEY", "VAJRA_METRICS_TOKEN"])
def test_a_placeholder_left_in_the_secret_stops_the_web_at_start(docs, tmp_path, name):
    env = _production_env(docs, "vajra-config", secret_values={**SECRET_VALUES, name: secret_data()[name]})
    env["VAJRA_VAR_DIR"] = str(tmp_path)
    result = subprocess.run([sys.executable, "-c", "import django; django.setup()"], cwd=ROOT, capture_output=True,
                            env={**env, "DJANGO_SETTINGS_MODULE": "vajra.settings"}, text=True, timeout=120)
    assert result.returncode != 0 and "ImproperlyConfigured" in result.stderr
    assert name in result.stderr.splitlines()[-1]


def test_the_runtime_config_starts_a_node(docs, monkeypatch):
    from gpu_runtime import logs
    from gpu_runtime.config import RuntimeConfig
    from gpu_runtime.contract import node_queue

    env = _production_env(docs, "vajra-config", "vajra-runtime-config")
    for name in list(os.environ):
        if name not in env:
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("VAJRA_NODE_NAME", "runtime-3")  # what the downward API gives the fourth pod
    config = RuntimeConfig.from_env()
    assert node_queue(config.node_name) == "node.runtime-3"
    assert (config.device, config.max_batch, str(config.model_store)) == ("cuda", 8, "/var/lib/vajra/models")
    assert config.redis_url == SECRET_VALUES["REDIS_URL"]
    assert runtime_metrics.metrics_address() == ("0.0.0.0", 9108)
    assert logs.log_format() == "json"
