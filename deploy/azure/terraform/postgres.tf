# PostgreSQL Flexible Server with private access only (a delegated subnet and a private
# DNS zone: no public address). The administrator password is generated, written to Key
# Vault and never stored in the Terraform state (write-only arguments). The application
# role `payment_monitor` and its password (Key Vault secret payment-monitor-db-password)
# are made once by an operator: docs/operations.md, "First deployment".
resource "azurerm_private_dns_zone" "postgres" {
  name                = "${local.prefix}.private.postgres.database.azure.com"
  resource_group_name = azurerm_resource_group.main.name
  tags                = local.tags
}

resource "azurerm_private_dns_zone_virtual_network_link" "postgres" {
  name                  = "postgres"
  private_dns_zone_name = azurerm_private_dns_zone.postgres.name
  virtual_network_id    = azurerm_virtual_network.main.id
  resource_group_name   = azurerm_resource_group.main.name
}

ephemeral "random_password" "postgres_admin" {
  length  = 32
  special = false
}

resource "azurerm_postgresql_flexible_server" "main" {
  #checkov:skip=CKV2_AZURE_57:private access through VNet integration (a delegated subnet, no public address), the other of the two private modes
  name                          = "${local.prefix}-pg"
  resource_group_name           = azurerm_resource_group.main.name
  location                      = azurerm_resource_group.main.location
  version                       = "16"
  sku_name                      = var.postgres_sku
  storage_mb                    = var.postgres_storage_mb
  delegated_subnet_id           = azurerm_subnet.postgres.id
  private_dns_zone_id           = azurerm_private_dns_zone.postgres.id
  public_network_access_enabled = false
  administrator_login           = "pmadmin"
  administrator_password_wo     = ephemeral.random_password.postgres_admin.result
  administrator_password_wo_version = 1
  # RPO 24 h is met by the continuous backups (point in time, 5 min); geo-redundant
  # copies cover the loss of the region (docs/operations.md, "Disaster recovery").
  backup_retention_days        = 35
  geo_redundant_backup_enabled = true
  zone                         = "1"
  tags                         = local.tags

  dynamic "high_availability" {
    for_each = var.postgres_high_availability ? [1] : []
    content {
      mode                      = "ZoneRedundant"
      standby_availability_zone = "2"
    }
  }

  depends_on = [azurerm_private_dns_zone_virtual_network_link.postgres]
}

resource "azurerm_postgresql_flexible_server_database" "main" {
  name      = "payment_monitor"
  server_id = azurerm_postgresql_flexible_server.main.id
  charset   = "UTF8"
  collation = "en_US.utf8"
}

# Connections, checkpoints and connection throttling logged and on.
resource "azurerm_postgresql_flexible_server_configuration" "on" {
  for_each  = toset(["log_connections", "log_checkpoints", "connection_throttle.enable"])
  name      = each.key
  server_id = azurerm_postgresql_flexible_server.main.id
  value     = "on"
}

resource "azurerm_key_vault_secret" "postgres_admin" {
  name             = "pg-admin-password"
  key_vault_id     = azurerm_key_vault.main.id
  value_wo         = ephemeral.random_password.postgres_admin.result
  value_wo_version = 1
  content_type     = "password"
  expiration_date  = "2027-12-31T00:00:00Z"
  depends_on       = [azurerm_role_assignment.deployer_secrets_officer]
}
