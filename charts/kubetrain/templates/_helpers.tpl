{{- define "kubetrain.labels" -}}
app.kubernetes.io/name: kubetrain-operator
app.kubernetes.io/part-of: kubetrain
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "kubetrain.selector" -}}
app.kubernetes.io/name: kubetrain-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "kubetrain.serviceAccount" -}}
{{ .Values.serviceAccount.name | default (printf "%s-operator" .Release.Name) }}
{{- end -}}
