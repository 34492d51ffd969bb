"""The Kubernetes manifests (deploy/kubernetes): each overlay renders with the real kubectl,
every object is valid against the Kubernetes schemas (CRDs: the vendored ones), and the values
that must agree with each other and with the server do: settings are real INPAINT_* settings,
the termination grace covers the drain, the Ingress fits the body limit and timeout, the
autoscaling threshold fits the batch size and the queue bound."""

from __future__ import annotations

import importlib.util
import re
import shutil

import pytest

from server.cli import ConfigError, build_parser, settings
from server.http.app import STOP_TIMEOUT_S
from server.http.serve import ABORT_S, CLOSE_S
from server.metrics import Metrics

from .kube import KUSTOMIZE, OVERLAYS, find, one, render, render_dir, validate

#: the server's peak RSS with the full SD 1.5 architecture, fp32, CPU, through HTTP with
#: batching on (benchmarks/results/20261124-024326-cpu.md, MiB, 128x128: the model and runtime):
#: the GPU deployment's host memory is derived from it
MEASURED_PEAK_RSS_MB = 5893
#: the CPU deployment's: the server's peak RSS running two guided 512x512 edits at once with
#: --max-batch-size 2 (4 UNet rows per call; docs/scaling.md "Resources"; 9,642,360 kB)
MEASURED_PEAK_RSS_512_MB = 9417
MEASURED_512_AT_BATCH = 2


def exit_margin_s() -> float:
    """How long the server takes to exit after its grace, from its code: the aborted requests'
    answers and the connections' close (http/serve.py), the job runner putting halted jobs back
    in the queue (jobs/runner.py, when present in this checkout), the batcher's stop
    (http/app.py)."""
    jobs_stop_s = 0.0
    if importlib.util.find_spec("server.jobs") is not None:
        from server.jobs.runner import STOP_WAIT_S as jobs_stop_s
    return ABORT_S + CLOSE_S + jobs_stop_s + STOP_TIMEOUT_S


KINDS = {
    "single": {
        "ServiceAccount",
        "ConfigMap",
        "Service",
        "Deployment",
        "Ingress",
        "ServiceMonitor",
        "PersistentVolumeClaim",
    },
    "scaled": {
        "ServiceAccount",
        "ConfigMap",
        "Service",
        "Deployment",
        "Ingress",
        "ServiceMonitor",
        "PodDisruptionBudget",
        "ScaledObject",
    },
}


def container(objects) -> dict:
    return one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]


def env_of(objects) -> dict[str, str]:
    """The server's environment: the ConfigMap it reads plus literal ``env`` values."""
    env = dict(one(objects, "ConfigMap")["data"])
    env.update({e["name"]: e["value"] for e in container(objects).get("env", []) if "value" in e})
    return env


def server_settings(objects):
    """The overlay's settings as the server parses them (argparse namespace)."""
    known = {s.env for s in settings()}
    env = {k: v for k, v in env_of(objects).items() if k in known}
    return build_parser(environ=env).parse_args([])


def mebibytes(quantity: str) -> float:
    units = {"Ki": 2**-10, "Mi": 1, "Gi": 2**10, "M": 1e6 / 2**20, "G": 1e9 / 2**20}
    number, unit = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", quantity).groups()
    return float(number) * units[unit] if unit else float(number) / 2**20


# ----------------------------------------------------------------------------- render, validate


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_its_objects(overlay):
    objects = render(overlay)
    assert {o["kind"] for o in objects} == KINDS[overlay]
    assert all(o["metadata"].get("namespace") == "inpaint" for o in objects)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_is_valid(overlay):
    problems = [p for obj in render(overlay) for p in validate(obj)]
    assert problems == []


def _typo_field(objects):
    c = container(objects)
    c["readinesProbe"] = c.pop("readinessProbe")
    return one(objects, "Deployment")


def _threshold_not_string(objects):
    scaled = one(objects, "ScaledObject")
    scaled["spec"]["triggers"][0]["metadata"]["threshold"] = 24
    return scaled


def _unknown_scaledobject_field(objects):
    scaled = one(objects, "ScaledObject")
    scaled["spec"]["minReplicas"] = 1  # the HPA's name; KEDA's is minReplicaCount
    return scaled


def _bad_scrape_interval(objects):
    monitor = one(objects, "ServiceMonitor")
    monitor["spec"]["endpoints"][0]["interval"] = "15 seconds"
    return monitor


def _removed_api_version(objects):
    ingress = one(objects, "Ingress")
    ingress["apiVersion"] = "networking.k8s.io/v1beta1"  # removed in Kubernetes 1.22
    return ingress


def _string_port(objects):
    container(objects)["ports"][0]["containerPort"] = "8000"
    return one(objects, "Deployment")


@pytest.mark.parametrize(
    "break_it",
    [
        _typo_field,
        _threshold_not_string,
        _unknown_scaledobject_field,
        _bad_scrape_interval,
        _removed_api_version,
        _string_port,
    ],
)
def test_validation_rejects_a_broken_object(break_it):
    objects = render("scaled")
    assert validate(break_it(objects)) != []


def test_a_broken_kustomization_does_not_render(tmp_path):
    shutil.copytree(KUSTOMIZE / "base", tmp_path / "base")
    kustomization = tmp_path / "base" / "kustomization.yaml"
    kustomization.write_text(kustomization.read_text().replace("service.yaml", "services.yaml"))
    with pytest.raises(RuntimeError, match="services.yaml"):
        render_dir(tmp_path / "base")


# ----------------------------------------------------------------------------- the server's view


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_settings_are_the_servers(overlay):
    """Every INPAINT_* name is a setting of server/config.py (a typo would be ignored by the
    server), and the whole set parses as the server parses it."""
    objects = render(overlay)
    known = {s.env for s in settings()}
    names = set(env_of(objects)) | {e["name"] for e in container(objects).get("env", [])}
    unknown = {n for n in names if n.startswith("INPAINT_")} - known
    assert unknown == set()
    try:
        server_settings(objects)
    except ConfigError as exc:
        pytest.fail(str(exc))


def test_a_wrong_setting_is_caught():
    objects = render("single")
    one(objects, "ConfigMap")["data"]["INPAINT_SHUTDOWN_GRACE"] = "30s"
    with pytest.raises(ConfigError):
        server_settings(objects)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_termination_grace_covers_the_drain(overlay):
    """preStop sleep + --shutdown-grace + the exit margin fit in the grace period, with at
    most 5 s of slack (a longer period only delays rollouts and scale-downs)."""
    objects = render(overlay)
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    command = container(objects)["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    grace = getattr(server_settings(objects), "http.shutdown_grace")
    needed = float(command[1]) + grace + exit_margin_s()
    assert needed <= pod["terminationGracePeriodSeconds"] <= needed + 5


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_and_ports(overlay):
    objects = render(overlay)
    c = container(objects)
    assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/health"
    assert c["startupProbe"]["httpGet"]["path"] == "/health"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["http"] == getattr(server_settings(objects), "http.port")
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert c[probe]["httpGet"]["port"] == "http"
    # the image's default port and the settings agree (EXPOSE 8000)
    assert env_of(objects)["INPAINT_HOST"] == "0.0.0.0"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_references_resolve(overlay):
    """Selectors select the pods, names name objects that exist."""
    objects = render(overlay)
    deployment = one(objects, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = one(objects, "Service")

    def selects(selector: dict, labels: dict) -> bool:
        return bool(selector) and selector.items() <= labels.items()

    assert selects(deployment["spec"]["selector"]["matchLabels"], pod_labels)
    assert selects(service["spec"]["selector"], pod_labels)
    for pdb in find(objects, "PodDisruptionBudget"):
        assert selects(pdb["spec"]["selector"]["matchLabels"], pod_labels)
    service_ports = {p["name"] for p in service["spec"]["ports"]}
    monitor = one(objects, "ServiceMonitor")
    assert selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= service_ports
    for rule in one(objects, "Ingress")["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            assert backend["name"] == service["metadata"]["name"]
            assert backend["port"]["name"] in service_ports
    names = {(o["kind"], o["metadata"]["name"]) for o in objects}
    assert ("ConfigMap", container(objects)["envFrom"][0]["configMapRef"]["name"]) in names
    assert ("ServiceAccount", deployment["spec"]["template"]["spec"]["serviceAccountName"]) in names
    for volume in deployment["spec"]["template"]["spec"]["volumes"]:
        if "persistentVolumeClaim" in volume:
            claim = volume["persistentVolumeClaim"]["claimName"]
            assert ("PersistentVolumeClaim", claim) in names
    for scaled in find(objects, "ScaledObject"):
        assert scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ingress_matches_the_servers_limits(overlay):
    objects = render(overlay)
    ingress = one(objects, "Ingress")
    notes = ingress["metadata"]["annotations"]
    args = server_settings(objects)
    body = re.fullmatch(r"(\d+)m", notes["nginx.ingress.kubernetes.io/proxy-body-size"])
    assert body and float(body.group(1)) == getattr(args, "limits.max_body_mb")
    # the server's 504 must reach the client before the proxy gives up
    read_timeout = float(notes["nginx.ingress.kubernetes.io/proxy-read-timeout"])
    assert read_timeout > getattr(args, "batching.request_timeout")
    assert notes["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    # only the OpenAI API is published (no /metrics, /ready outside the cluster)
    paths = {p["path"] for r in ingress["spec"]["rules"] for p in r["http"]["paths"]}
    assert paths == {"/v1"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_resources_fit_the_settings(overlay):
    objects = render(overlay)
    resources = container(objects)["resources"]
    args = server_settings(objects)
    for name in ("cpu", "memory"):  # Guaranteed QoS
        assert resources["requests"][name] == resources["limits"][name]
    assert getattr(args, "models.threads") <= float(resources["limits"]["cpu"])
    budget = getattr(args, "admission.memory_budget_mb")
    assert budget is not None, "set INPAINT_MEMORY_BUDGET_MB: the default reads the node's memory"
    needed = MEASURED_PEAK_RSS_MB + budget
    if getattr(args, "models.provider") == "cpu":  # activations in host memory
        # a larger batch than the measured one needs a new measurement, not a guess
        assert getattr(args, "batching.max_batch_size") <= MEASURED_512_AT_BATCH
        needed = MEASURED_PEAK_RSS_512_MB + budget
    assert needed <= mebibytes(resources["limits"]["memory"])


# ----------------------------------------------------------------------------- the two overlays


def test_single_keeps_its_state_on_one_volume():
    objects = render("single")
    deployment = one(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    mounts = {m["name"]: m["mountPath"] for m in container(objects)["volumeMounts"]}
    claims = {
        v["name"]
        for v in deployment["spec"]["template"]["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    }
    (data,) = claims
    env = env_of(objects)
    assert env["INPAINT_FILES_DIR"].startswith(mounts[data] + "/")
    assert env["INPAINT_DATABASE_URL"].startswith(f"sqlite:///{mounts[data]}/")
    assert one(objects, "PersistentVolumeClaim")["spec"]["accessModes"] == ["ReadWriteOnce"]


def test_scaled_keeps_no_local_state():
    objects = render("scaled")
    deployment = one(objects, "Deployment")
    assert "replicas" not in deployment["spec"]  # KEDA owns it
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert find(objects, "PersistentVolumeClaim") == []
    env = env_of(objects)
    assert "INPAINT_FILES_DIR" not in env
    assert "INPAINT_DATABASE_URL" not in env  # it holds a password: from a Secret
    from_secrets = {
        e["name"]: e["valueFrom"]["secretKeyRef"]["name"]
        for e in container(objects)["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert set(from_secrets) == {
        "INPAINT_DATABASE_URL",
        "INPAINT_WEBHOOK_SECRET",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    }
    assert {k for k in env if k.startswith("INPAINT_S3_")} >= {"INPAINT_S3_BUCKET"}
    assert container(objects)["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert env["INPAINT_PROVIDER"] == "cuda"
    assert container(objects)["image"].endswith("-cuda")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_secret_values_in_the_manifests(overlay):
    objects = render(overlay)
    assert find(objects, "Secret") == []
    # literal values only for names that cannot hold a secret (the keys file is a path)
    secret_like = {k for k in env_of(objects) if re.search(r"KEY|SECRET|PASSWORD|TOKEN", k)}
    assert secret_like <= {"INPAINT_API_KEYS_FILE"}


def test_autoscaling_on_queue_depth_and_queued_jobs():
    objects = render("scaled")
    scaled = one(objects, "ScaledObject")
    rows, jobs = scaled["spec"]["triggers"]
    families = re.findall(r"^# TYPE (\w+) (\w+)", Metrics().render().decode(), re.M)
    assert ("inpaint_queue_depth", "gauge") in families
    assert ("inpaint_jobs_queued", "gauge") in families
    assert rows["metadata"]["query"].startswith("sum(inpaint_queue_depth{")
    # every replica reports the same database: max, never sum
    assert jobs["metadata"]["query"].startswith("max(inpaint_jobs_queued{")
    service = one(objects, "Service")["metadata"]
    for trigger in (rows, jobs):
        assert trigger["type"] == "prometheus"
        assert trigger["metricType"] == "AverageValue"
        for selector in re.findall(r"\{([^}]*)\}", trigger["metadata"]["query"]):
            assert f'namespace="{service["namespace"]}"' in selector
            assert f'service="{service["name"]}"' in selector
    args = server_settings(objects)
    threshold = float(rows["metadata"]["threshold"])
    batch = getattr(args, "batching.max_batch_size")
    # a replica is worth adding only once one has a full batch running, and before it sheds
    # load with 429
    assert batch <= threshold <= getattr(args, "batching.max_queue")
    # an empty result (nothing scraped) must be an error, so the fallback applies
    assert rows["metadata"]["ignoreNullValues"] == "false"
    assert scaled["spec"]["fallback"]["replicas"] >= scaled["spec"]["minReplicaCount"]
    interval = one(objects, "ServiceMonitor")["spec"]["endpoints"][0]["interval"]
    assert interval == f"{scaled['spec']['pollingInterval']}s"
    pdb = one(objects, "PodDisruptionBudget")["spec"]
    assert pdb["maxUnavailable"] < scaled["spec"]["minReplicaCount"]
