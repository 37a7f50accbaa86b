# The workers' identity: one user-assigned managed identity, federated with the chart's
# two service accounts (the workers and the migration hook) on AKS. On VMs, attach the
# same identity to the machines (deploy/vm/README.md). Least privilege: each role on the
# one resource it is needed for.
resource "azurerm_user_assigned_identity" "worker" {
  name                = "${local.prefix}-worker"
  location            = azurerm_resource_group.main.location
  resource_group_name = azurerm_resource_group.main.name
  tags                = local.tags
}

resource "azurerm_federated_identity_credential" "worker" {
  for_each            = toset([var.release, "${var.release}-migrate"])
  name                = each.key
  resource_group_name = azurerm_resource_group.main.name
  parent_id           = azurerm_user_assigned_identity.worker.id
  audience            = ["api://AzureADTokenExchange"]
  issuer              = azurerm_kubernetes_cluster.main.oidc_issuer_url
  subject             = "system:serviceaccount:${var.namespace}:${each.key}"
}

locals {
  worker_roles = {
    # reads payments, the changelogs and the config topic
    eventhubs_receiver = { scope = azurerm_eventhub_namespace.main.id, role = "Azure Event Hubs Data Receiver" }
    # writes the DLQ, the changelogs and the config topic
    eventhubs_sender = { scope = azurerm_eventhub_namespace.main.id, role = "Azure Event Hubs Data Sender" }
    # writes and reads the lake's Parquet files, deletes expired date= folders
    lake = { scope = azurerm_storage_container.raw_events.id, role = "Storage Blob Data Contributor" }
    # reads the PostgreSQL password (the CSI driver, or the VM launcher)
    secrets = { scope = azurerm_key_vault.main.id, role = "Key Vault Secrets User" }
    # reads the validation, metrics and compliance keys
    config = { scope = azurerm_app_configuration.main.id, role = "App Configuration Data Reader" }
  }
}

resource "azurerm_role_assignment" "worker" {
  for_each             = local.worker_roles
  scope                = each.value.scope
  role_definition_name = each.value.role
  principal_id         = azurerm_user_assigned_identity.worker.principal_id
}
