# Key Vault (RBAC, purge protection, private endpoint only) holds the PostgreSQL
# passwords, and the Event Hubs connection string for a deployment that cannot use
# OAuth. App Configuration holds the three configuration keys the leader watches
# (docs/configuration.md).
resource "azurerm_key_vault" "main" {
  name                          = "${local.prefix}-kv"
  location                      = azurerm_resource_group.main.location
  resource_group_name           = azurerm_resource_group.main.name
  tenant_id                     = data.azurerm_client_config.current.tenant_id
  sku_name                      = "premium"
  rbac_authorization_enabled    = true
  purge_protection_enabled      = true
  soft_delete_retention_days    = 90
  public_network_access_enabled = false
  tags                          = local.tags

  network_acls {
    default_action = "Deny"
    bypass         = "AzureServices"
  }
}

# Whoever runs Terraform writes the generated administrator password.
resource "azurerm_role_assignment" "deployer_secrets_officer" {
  scope                = azurerm_key_vault.main.id
  role_definition_name = "Key Vault Secrets Officer"
  principal_id         = data.azurerm_client_config.current.object_id
}

resource "azurerm_app_configuration" "main" {
  #checkov:skip=CKV_AZURE_186:platform-managed keys: the store holds the validation, metrics and compliance YAML, no secret
  name                     = "${local.prefix}-appconfig"
  resource_group_name      = azurerm_resource_group.main.name
  location                 = azurerm_resource_group.main.location
  sku                      = "standard"
  local_auth_enabled       = false
  public_network_access    = "Disabled"
  purge_protection_enabled = true
  tags                     = local.tags
}

# Private endpoints (and their DNS zones) of everything the workers reach over HTTPS or
# Kafka: nothing of theirs is on a public address.
locals {
  private_endpoints = {
    eventhubs = { id = azurerm_eventhub_namespace.main.id, subresource = "namespace", zone = "privatelink.servicebus.windows.net" }
    blob      = { id = azurerm_storage_account.lake.id, subresource = "blob", zone = "privatelink.blob.core.windows.net" }
    dfs       = { id = azurerm_storage_account.lake.id, subresource = "dfs", zone = "privatelink.dfs.core.windows.net" }
    vault     = { id = azurerm_key_vault.main.id, subresource = "vault", zone = "privatelink.vaultcore.azure.net" }
    appconfig = { id = azurerm_app_configuration.main.id, subresource = "configurationStores", zone = "privatelink.azconfig.io" }
  }
}

resource "azurerm_private_dns_zone" "endpoint" {
  for_each            = local.private_endpoints
  name                = each.value.zone
  resource_group_name = azurerm_resource_group.main.name
  tags                = local.tags
}

resource "azurerm_private_dns_zone_virtual_network_link" "endpoint" {
  for_each              = local.private_endpoints
  name                  = each.key
  private_dns_zone_name = azurerm_private_dns_zone.endpoint[each.key].name
  virtual_network_id    = azurerm_virtual_network.main.id
  resource_group_name   = azurerm_resource_group.main.name
}

resource "azurerm_private_endpoint" "main" {
  for_each            = local.private_endpoints
  name                = "${local.prefix}-${each.key}-pe"
  location            = azurerm_resource_group.main.location
  resource_group_name = azurerm_resource_group.main.name
  subnet_id           = azurerm_subnet.endpoints.id
  tags                = local.tags

  private_service_connection {
    name                           = each.key
    private_connection_resource_id = each.value.id
    subresource_names              = [each.value.subresource]
    is_manual_connection           = false
  }

  private_dns_zone_group {
    name                 = each.key
    private_dns_zone_ids = [azurerm_private_dns_zone.endpoint[each.key].id]
  }
}
