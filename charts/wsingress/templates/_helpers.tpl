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
{{- add (include "wsingress.int" .Values.controller.preStopSleepSeconds) $shutdown (include "wsingress.int" .Values.controller.terminationGraceExtraSeconds) -}}
{{- end -}}

{{/*
An integer value rendered as an integer, whatever its source: a values file (YAML numbers
arrive as float64, and 1048576 would print as 1.048576e+06), --set (int64) or --set-string (a
string of digits; values.schema.json allows only digits). Usage: include "wsingress.int" VALUE
*/}}
{{- define "wsingress.int" -}}
{{- if typeIs "string" . -}}
{{- if not (regexMatch "^(0|[1-9][0-9]*)$" .) -}}
{{- fail (printf "%q is not a whole number" .) -}}
{{- end -}}
{{- end -}}
{{- int64 . -}}
{{- end -}}

{{/* The watched namespaces as a list (controller.watchNamespace: a name, a list, or empty). */}}
{{- define "wsingress.watchNamespaces" -}}
{{- $ns := .Values.controller.watchNamespace -}}
{{- if kindIs "string" $ns -}}
{{- $ns = ternary (list) (list $ns) (eq $ns "") -}}
{{- end -}}
{{- toJson (uniq $ns) -}}
{{- end -}}

{{/* The pod's update strategy (see values.yaml controller.updateStrategy). */}}
{{- define "wsingress.updateStrategy" -}}
{{- $strategy := .Values.controller.updateStrategy -}}
{{- if not $strategy -}}
{{- if or .Values.hostPort.enabled (eq .Values.controller.kind "DaemonSet") -}}
{{- $strategy = dict "type" "RollingUpdate" "rollingUpdate" (dict "maxUnavailable" 1 "maxSurge" 0) -}}
{{- else -}}
{{- $strategy = dict "type" "RollingUpdate" "rollingUpdate" (dict "maxUnavailable" 0 "maxSurge" 1) -}}
{{- end -}}
{{- end -}}
{{- $surge := toString (dig "rollingUpdate" "maxSurge" "" $strategy) -}}
{{- if and .Values.hostPort.enabled (not (has $surge (list "" "0" "0%"))) -}}
{{- fail (printf "controller.updateStrategy.rollingUpdate.maxSurge=%s with hostPort.enabled: a surge pod can never bind the node's port, so the rollout would never finish; use maxSurge: 0 and maxUnavailable: 1" $surge) -}}
{{- end -}}
{{- toYaml $strategy -}}
{{- end -}}

{{/* A probe's timings (values livenessProbe/readinessProbe/startupProbe), as integers. */}}
{{- define "wsingress.probeTimings" -}}
{{- range $key := list "initialDelaySeconds" "periodSeconds" "timeoutSeconds" "failureThreshold" }}
{{- if hasKey $ $key }}
{{ $key }}: {{ include "wsingress.int" (get $ $key) }}
{{- end }}
{{- end }}
{{- end -}}

{{/* An IntOrString value: "25%" stays a quoted string, anything else is a whole number. */}}
{{- define "wsingress.intOrPercent" -}}
{{- if and (typeIs "string" .) (hasSuffix "%" .) -}}
{{- . | quote -}}
{{- else -}}
{{- include "wsingress.int" . -}}
{{- end -}}
{{- end -}}

{{/* RBAC rules for cluster-scoped objects (always a ClusterRole). */}}
{{- define "wsingress.rbac.clusterScopedRules" -}}
- apiGroups: ["networking.k8s.io"]
  resources: ["ingressclasses"]
  verbs: ["list", "watch"]
- apiGroups: [""]
  resources: ["nodes"]
  verbs: ["list"]
{{- if .Values.gatewayAPI.enabled }}
{{- /* Gateway API (src/source/rbac.rs GATEWAY_ACCESS): cluster-scoped kinds. */}}
- apiGroups: ["gateway.networking.k8s.io"]
  resources: ["gatewayclasses"]
  verbs: ["list", "watch"]
- apiGroups: ["gateway.networking.k8s.io"]
  resources: ["gatewayclasses/status"]
  verbs: ["update"]
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
{{- end }}
{{- end -}}

{{/* RBAC rule for Services (the routes' backends and the publish Service). */}}
{{- define "wsingress.rbac.serviceRule" -}}
- apiGroups: [""]
  resources: ["services"]
  verbs: ["list", "watch"]
{{- end -}}

{{/* RBAC rules for namespaced objects (ClusterRole, or a Role per watched namespace). */}}
{{- define "wsingress.rbac.namespacedRules" -}}
- apiGroups: ["networking.k8s.io"]
  resources: ["ingresses"]
  verbs: ["list", "watch"]
- apiGroups: ["networking.k8s.io"]
  resources: ["ingresses/status"]
  verbs: ["patch"]
{{ include "wsingress.rbac.serviceRule" . }}
- apiGroups: ["discovery.k8s.io"]
  resources: ["endpointslices"]
  verbs: ["list", "watch"]
{{- /* Read only through field selectors: type=kubernetes.io/tls, or metadata.name (docs/tls.md). */}}
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["list", "watch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "get", "patch"]
{{- if .Values.gatewayAPI.enabled }}
{{- /* Gateway API (src/source/rbac.rs GATEWAY_ACCESS): namespaced kinds. */}}
- apiGroups: ["gateway.networking.k8s.io"]
  resources: ["gateways", "httproutes", "referencegrants"]
  verbs: ["list", "watch"]
- apiGroups: ["gateway.networking.k8s.io"]
  resources: ["gateways/status", "httproutes/status"]
  verbs: ["update"]
{{- end }}
{{- end -}}

{{/* The Secret holding the cookie-affinity key: the user's, or the one this chart creates. */}}
{{- define "wsingress.affinitySecret" -}}
{{- .Values.controller.affinityKey.existingSecret | default (printf "%s-affinity" (include "wsingress.fullname" .)) -}}
{{- end }}
