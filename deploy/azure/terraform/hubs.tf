# Every event hub the worker uses: exactly what `faust -A app topics plan --json` prints
# with TOPIC_PARTITIONS = var.topic_partitions (tests/deploy/test_terraform.py checks it,
# so the app and the infrastructure cannot drift apart). The worker creates no topic on
# Event Hubs (docs/eventhubs.md).
locals {
  hubs = [
    { name = "payments", partitions = var.topic_partitions, compacted = false },
    { name = "payments-dlq", partitions = var.topic_partitions, compacted = false },
    { name = "payment-monitor-window-counts-5m-changelog", partitions = var.topic_partitions, compacted = true },
    { name = "payment-monitor-window-metrics-5m-changelog", partitions = var.topic_partitions, compacted = true },
    { name = "payment-monitor-window-counts-1h-changelog", partitions = var.topic_partitions, compacted = true },
    { name = "payment-monitor-window-metrics-1h-changelog", partitions = var.topic_partitions, compacted = true },
    { name = "payment-monitor-stream-clock-changelog", partitions = var.topic_partitions, compacted = true },
    { name = "payment-monitor-seen-transactions-changelog", partitions = var.topic_partitions, compacted = true },
    { name = "payment-monitor-config-changelog", partitions = 1, compacted = true },
  ]
  # The Kafka consumer group of the workers (APP_ID).
  consumer_group = "payment-monitor"
}
