"""The Helm chart: the committed renders are fresh, valid for Kubernetes, checkov-clean,
and say what the issue asked of them (probes, volumes, hooks, identity, no secret)."""

from __future__ import annotations

import functools
import re
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from devtools import manifests
from devtools.stack import REPO_ROOT
from tests.helpers import alert_rules, assert_checkov_clean, tool

ENVS = manifests.ENVIRONMENTS


@functools.cache
def docs(env: str) -> list[dict]:
    """The committed render's objects, parsed once per session (read only)."""
    text = (manifests.RENDERED / f"{env}.yaml").read_text()
    return [d for d in yaml.safe_load_all(text) if d]


def one(env: str, kind: str, name: str | None = None) -> dict:
    found = [d for d in docs(env) if d["kind"] == kind
             and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"{env}: {len(found)} {kind} {name or ''}"
    return found[0]


def env_of(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container["env"]}


@pytest.mark.parametrize("env", ENVS)
def test_the_committed_render_is_a_fresh_render(env):
    tool(manifests.HELM)
    committed = (manifests.RENDERED / f"{env}.yaml").read_text()
    assert committed == manifests.render(env), (
        f"deploy/k8s/rendered/{env}.yaml is stale: run `make manifests` and commit it")


@pytest.mark.parametrize("env", ENVS)
def test_every_core_object_validates_against_kubernetes(env):
    version = manifests.KUBE_VERSION
    custom = {"PodMonitor", "SecretProviderClass"}
    checked = set()
    for doc in docs(env):
        if doc["kind"] in custom:
            continue
        # raises ValidationError (with the path and the reason) on the first problem
        used = kubernetes_validate.validate(doc, version, strict=True)
        assert used == version.rsplit(".", 1)[0]
        checked.add(doc["kind"])
    assert {"StatefulSet", "Service", "ServiceAccount", "PodDisruptionBudget", "Job",
            "NetworkPolicy"} <= checked


@pytest.mark.parametrize("env", ENVS)
def test_the_custom_resources_have_the_fields_their_operators_need(env):
    """kubernetes-validate has no schema for CRDs: their required fields, checked here."""
    monitor = one(env, "PodMonitor")
    # AKS managed Prometheus reads only its own group's PodMonitors
    assert monitor["apiVersion"] == "azmonitoring.coreos.com/v1"
    endpoint, = monitor["spec"]["podMetricsEndpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("web", "/metrics")
    assert monitor["spec"]["selector"]["matchLabels"] == \
        one(env, "StatefulSet")["spec"]["selector"]["matchLabels"]
    # the scrape job is the one the alert rules select on `up`
    pod_labels = one(env, "StatefulSet")["spec"]["template"]["metadata"]["labels"]
    jobs = set(re.findall(r'job="([^"]+)"', " ".join(r["expr"] for r in alert_rules())))
    assert jobs == {pod_labels[monitor["spec"]["jobLabel"]]}
    for spc in (d for d in docs(env) if d["kind"] == "SecretProviderClass"):
        assert spc["apiVersion"] == "secrets-store.csi.x-k8s.io/v1"
        assert spc["spec"]["provider"] == "azure"
        params = spc["spec"]["parameters"]
        assert {"clientID", "keyvaultName", "tenantId", "objects"} <= set(params)
        objects = [yaml.safe_load(o) for o in yaml.safe_load(params["objects"])["array"]]
        assert all(o["objectType"] == "secret" for o in objects)
        assert "database_password" in {o["objectAlias"] for o in objects}


def test_checkov_passes_and_every_skip_says_why(tmp_path):
    assert_checkov_clean(manifests.RENDERED, "kubernetes", tmp_path, at_least=100)


@pytest.mark.parametrize("env", ENVS)
def test_workers_keep_their_volume_and_are_probed(env):
    sts = one(env, "StatefulSet")
    spec = sts["spec"]
    claim, = spec["volumeClaimTemplates"]
    worker, = spec["template"]["spec"]["containers"]
    mount = {m["name"]: m["mountPath"] for m in worker["volumeMounts"]}
    assert mount[claim["metadata"]["name"]] == "/var/lib/payment-monitor"
    assert env_of(worker)["APP_DATADIR"].startswith("/var/lib/payment-monitor/")
    assert worker["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert worker["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert worker["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert env_of(worker)["WEB_BIND"] == "0.0.0.0"
    # WEB_HOST is the pod's name under the headless Service
    headless = one(env, "Service", f"{sts['metadata']['name']}-headless")
    assert headless["spec"]["clusterIP"] == "None"
    assert spec["serviceName"] == headless["metadata"]["name"]
    assert env_of(worker)["WEB_HOST"] == (
        f"$(POD_NAME).{headless['metadata']['name']}.$(POD_NAMESPACE).svc.cluster.local")
    assert one(env, "Service", sts["metadata"]["name"])["spec"]["type"] == "ClusterIP"
    assert one(env, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    assert spec["template"]["spec"]["topologySpreadConstraints"]
    assert worker["resources"]["requests"] and worker["resources"]["limits"]
    assert worker["securityContext"]["runAsNonRoot"] is True


@pytest.mark.parametrize("env", ENVS)
def test_the_grace_period_outlasts_the_measured_stop(env):
    """SIGTERM -> exit took 6.5-8.6 s with a full sink queue (benchmarks.graceful_stop);
    the StatefulSet and the systemd unit give it the same 60 s."""
    grace = one(env, "StatefulSet")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    unit = (REPO_ROOT / "deploy" / "vm" / "payment-monitor.service").read_text()
    timeout = int(re.search(r"^TimeoutStopSec=(\d+)$", unit, re.M).group(1))
    assert grace == timeout >= 5 * 8.6


@pytest.mark.parametrize("env", ENVS)
def test_migrations_run_before_install_and_upgrade_and_never_in_the_worker(env):
    job = one(env, "Job")
    hooks = job["metadata"]["annotations"]["helm.sh/hook"]
    assert set(hooks.split(",")) == {"pre-install", "pre-upgrade"}
    migrate, = job["spec"]["template"]["spec"]["containers"]
    assert migrate["command"] == ["faust", "-A", "app", "db", "upgrade"]
    assert migrate["image"] == one(env, "StatefulSet")["spec"]["template"]["spec"][
        "containers"][0]["image"]
    worker, = one(env, "StatefulSet")["spec"]["template"]["spec"]["containers"]
    assert "command" not in worker and "alembic" not in " ".join(worker["args"])
    # its identity and secrets exist before it runs: hooks of a lower weight
    weight = int(job["metadata"]["annotations"]["helm.sh/hook-weight"])
    for kind in ("ServiceAccount", "SecretProviderClass"):
        dep = one(env, kind, job["metadata"]["name"])
        assert int(dep["metadata"]["annotations"]["helm.sh/hook-weight"]) < weight


@pytest.mark.parametrize("env", ENVS)
def test_the_doctor_checks_everything_before_the_worker_starts(env):
    pod = one(env, "StatefulSet")["spec"]["template"]["spec"]
    doctor, = pod["initContainers"]
    worker, = pod["containers"]
    assert doctor["args"] == ["doctor"] and doctor["image"] == worker["image"]
    assert doctor["env"] == worker["env"]  # it checks what the worker will use
    assert doctor["volumeMounts"] == worker["volumeMounts"]
    assert doctor["securityContext"] == worker["securityContext"]


@pytest.mark.parametrize("env", ENVS)
def test_identity_is_workload_identity_and_secrets_come_from_key_vault(env):
    sa = one(env, "ServiceAccount", "payment-monitor")
    assert sa["metadata"]["annotations"]["azure.workload.identity/client-id"]
    pod = one(env, "StatefulSet")["spec"]["template"]
    assert pod["metadata"]["labels"]["azure.workload.identity/use"] == "true"
    assert pod["spec"]["serviceAccountName"] == "payment-monitor"
    csi, = [v["csi"] for v in pod["spec"]["volumes"] if "csi" in v]
    assert csi["volumeAttributes"]["secretProviderClass"] == "payment-monitor"
    assert env_of(pod["spec"]["containers"][0])["SECRETS_DIR"] == "/mnt/secrets"
    assert not [d for d in docs(env) if d["kind"] == "Secret"], "no Kubernetes Secret"


def render(*args: str) -> list[dict]:
    out = subprocess.run(
        [tool(manifests.HELM), "template", "pm", str(manifests.CHART), "-f",
         str(manifests.values_file("prod")), "--kube-version", manifests.KUBE_VERSION, *args],
        capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def scrapers(objects: list[dict]) -> list[dict]:
    policy = next(d for d in objects if d["kind"] == "NetworkPolicy"
                  and "worker" not in d["metadata"]["name"] and "test" not in d["metadata"]["name"])
    return policy["spec"]["ingress"][0]["from"]


@pytest.mark.parametrize(("flavor", "api_versions", "group", "scraper"), [
    ("azure", [], "azmonitoring.coreos.com/v1", {"rsName": "ama-metrics"}),
    ("operator", [], "monitoring.coreos.com/v1", None),
    ("none", [], None, None),
    ("auto", ["azmonitoring.coreos.com/v1/PodMonitor", "monitoring.coreos.com/v1/PodMonitor"],
     "azmonitoring.coreos.com/v1", {"rsName": "ama-metrics"}),
    ("auto", ["monitoring.coreos.com/v1/PodMonitor"], "monitoring.coreos.com/v1", None),
    ("auto", [], None, None),  # a cluster with neither CRD installs too
])
def test_the_pod_monitor_follows_the_flavor_and_the_policy_admits_its_scraper(
        flavor, api_versions, group, scraper):
    objects = render("--set", f"podMonitor.flavor={flavor}",
                     *[a for v in api_versions for a in ("--api-versions", v)])
    monitors = [d["apiVersion"] for d in objects if d["kind"] == "PodMonitor"]
    assert monitors == ([group] if group else [])
    admitted = [f.get("podSelector", {}).get("matchLabels") for f in scrapers(objects)
                if "namespaceSelector" in f]
    namespaces = [f["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                  for f in scrapers(objects) if "namespaceSelector" in f]
    if scraper:
        assert (admitted, namespaces) == ([scraper], ["kube-system"])
    else:
        assert (admitted, namespaces) == ([None], ["monitoring"])


@pytest.mark.parametrize(("setting", "says"), [
    ("podMonitor.flavor=prometheus", "'/podMonitor/flavor': value must be one of"),
    ("replica=3", "additional properties 'replica' not allowed"),  # a typo is not ignored
    ("partitions=0", "'/partitions': minimum"),
    ("podMonitor.interval=30", "'/podMonitor/interval'"),
])
def test_values_schema_refuses_what_the_chart_cannot_use(setting, says):
    out = subprocess.run(
        [tool(manifests.HELM), "template", "pm", str(manifests.CHART), "-f",
         str(manifests.values_file("prod")), "--kube-version", manifests.KUBE_VERSION,
         "--set", setting], capture_output=True, text=True, check=False)
    assert out.returncode != 0 and says in out.stderr, out.stderr


@pytest.mark.parametrize("env", ENVS)
def test_helm_test_reads_every_worker_and_the_dashboard_and_the_notes_say_how(env):
    test_pod = one(env, "Pod")
    assert test_pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    script = test_pod["spec"]["containers"][0]["args"][0]
    assert "/readyz" in script and "/payments/dashboard/" in script
    # its label is admitted by the workers' policy, and its own policy lets it out to them
    label = test_pod["metadata"]["labels"]
    assert {"podSelector": {"matchLabels": label}} in one(
        env, "NetworkPolicy", "payment-monitor")["spec"]["ingress"][0]["from"]
    assert one(env, "NetworkPolicy", "payment-monitor-test-web")["spec"]["podSelector"][
        "matchLabels"] == label
    # `helm template` does not render NOTES.txt (`helm install` prints it): its source
    text = (manifests.CHART / "templates" / "NOTES.txt").read_text()
    assert "port-forward" in text and "/payments/dashboard/" in text and "helm test" in text


def test_plain_sasl_maps_the_event_hubs_connection_string(tmp_path):
    """Without OAuth, the connection string comes from Key Vault too."""
    out = subprocess.run(
        [tool(manifests.HELM), "template", "pm", str(manifests.CHART), "-f",
         str(manifests.values_file("prod")), "--set", "broker.saslMechanism=PLAIN",
         "--kube-version", manifests.KUBE_VERSION, "--show-only",
         "templates/secretproviderclass.yaml"], capture_output=True, text=True, check=True)
    objects = yaml.safe_load(yaml.safe_load(out.stdout)["spec"]["parameters"]["objects"])
    aliases = {yaml.safe_load(o)["objectAlias"] for o in objects["array"]}
    assert aliases == {"database_password", "eventhubs_connection_string"}


CREDENTIAL = re.compile(r"AccountKey=|SharedAccessKey=|://[^/@\s:]+:[^/@\s]+@")
SECRET_KEY = re.compile(r"^\s*-?\s*\"?(\w*(password|token|secret)\w*)\"?\s*:\s*(\S.*)$", re.I)


@pytest.mark.parametrize("path", [
    *sorted((REPO_ROOT / "deploy" / "helm").rglob("values*.yaml")),
    *sorted(manifests.RENDERED.glob("*.yaml")),
], ids=lambda p: str(Path(p).relative_to(REPO_ROOT)))
def test_no_secret_in_values_or_manifests(path):
    """A key named like a secret holds a flag, a Key Vault secret's name or nothing."""
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.lstrip().startswith("#"):
            continue
        where = f"{path.name}:{number}: {line.strip()}"
        assert not CREDENTIAL.search(line), where
        match = SECRET_KEY.match(line)
        if match:
            value = match.group(3).split(" #")[0].strip().strip('"')
            assert value in {"true", "false", "secret", '""', ""} or \
                value.startswith("payment-monitor") or value.startswith("/mnt/secrets"), where
