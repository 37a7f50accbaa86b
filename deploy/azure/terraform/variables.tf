variable "environment" {
  description = "dev or prod: the prefix of every name (pm-<environment>-...)"
  type        = string
  validation {
    condition     = contains(["dev", "prod"], var.environment)
    error_message = "environment must be dev or prod."
  }
}

variable "location" {
  description = "Azure region"
  type        = string
  default     = "westeurope"
}

variable "topic_partitions" {
  description = "TOPIC_PARTITIONS: partitions of payments, the DLQ and every changelog. Fixed at creation on Standard; keep it equal to the Helm values' partitions."
  type        = number
}

variable "eventhubs_sku" {
  description = "Standard (dev) or Premium (prod): docs/eventhubs.md, 'Which tier to buy'"
  type        = string
}

variable "eventhubs_capacity" {
  description = "throughput units (Standard) or processing units (Premium)"
  type        = number
  default     = 1
}

variable "payments_retention_hours" {
  description = "retention of payments and the DLQ: up to 168 h on Standard, 2160 h (90 days) on Premium"
  type        = number
}

variable "postgres_sku" {
  description = "PostgreSQL Flexible Server SKU"
  type        = string
}

variable "postgres_high_availability" {
  description = "zone-redundant standby (prod)"
  type        = bool
}

variable "postgres_storage_mb" {
  description = "PostgreSQL storage"
  type        = number
  default     = 131072
}

variable "lake_replication" {
  description = "replication of the lake's storage account: ZRS (dev), GZRS (prod)"
  type        = string
}

variable "kubernetes_version" {
  description = "AKS version (the manifests are validated for 1.35)"
  type        = string
  default     = "1.35"
}

variable "node_vm_size" {
  description = "AKS node size: a worker requests 1 CPU and 1 GiB (docs/operations.md, 'Sizing')"
  type        = string
  default     = "Standard_D4ds_v5"
}

variable "node_count_min" {
  description = "nodes at least"
  type        = number
}

variable "node_count_max" {
  description = "nodes at most"
  type        = number
}

variable "namespace" {
  description = "Kubernetes namespace of the Helm release"
  type        = string
  default     = "payments"
}

variable "release" {
  description = "Helm release name: the service accounts are <release> and <release>-migrate"
  type        = string
  default     = "payment-monitor"
}

variable "api_server_authorized_ranges" {
  description = "CIDRs that may reach the AKS API server (the deploy runners, the operators)"
  type        = list(string)
}

variable "address_space" {
  description = "the virtual network"
  type        = string
  default     = "10.40.0.0/16"
}

variable "alert_action_group_id" {
  description = "an Azure Monitor action group to notify when an alert fires (empty: the alerts fire in the portal only)"
  type        = string
  default     = ""
}
