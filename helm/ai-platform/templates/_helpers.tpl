{{/* Names and labels shared by every template. */}}
{{- define "ai-platform.fullname" -}}
{{- printf "%s-operator" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ai-platform.tag" -}}
{{- required "image.tag is required: --set image.tag=$GIT_SHA" .Values.image.tag -}}
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
