# The Parquet lake: one container, raw-events, and the 90-day lifecycle policy of
# ../lake-lifecycle-policy.json (read from that file: one truth for the retention).
# Entra ID only (no shared keys): the workers write with their workload identity.
resource "azurerm_storage_account" "lake" {
  #checkov:skip=CKV_AZURE_33:the queue service is not used by the lake or anything else
  #checkov:skip=CKV2_AZURE_1:platform-managed keys with infrastructure (double) encryption; a customer-managed key is an organisation policy, add it with the vault's key when required
  name                              = "${local.compact}lake"
  resource_group_name               = azurerm_resource_group.main.name
  location                          = azurerm_resource_group.main.location
  account_kind                      = "StorageV2"
  account_tier                      = "Standard"
  account_replication_type          = var.lake_replication
  min_tls_version                   = "TLS1_2"
  shared_access_key_enabled         = false
  default_to_oauth_authentication   = true
  public_network_access_enabled     = false
  allow_nested_items_to_be_public   = false
  infrastructure_encryption_enabled = true
  tags                              = local.tags

  blob_properties {
    versioning_enabled = true
    delete_retention_policy {
      days = 14
    }
    container_delete_retention_policy {
      days = 14
    }
  }

  network_rules {
    default_action = "Deny"
    bypass         = ["AzureServices", "Logging", "Metrics"]
  }
}

resource "azurerm_storage_container" "raw_events" {
  #checkov:skip=CKV2_AZURE_21:blob reads, writes and deletes are logged by azurerm_monitor_diagnostic_setting.lake_blob below, which checkov does not link to the container
  name                  = "raw-events"
  storage_account_id    = azurerm_storage_account.lake.id
  container_access_type = "private"
}

resource "azurerm_monitor_diagnostic_setting" "lake_blob" {
  name                       = "blob-access"
  target_resource_id         = "${azurerm_storage_account.lake.id}/blobServices/default"
  log_analytics_workspace_id = azurerm_log_analytics_workspace.main.id

  enabled_log {
    category = "StorageRead"
  }
  enabled_log {
    category = "StorageWrite"
  }
  enabled_log {
    category = "StorageDelete"
  }
}

locals {
  lifecycle_rules = jsondecode(file("${path.module}/../lake-lifecycle-policy.json")).rules
}

resource "azurerm_storage_management_policy" "lake" {
  storage_account_id = azurerm_storage_account.lake.id

  dynamic "rule" {
    for_each = local.lifecycle_rules
    content {
      name    = rule.value.name
      enabled = rule.value.enabled
      filters {
        blob_types   = rule.value.definition.filters.blobTypes
        prefix_match = rule.value.definition.filters.prefixMatch
      }
      actions {
        base_blob {
          # no delete: the Delta table's log decides which files live; the app's
          # retention deletes and vacuums them (docs/storage.md)
          tier_to_cool_after_days_since_modification_greater_than = rule.value.definition.actions.baseBlob.tierToCool.daysAfterModificationGreaterThan
        }
        snapshot {
          delete_after_days_since_creation_greater_than = rule.value.definition.actions.snapshot.delete.daysAfterCreationGreaterThan
        }
        version {
          delete_after_days_since_creation = rule.value.definition.actions.version.delete.daysAfterCreationGreaterThan
        }
      }
    }
  }
}
