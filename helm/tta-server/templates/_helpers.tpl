{{/* The chart name. */}}
{{- define "tta-server.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The full name: release-chart, 63 characters at most (DNS label). */}}
{{- define "tta-server.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "tta-server.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tta-server.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tta-server.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "tta-server.labels" -}}
helm.sh/chart: {{ include "tta-server.chart" . }}
{{ include "tta-server.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: server
{{- end }}

{{- define "tta-server.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tta-server.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "tta-server.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/* The claim holding the shared snapshot store. */}}
{{- define "tta-server.claimName" -}}
{{- default (printf "%s-snapshots" (include "tta-server.fullname" .)) .Values.persistence.existingClaim }}
{{- end }}

{{/* Refuse settings that would lose streams: a grace period shorter than the shutdown path, or
     several replicas on storage only one node can mount. */}}
{{- define "tta-server.validate" -}}
{{- $config := .Values.config }}
{{- $needed := add .Values.preStopSleepSeconds (int (default 30 $config.graceful_shutdown_s)) (int (default 60 $config.shutdown_snapshot_timeout_s)) }}
{{- if lt (int .Values.terminationGracePeriodSeconds) (int $needed) }}
{{- fail (printf "terminationGracePeriodSeconds (%v) must be >= preStopSleepSeconds + config.graceful_shutdown_s + config.shutdown_snapshot_timeout_s (%v): streams would be killed before their snapshot" .Values.terminationGracePeriodSeconds $needed) }}
{{- end }}
{{- $replicas := max (int .Values.replicaCount) (ternary (int .Values.autoscaling.maxReplicas) 1 .Values.autoscaling.enabled) }}
{{- if and (gt (int $replicas) 1) .Values.persistence.enabled (not .Values.persistence.existingClaim) (ne .Values.persistence.accessMode "ReadWriteMany") }}
{{- fail "more than one replica shares the snapshot store: set persistence.accessMode to ReadWriteMany (or an existingClaim that is)" }}
{{- end }}
{{- end }}
