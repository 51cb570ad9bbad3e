{{/* Names and labels shared by every template. */}}
{{- define "ai-platform.fullname" -}}
{{- printf "%s-operator" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- /*
The image tag as a string. `--set image.tag=1234567` (an all-digit short SHA) arrives as a number and is
taken as written; a number in a values file has been through YAML and JSON already (0123456 would be
octal, 1234567 a float), so it is refused with the fix rather than guessed at.
*/ -}}
{{- define "ai-platform.tag" -}}
{{- $tag := required "image.tag is required: --set image.tag=$GIT_SHA" .Values.image.tag -}}
{{- if kindIs "float64" $tag -}}
{{- fail "image.tag is a number in a values file: quote it (tag: \"0123456\"), or give it with --set image.tag=<sha>" -}}
{{- end -}}
{{- toString $tag -}}
{{- end -}}

{{- /* repository:tag, or repository@digest when a digest pins the image. */ -}}
{{- define "ai-platform.image" -}}
{{- $root := index . 0 -}}
{{- $name := index . 1 -}}
{{- $digest := index $root.Values.image.digest (index . 2) -}}
{{- if $digest -}}
{{- printf "%s/%s@%s" $root.Values.image.repository $name $digest -}}
{{- else -}}
{{- printf "%s/%s:%s" $root.Values.image.repository $name (include "ai-platform.tag" $root) -}}
{{- end -}}
{{- end -}}

{{- /*
Cluster-scoped objects (ClusterRoles, ClusterRoleBindings) carry the release's namespace too: releases
of the same name in two namespaces (staging and prod in one cluster) must not overwrite each other's.
*/ -}}
{{- define "ai-platform.clusterName" -}}
{{- printf "%s-%s-operator" .Release.Namespace .Release.Name -}}
{{- end -}}

{{- /* Whether the cluster serves the Prometheus Operator's kinds (helm template: --api-versions). */ -}}
{{- define "ai-platform.hasPrometheusOperator" -}}
{{- if and (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1/ServiceMonitor")
           (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1/PrometheusRule") -}}
true
{{- end -}}
{{- end -}}

{{- /*
The operator must watch the namespace of the LearnerPlatform this release creates; watchNamespaces that
leave it out would install a platform nothing ever reconciles.
*/ -}}
{{- define "ai-platform.checkWatchNamespaces" -}}
{{- $watched := .Values.operator.watchNamespaces -}}
{{- if and .Values.platform.enabled $watched (not (has .Release.Namespace $watched)) -}}
{{- fail (printf "operator.watchNamespaces (%s) leaves this release's LearnerPlatform in namespace %s unwatched: add %s, or set platform.enabled=false" (join "," $watched) .Release.Namespace .Release.Namespace) -}}
{{- end -}}
{{- end -}}

{{- define "ai-platform.selectorLabels" -}}
app.kubernetes.io/name: learner-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "ai-platform.labels" -}}
{{ include "ai-platform.selectorLabels" . }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: learner-platform
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ include "ai-platform.tag" . | trunc 63 | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}
