# What the Helm values (deploy/helm/values-<env>.yaml) and the deploy workflow need.
output "workload_identity_client_id" {
  description = "serviceAccount.workloadIdentityClientId"
  value       = azurerm_user_assigned_identity.worker.client_id
}

output "tenant_id" {
  description = "keyVault.tenantId"
  value       = data.azurerm_client_config.current.tenant_id
}

output "eventhubs_bootstrap" {
  description = "broker.bootstrap"
  value       = "${azurerm_eventhub_namespace.main.name}.servicebus.windows.net:9093"
}

output "postgres_host" {
  description = "database.host"
  value       = azurerm_postgresql_flexible_server.main.fqdn
}

output "lake_account_name" {
  description = "lake.accountName"
  value       = azurerm_storage_account.lake.name
}

output "key_vault_name" {
  description = "keyVault.name"
  value       = azurerm_key_vault.main.name
}

output "app_configuration_endpoint" {
  description = "config.appConfigEndpoint"
  value       = azurerm_app_configuration.main.endpoint
}

output "registry" {
  description = "image.repository is <registry>/payment-monitor"
  value       = azurerm_container_registry.main.login_server
}

output "aks_name" {
  description = "the cluster the deploy workflow upgrades the release on"
  value       = azurerm_kubernetes_cluster.main.name
}
