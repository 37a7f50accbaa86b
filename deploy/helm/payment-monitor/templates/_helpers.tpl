{{/* Names and labels shared by every object of the release. */}}

{{- define "pm.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "pm.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "pm.labels" -}}
{{ include "pm.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "pm.serviceAccountName" -}}
{{- default (include "pm.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "pm.image" -}}
{{- required "image.repository is required" .Values.image.repository -}}
{{- if .Values.image.digest -}}
@{{ .Values.image.digest }}
{{- else -}}
:{{ default .Chart.AppVersion .Values.image.tag }}
{{- end -}}
{{- end -}}

{{/* Secrets from Key Vault, as files named after the setting each fills. */}}
{{- define "pm.secretsMount" -}}
- name: secrets
  mountPath: /mnt/secrets
  readOnly: true
{{- end -}}

{{- define "pm.secretsVolume" -}}
- name: secrets
  csi:
    driver: secrets-store.csi.k8s.io
    readOnly: true
    volumeAttributes:
      secretProviderClass: {{ include "pm.fullname" . }}
{{- end -}}

{{/* The settings both the worker and the migration job read (runtime/settings.py). */}}
{{- define "pm.commonEnv" -}}
- name: ENVIRONMENT
  value: {{ .Values.environment | quote }}
- name: DATABASE_URL
  value: {{ printf "postgresql+psycopg2://%s@%s:%v/%s?sslmode=%s" .Values.database.user (required "database.host is required" .Values.database.host) .Values.database.port .Values.database.name .Values.database.sslmode | quote }}
- name: SECRETS_DIR
  value: /mnt/secrets
- name: LOG_FORMAT
  value: {{ .Values.logFormat | quote }}
{{- end -}}

{{- define "pm.securityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* checkov: a tag, not a digest, only where no digest was given (dev; and prod's
committed render, whose digest deploy.yml sets at release time). */}}
{{- define "pm.digestSkip" -}}
{{- if not .Values.image.digest -}}
checkov.io/skip1: CKV_K8S_43=the image is pinned by digest at release time (deploy.yml sets image.digest); a render without one is a preview
{{- end -}}
{{- end -}}

{{/* The worker's environment: the worker and its doctor init container read the same. */}}
{{- define "pm.workerEnv" -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
{{- include "pm.commonEnv" . | nindent 0 }}
- name: APP_ID
  value: {{ .Values.appId | quote }}
- name: TOPIC_PARTITIONS
  value: {{ .Values.partitions | quote }}
- name: BROKER_URL
  value: {{ printf "kafka://%s" (required "broker.bootstrap is required" .Values.broker.bootstrap) | quote }}
- name: BROKER_SECURITY_PROTOCOL
  value: {{ .Values.broker.securityProtocol | quote }}
- name: BROKER_SASL_MECHANISM
  value: {{ .Values.broker.saslMechanism | quote }}
- name: BROKER_SESSION_TIMEOUT_S
  value: {{ .Values.broker.sessionTimeoutSeconds | quote }}
- name: DB_POOL_MIN
  value: {{ .Values.database.poolMin | quote }}
- name: DB_POOL_MAX
  value: {{ .Values.database.poolMax | quote }}
- name: RAW_EVENTS_URL
  value: {{ .Values.lake.url | quote }}
- name: AZURE_STORAGE_ACCOUNT_NAME
  value: {{ required "lake.accountName is required" .Values.lake.accountName | quote }}
- name: AZURE_USE_DEFAULT_CREDENTIAL
  value: "true"
- name: CONFIG_SOURCE
  value: {{ .Values.config.source | quote }}
{{- if eq .Values.config.source "azure" }}
- name: AZURE_APPCONFIG_ENDPOINT
  value: {{ required "config.appConfigEndpoint is required" .Values.config.appConfigEndpoint | quote }}
- name: AZURE_APPCONFIG_LABEL
  value: {{ .Values.config.label | quote }}
{{- end }}
- name: APP_DATADIR
  value: /var/lib/payment-monitor/faust
- name: WEB_BIND
  value: 0.0.0.0
- name: WEB_PORT
  value: {{ .Values.webPort | quote }}
- name: WEB_HOST
  value: "$(POD_NAME).{{ include "pm.fullname" . }}-headless.$(POD_NAMESPACE).svc.cluster.local"
{{- range $name, $value := .Values.extraEnv }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- end }}

{{/* Which PodMonitor to render: azure (Azure Monitor managed Prometheus reads
azmonitoring.coreos.com/v1), operator (Prometheus Operator, monitoring.coreos.com/v1),
none (a cluster with neither CRD), or auto: whichever CRD the cluster serves. */}}
{{- define "pm.podMonitorFlavor" -}}
{{- $flavor := .Values.podMonitor.flavor -}}
{{- if eq $flavor "auto" -}}
{{- if .Capabilities.APIVersions.Has "azmonitoring.coreos.com/v1/PodMonitor" -}}
azure
{{- else if .Capabilities.APIVersions.Has "monitoring.coreos.com/v1/PodMonitor" -}}
operator
{{- else -}}
none
{{- end -}}
{{- else if has $flavor (list "azure" "operator" "none") -}}
{{- $flavor -}}
{{- else -}}
{{- fail (printf "podMonitor.flavor must be auto, azure, operator or none, not %q" $flavor) -}}
{{- end -}}
{{- end -}}
