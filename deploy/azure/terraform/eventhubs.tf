# The broker: an Event Hubs namespace reached through its Kafka endpoint (9093, SASL_SSL).
# Standard for dev, Premium for prod (docs/eventhubs.md). Entra ID only: the workers get
# OAUTHBEARER tokens from their workload identity; there is no connection string.
resource "azurerm_eventhub_namespace" "main" {
  name                          = "${local.prefix}-ehns"
  location                      = azurerm_resource_group.main.location
  resource_group_name           = azurerm_resource_group.main.name
  sku                           = var.eventhubs_sku
  capacity                      = var.eventhubs_capacity
  local_authentication_enabled  = false
  public_network_access_enabled = false
  minimum_tls_version           = "1.2"
  tags                          = local.tags

  network_rulesets {
    default_action                 = "Deny"
    public_network_access_enabled  = false
    trusted_service_access_enabled = true
  }
}

resource "azurerm_eventhub" "hub" {
  for_each        = { for hub in local.hubs : hub.name => hub }
  name            = each.key
  namespace_id    = azurerm_eventhub_namespace.main.id
  partition_count = each.value.partitions

  retention_description {
    cleanup_policy                                    = each.value.compacted ? "Compact" : "Delete"
    retention_time_in_hours                           = each.value.compacted ? null : var.payments_retention_hours
    tombstone_retention_time_after_compaction_in_hours = each.value.compacted ? 24 : null
  }
}

# Kafka clients create their group on first use; declaring it makes it visible and lets
# the namespace's monitoring name it.
resource "azurerm_eventhub_consumer_group" "workers" {
  name                = local.consumer_group
  namespace_name      = azurerm_eventhub_namespace.main.name
  eventhub_name       = azurerm_eventhub.hub["payments"].name
  resource_group_name = azurerm_resource_group.main.name
}
