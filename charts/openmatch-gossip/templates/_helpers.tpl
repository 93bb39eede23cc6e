{{/*
Names, labels and images shared by every template.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "openmatch-gossip.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The resource name prefix: fullnameOverride, or <release>-<name> unless the release
name already contains the chart name. Truncated so that "-operator" still fits 63 chars. */}}
{{- define "openmatch-gossip.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 54 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "openmatch-gossip.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 54 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 54 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Name of the operator's Deployment, Services, roles and default Lease. */}}
{{- define "openmatch-gossip.operator.fullname" -}}
{{- printf "%s-operator" (include "openmatch-gossip.fullname" .) -}}
{{- end -}}

{{- define "openmatch-gossip.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Standard labels of every resource. */}}
{{- define "openmatch-gossip.labels" -}}
helm.sh/chart: {{ include "openmatch-gossip.chart" . }}
app.kubernetes.io/name: {{ include "openmatch-gossip.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: openmatch-gossip
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of the operator's pods. */}}
{{- define "openmatch-gossip.operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "openmatch-gossip.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* Labels of the operator's resources. */}}
{{- define "openmatch-gossip.operator.labels" -}}
{{ include "openmatch-gossip.labels" . }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "openmatch-gossip.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create -}}
{{- default (include "openmatch-gossip.operator.fullname" .) .Values.operator.serviceAccount.name -}}
{{- else -}}
{{- required "operator.serviceAccount.name is required when operator.serviceAccount.create is false" .Values.operator.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "openmatch-gossip.operator.leaseName" -}}
{{- default (include "openmatch-gossip.operator.fullname" .) .Values.operator.leaderElection.leaseName -}}
{{- end -}}

{{/* repository:tag or repository@digest; the tag defaults to the appVersion.
Call with (dict "image" .Values.x.image "context" $). */}}
{{- define "openmatch-gossip.image" -}}
{{- if .image.digest -}}
{{- printf "%s@%s" .image.repository .image.digest -}}
{{- else -}}
{{- printf "%s:%s" .image.repository (default .context.Chart.AppVersion .image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Checks of value combinations the schema cannot express; included by the Deployment. */}}
{{- define "openmatch-gossip.validate" -}}
{{- $le := .Values.operator.leaderElection -}}
{{- if and (gt (int .Values.operator.replicas) 1) (not $le.enabled) -}}
{{- fail "operator.replicas > 1 needs operator.leaderElection.enabled: without a Lease every replica would reconcile" -}}
{{- end -}}
{{- if and $le.enabled (ge (int $le.renewDeadlineSeconds) (int $le.leaseDurationSeconds)) -}}
{{- fail "operator.leaderElection.renewDeadlineSeconds must be below leaseDurationSeconds" -}}
{{- end -}}
{{- if and .Values.monitoring.serviceMonitor.enabled (not .Values.metrics.service.enabled) -}}
{{- fail "monitoring.serviceMonitor.enabled needs metrics.service.enabled (it scrapes that Service)" -}}
{{- end -}}
{{- end -}}

{{/* The injection webhook's Service, serving-certificate Secret, MutatingWebhookConfiguration
and (with cert-manager) Certificate. */}}
{{- define "openmatch-gossip.webhook.service" -}}
{{- printf "%s-webhook" (include "openmatch-gossip.fullname" .) -}}
{{- end -}}
{{- define "openmatch-gossip.webhook.secret" -}}
{{- printf "%s-webhook-tls" (include "openmatch-gossip.fullname" .) -}}
{{- end -}}
{{- define "openmatch-gossip.webhook.configuration" -}}
{{- printf "%s-sidecar-injector" (include "openmatch-gossip.fullname" .) -}}
{{- end -}}
{{- define "openmatch-gossip.webhook.certificate" -}}
{{- printf "%s-webhook" (include "openmatch-gossip.fullname" .) -}}
{{- end -}}
