# AKS with the OIDC issuer and workload identity (the workers' pods get Entra ID tokens
# as the user-assigned identity below), the Key Vault CSI driver, Azure RBAC and no
# local accounts, and Managed Prometheus for the PodMonitor's metrics.
resource "azurerm_container_registry" "main" {
  #checkov:skip=CKV_AZURE_139:GitHub-hosted runners push the image (deploy.yml); pulls come from AKS through the kubelet identity
  #checkov:skip=CKV_AZURE_165:one region; after a region loss the image is rebuilt from git (docs/operations.md, Disaster recovery)
  #checkov:skip=CKV_AZURE_166:images come only from deploy.yml, which builds and tests them in dev before prod
  name                          = "${local.compact}acr"
  resource_group_name           = azurerm_resource_group.main.name
  location                      = azurerm_resource_group.main.location
  sku                           = "Premium"
  admin_enabled                 = false
  public_network_access_enabled = true # the deploy workflow's runners push here (see checkov skip)
  zone_redundancy_enabled       = true
  data_endpoint_enabled         = true
  tags                          = local.tags

  retention_policy_in_days = 30
  trust_policy_enabled     = true
}

resource "azurerm_kubernetes_cluster" "main" {
  #checkov:skip=CKV_AZURE_115:a public API server restricted to var.api_server_authorized_ranges, so the deploy workflow's runners can reach it
  #checkov:skip=CKV_AZURE_6:authorized ranges are set, from var.api_server_authorized_ranges (required, no default)
  #checkov:skip=CKV_AZURE_117:OS disks are ephemeral with host encryption; the RocksDB volumes hold only changelog copies, encrypted with platform keys
  name                              = "${local.prefix}-aks"
  location                          = azurerm_resource_group.main.location
  resource_group_name               = azurerm_resource_group.main.name
  dns_prefix                        = local.prefix
  kubernetes_version                = var.kubernetes_version
  sku_tier                          = "Standard"
  oidc_issuer_enabled               = true
  workload_identity_enabled         = true
  local_account_disabled            = true
  role_based_access_control_enabled = true
  azure_policy_enabled              = true
  automatic_upgrade_channel         = "patch"
  node_os_upgrade_channel           = "NodeImage"
  tags                              = local.tags

  azure_active_directory_role_based_access_control {
    azure_rbac_enabled = true
    tenant_id          = data.azurerm_client_config.current.tenant_id
  }

  api_server_access_profile {
    authorized_ip_ranges = var.api_server_authorized_ranges
  }

  default_node_pool {
    name                         = "system"
    only_critical_addons_enabled = true
    vm_size              = var.node_vm_size
    auto_scaling_enabled = true
    min_count            = var.node_count_min
    max_count            = var.node_count_max
    max_pods             = 50
    zones                = ["1", "2", "3"]
    vnet_subnet_id       = azurerm_subnet.aks.id
    os_disk_type         = "Ephemeral"
    os_disk_size_gb      = 128
    host_encryption_enabled = true

    upgrade_settings {
      max_surge = "33%"
    }
  }

  identity {
    type = "SystemAssigned"
  }

  network_profile {
    network_plugin = "azure"
    network_policy = "azure"
  }

  key_vault_secrets_provider {
    secret_rotation_enabled = true
  }

  oms_agent {
    log_analytics_workspace_id = azurerm_log_analytics_workspace.main.id
  }

  monitor_metrics {}
}

# The workers run here, not on the system pool.
resource "azurerm_kubernetes_cluster_node_pool" "workers" {
  name                    = "workers"
  kubernetes_cluster_id   = azurerm_kubernetes_cluster.main.id
  vm_size                 = var.node_vm_size
  auto_scaling_enabled    = true
  min_count               = var.node_count_min
  max_count               = var.node_count_max
  max_pods                = 50
  zones                   = ["1", "2", "3"]
  vnet_subnet_id          = azurerm_subnet.aks.id
  os_disk_type            = "Ephemeral"
  os_disk_size_gb         = 128
  host_encryption_enabled = true
  tags                    = local.tags

  upgrade_settings {
    max_surge = "33%"
  }
}

resource "azurerm_role_assignment" "aks_acr_pull" {
  scope                            = azurerm_container_registry.main.id
  role_definition_name             = "AcrPull"
  principal_id                     = azurerm_kubernetes_cluster.main.kubelet_identity[0].object_id
  skip_service_principal_aad_check = true
}
