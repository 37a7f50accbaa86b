"""Terraform: every file parses (python-hcl2), checkov passes with justified skips, and
the hubs are exactly what `faust -A app topics plan --json` says: one truth for topics."""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
from pathlib import Path

import hcl2
import pytest
import yaml

from devtools import manifests
from devtools.stack import FAUST, REPO_ROOT
from tests.helpers import assert_checkov_clean

TERRAFORM = REPO_ROOT / "deploy" / "azure" / "terraform"
FILES = sorted(TERRAFORM.glob("*.tf")) + sorted((TERRAFORM / "environments").glob("*.tfvars"))


def unquote(value: object) -> object:
    """python-hcl2 keeps the quotes of strings and block labels: drop them."""
    if isinstance(value, dict):
        return {str(unquote(k)): unquote(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unquote(v) for v in value]
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


@functools.cache
def load(path: Path) -> dict:
    """One file, parsed once per test session (read only)."""
    with path.open() as f:
        return unquote(hcl2.load(f))  # type: ignore[return-value]


def blocks(kind: str) -> list[dict]:
    """Every ``resource``/``locals``/... block of ``kind`` across the .tf files."""
    return [block for path in sorted(TERRAFORM.glob("*.tf"))
            for block in load(path).get(kind, [])]


def resources(rtype: str) -> dict[str, dict]:
    return {name: body for block in blocks("resource") for kind, named in block.items()
            if kind == rtype for name, body in named.items()}


def local(name: str) -> object:
    found = [block[name] for block in blocks("locals") if name in block]
    assert len(found) == 1, f"local.{name} is defined {len(found)} times"
    return found[0]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_file_parses(path):
    assert load(path), f"{path.name} is empty"


def tfvars(env: str) -> dict:
    return load(TERRAFORM / "environments" / f"{env}.tfvars")


def declared_hubs(env: str) -> list[dict]:
    """hubs.tf's list with the environment's variables put in."""
    values = tfvars(env)
    out = []
    for hub in local("hubs"):
        partitions = hub["partitions"]
        if isinstance(partitions, str):
            var = re.fullmatch(r"\$\{var\.(\w+)\}", partitions)
            assert var, f"partitions must be a number or a variable: {partitions!r}"
            partitions = values[var.group(1)]
        out.append({"name": hub["name"], "partitions": int(partitions),
                    "compacted": bool(hub["compacted"])})
    return out


@pytest.mark.parametrize("env", manifests.ENVIRONMENTS)
def test_the_hubs_are_the_topic_plan(env):
    """Terraform's hubs for ``env`` == ``faust -A app topics plan --json`` with that
    environment's TOPIC_PARTITIONS, which is also what its Helm values give the worker."""
    partitions = tfvars(env)["topic_partitions"]
    helm = yaml.safe_load(manifests.values_file(env).read_text())
    assert helm["partitions"] == partitions, "Helm values and tfvars disagree on partitions"
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "TOPIC_"))}
    environ.update(TOPIC_PARTITIONS=str(partitions), APP_ID="payment-monitor")
    out = subprocess.run([FAUST, "-A", "app", "topics", "plan", "--json"], env=environ,
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)
    assert declared_hubs(env) == plan


def test_hubs_are_made_with_their_cleanup_policy_and_the_consumer_group():
    hub = resources("azurerm_eventhub")["hub"]
    assert "local.hubs" in hub["for_each"]
    assert hub["partition_count"] == "${each.value.partitions}"
    retention, = hub["retention_description"]
    assert "Compact" in retention["cleanup_policy"] and "Delete" in retention["cleanup_policy"]
    group = resources("azurerm_eventhub_consumer_group")["workers"]
    assert group["name"] == "${local.consumer_group}"
    assert local("consumer_group") == "payment-monitor"  # APP_ID, the worker's Kafka group


@pytest.mark.parametrize("env, tier", [("dev", "Standard"), ("prod", "Premium")])
def test_the_namespace_tier_is_the_one_docs_eventhubs_chooses(env, tier):
    assert tfvars(env)["eventhubs_sku"] == tier
    assert "**Buy Premium for production**" in (REPO_ROOT / "docs" / "eventhubs.md").read_text()


def test_the_lake_policy_is_the_committed_one():
    policy = resources("azurerm_storage_management_policy")["lake"]
    assert "lake-lifecycle-policy.json" in str(local("lifecycle_rules"))
    assert policy["dynamic"][0]["rule"]["for_each"] == "${local.lifecycle_rules}"
    rules = json.loads((REPO_ROOT / "deploy" / "azure" / "lake-lifecycle-policy.json")
                       .read_text())["rules"]
    base = rules[0]["definition"]["actions"]["baseBlob"]
    assert "delete" not in base and base["tierToCool"]["daysAfterModificationGreaterThan"] == 30
    text = (REPO_ROOT / "deploy" / "azure" / "terraform" / "storage.tf").read_text()
    assert "delete_after_days_since_modification" not in text, \
        "the app's retention deletes lake files, through the Delta log"


def test_postgres_is_private_and_its_password_stays_out_of_the_state():
    pg = resources("azurerm_postgresql_flexible_server")["main"]
    assert pg["public_network_access_enabled"] is False
    assert pg["delegated_subnet_id"] and pg["private_dns_zone_id"]
    assert "administrator_password" not in pg and "administrator_password_wo" in pg


def test_the_workers_identity_has_exactly_the_least_privilege_roles():
    roles = local("worker_roles")
    assert sorted(r["role"] for r in roles.values()) == [
        "App Configuration Data Reader", "Azure Event Hubs Data Receiver",
        "Azure Event Hubs Data Sender", "Key Vault Secrets User",
        "Storage Blob Data Contributor"]
    assert roles["lake"]["scope"] == "${azurerm_storage_container.raw_events.id}"
    aks = resources("azurerm_kubernetes_cluster")["main"]
    assert aks["workload_identity_enabled"] is True and aks["oidc_issuer_enabled"] is True
    federated = resources("azurerm_federated_identity_credential")["worker"]
    assert "system:serviceaccount:" in federated["subject"]


def test_checkov_passes_and_every_skip_says_why(tmp_path):
    assert_checkov_clean(TERRAFORM, "terraform", tmp_path, at_least=50)


def test_azure_evaluates_exactly_the_alert_rules_promtool_tests():
    """The Prometheus rule group is deploy/prometheus/alerts.yaml, read by Terraform at
    plan time; here the same expressions are applied to it, rule by rule, as Terraform
    would, so a rule that could not convert (a severity without an Azure level, a `for`
    that is no ISO 8601 duration) fails now and not at apply."""
    alerts_path = REPO_ROOT / "deploy" / "prometheus" / "alerts.yaml"
    source = local("alert_rules")
    assert 'yamldecode(file("${path.module}/../../prometheus/alerts.yaml"))' in source
    assert (TERRAFORM / "../../prometheus/alerts.yaml").resolve() == alerts_path
    severity = local("alert_severity")
    group = resources("azurerm_monitor_alert_prometheus_rule_group")["payment_monitor"]
    rule, = (d["rule"] for d in group["dynamic"])
    assert rule["for_each"] == "${local.alert_rules}"
    content, = rule["content"]
    assert (content["alert"], content["expression"], content["labels"],
            content["annotations"]) == ("${rule.value.alert}", "${rule.value.expr}",
                                        "${rule.value.labels}", "${rule.value.annotations}")
    assert content["for"] == '${try("PT${upper(rule.value["for"])}", null)}'
    assert content["severity"] == "${local.alert_severity[rule.value.labels.severity]}"
    assert group["scopes"] == ["${azurerm_monitor_workspace.main.id}",
                               "${azurerm_kubernetes_cluster.main.id}"]

    rules = [r for g in yaml.safe_load(alerts_path.read_text())["groups"] for r in g["rules"]]
    assert len(rules) >= 10
    for r in rules:
        assert r["labels"]["severity"] in severity, r["alert"]
        if "for" in r:
            assert re.fullmatch(r"PT\d+[SMH]", f"PT{r['for'].upper()}"), r["alert"]
    # the AKS add-on writes to the workspace the rules read, through the associated rule
    dcr = resources("azurerm_monitor_data_collection_rule")["prometheus"]
    assert dcr["destinations"][0]["monitor_account"][0]["monitor_account_id"] == \
        "${azurerm_monitor_workspace.main.id}"
    assert resources("azurerm_monitor_data_collection_rule_association")["prometheus"][
        "target_resource_id"] == "${azurerm_kubernetes_cluster.main.id}"
