{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "wsingress.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Fully qualified app name: the release name, or release-chart when they differ. */}}
{{- define "wsingress.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "wsingress.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on every object. */}}
{{- define "wsingress.labels" -}}
helm.sh/chart: {{ include "wsingress.chart" . }}
app.kubernetes.io/name: {{ include "wsingress.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: wsingress
{{- end -}}

{{/* Selector of the controller pods. */}}
{{- define "wsingress.selectorLabels" -}}
app.kubernetes.io/name: {{ include "wsingress.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
{{- end -}}

{{- define "wsingress.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "wsingress.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The wsingress image reference (digest wins over tag; tag defaults to appVersion). */}}
{{- define "wsingress.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* NAMESPACE/NAME whose addresses go into Ingress status. */}}
{{- define "wsingress.publishService" -}}
{{- default (printf "%s/%s" .Release.Namespace (include "wsingress.fullname" .)) .Values.controller.publishService -}}
{{- end -}}

{{- define "wsingress.electionLease" -}}
{{- default (printf "%s-leader" (include "wsingress.fullname" .)) .Values.controller.electionLease -}}
{{- end -}}

{{/* host:port for a listener; IPv6 addresses get brackets. */}}
{{- define "wsingress.listenAddr" -}}
{{- $addr := index . 0 -}}
{{- $port := index . 1 -}}
{{- if contains ":" $addr -}}
{{- printf "[%s]:%v" $addr $port -}}
{{- else -}}
{{- printf "%s:%v" $addr $port -}}
{{- end -}}
{{- end -}}

{{/*
Whole seconds (rounded up) in a duration accepted by wsingress: 300s, 5m, 1h, 250ms or a bare
number of seconds. values.schema.json restricts the inputs to these forms.
*/}}
{{- define "wsingress.durationSeconds" -}}
{{- $v := toString . -}}
{{- $digits := regexFind "^[0-9]+" $v -}}
{{- $n := int $digits -}}
{{- $unit := trimPrefix $digits $v -}}
{{- if eq $unit "ms" -}}
{{- div (add $n 999) 1000 -}}
{{- else if eq $unit "m" -}}
{{- mul $n 60 -}}
{{- else if eq $unit "h" -}}
{{- mul $n 3600 -}}
{{- else -}}
{{- $n -}}
{{- end -}}
{{- end -}}

{{/* preStop sleep + shutdown timeout + margin: the pod is never killed mid-drain. */}}
{{- define "wsingress.terminationGracePeriodSeconds" -}}
{{- $shutdown := include "wsingress.durationSeconds" .Values.controller.shutdownTimeout | int -}}
{{- add .Values.controller.preStopSleepSeconds $shutdown .Values.controller.terminationGraceExtraSeconds -}}
{{- end -}}
