{{/* Common labels on every object. */}}
{{- define "podnet.labels" -}}
app.kubernetes.io/name: podnet
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* Selector labels of one component: include "podnet.selector" (list . "operator"). */}}
{{- define "podnet.selector" -}}
app.kubernetes.io/name: podnet
app.kubernetes.io/instance: {{ (index . 0).Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* Object name of one component: podnet-operator, podnet-daemon (prefixed by the release
     name unless it is "podnet"). */}}
{{- define "podnet.name" -}}
{{- $root := index . 0 -}}
{{- if eq $root.Release.Name "podnet" -}}
podnet-{{ index . 1 }}
{{- else -}}
{{ printf "%s-podnet-%s" $root.Release.Name (index . 1) | trunc 63 | trimSuffix "-" }}
{{- end -}}
{{- end -}}

{{/* Image reference: include "podnet.image" (list . .Values.image.operator). */}}
{{- define "podnet.image" -}}
{{- $root := index . 0 -}}
{{- $img := index . 1 -}}
{{- if $img.digest -}}
{{ $img.repository }}@{{ $img.digest }}
{{- else -}}
{{ $img.repository }}:{{ $img.tag | default $root.Chart.AppVersion }}
{{- end -}}
{{- end -}}

{{/* The service account user name of one component. */}}
{{- define "podnet.serviceAccountUser" -}}
system:serviceaccount:{{ (index . 0).Release.Namespace }}:{{ include "podnet.name" . }}
{{- end -}}

{{/* Environment both components share. */}}
{{- define "podnet.commonEnv" -}}
- name: PODNET_LOG_LEVEL
  value: {{ .Values.logging.level | quote }}
- name: PODNET_LOG_FORMAT
  value: {{ .Values.logging.format | quote }}
{{- if .Values.kubernetesServiceHost }}
- name: KUBERNETES_SERVICE_HOST
  value: {{ .Values.kubernetesServiceHost | quote }}
- name: KUBERNETES_SERVICE_PORT
  value: {{ .Values.kubernetesServicePort | default "443" | quote }}
{{- end }}
{{- end -}}
