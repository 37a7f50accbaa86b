# Azure Monitor managed Prometheus for the workers' /metrics: the workspace the AKS
# metrics add-on (monitor_metrics in aks.tf) writes to, its data collection endpoint and
# rule, the rule's association with the cluster, and the alert rules. The chart's
# PodMonitor (podMonitor.flavor = azure) tells the add-on what to scrape.
resource "azurerm_monitor_workspace" "main" {
  name                = "${local.prefix}-prometheus"
  resource_group_name = azurerm_resource_group.main.name
  location            = azurerm_resource_group.main.location
  tags                = local.tags
}

resource "azurerm_monitor_data_collection_endpoint" "prometheus" {
  name                = "${local.prefix}-prometheus-dce"
  resource_group_name = azurerm_resource_group.main.name
  location            = azurerm_resource_group.main.location
  kind                = "Linux"
  tags                = local.tags
}

resource "azurerm_monitor_data_collection_rule" "prometheus" {
  name                        = "${local.prefix}-prometheus-dcr"
  resource_group_name         = azurerm_resource_group.main.name
  location                    = azurerm_resource_group.main.location
  data_collection_endpoint_id = azurerm_monitor_data_collection_endpoint.prometheus.id
  kind                        = "Linux"
  tags                        = local.tags

  destinations {
    monitor_account {
      monitor_account_id = azurerm_monitor_workspace.main.id
      name               = "prometheus-workspace"
    }
  }

  data_flow {
    streams      = ["Microsoft-PrometheusMetrics"]
    destinations = ["prometheus-workspace"]
  }

  data_sources {
    prometheus_forwarder {
      streams = ["Microsoft-PrometheusMetrics"]
      name    = "prometheus-forwarder"
    }
  }
}

resource "azurerm_monitor_data_collection_rule_association" "prometheus" {
  name                    = "${local.prefix}-prometheus-dcra"
  target_resource_id      = azurerm_kubernetes_cluster.main.id
  data_collection_rule_id = azurerm_monitor_data_collection_rule.prometheus.id
}

# The alert rules are deploy/prometheus/alerts.yaml itself, read at plan time: the rules
# promtool tests are the rules Azure evaluates (tests/deploy/test_terraform.py checks the
# wiring and that every rule converts).
locals {
  alert_rules = flatten([
    for group in yamldecode(file("${path.module}/../../prometheus/alerts.yaml")).groups : group.rules
  ])
  # Azure's severities: 0 critical, 1 error, 2 warning, 3 informational, 4 verbose
  alert_severity = { critical = 0, warning = 2 }
}

resource "azurerm_monitor_alert_prometheus_rule_group" "payment_monitor" {
  name                = "${local.prefix}-payment-monitor-alerts"
  resource_group_name = azurerm_resource_group.main.name
  location            = azurerm_resource_group.main.location
  cluster_name        = azurerm_kubernetes_cluster.main.name
  description         = "deploy/prometheus/alerts.yaml (runbooks: docs/operations.md)"
  rule_group_enabled  = true
  interval            = "PT1M"
  scopes              = [azurerm_monitor_workspace.main.id, azurerm_kubernetes_cluster.main.id]
  tags                = local.tags

  dynamic "rule" {
    for_each = local.alert_rules
    content {
      alert       = rule.value.alert
      expression  = rule.value.expr
      for         = try("PT${upper(rule.value["for"])}", null)
      severity    = local.alert_severity[rule.value.labels.severity]
      labels      = rule.value.labels
      annotations = rule.value.annotations
      enabled     = true

      dynamic "action" {
        for_each = var.alert_action_group_id == "" ? [] : [var.alert_action_group_id]
        content {
          action_group_id = action.value
        }
      }
    }
  }
}
