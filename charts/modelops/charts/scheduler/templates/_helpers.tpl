{{/* Helpers of the scheduler sub-chart: names, labels, the image. */}}

{{- define "scheduler.name" -}}
modelops-scheduler
{{- end -}}

{{/* `<release>-scheduler`, or the release name when it already says scheduler; 63 characters at most. */}}
{{- define "scheduler.fullname" -}}
{{- if contains "scheduler" .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-scheduler" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "scheduler.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels (never the chart version). Call with (list $ component). */}}
{{- define "scheduler.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "scheduler.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "scheduler.labels" -}}
{{- $root := index . 0 -}}
{{ include "scheduler.selectorLabels" . }}
app.kubernetes.io/part-of: modelops
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
app.kubernetes.io/version: {{ $root.Chart.AppVersion | quote }}
helm.sh/chart: {{ include "scheduler.chart" $root }}
{{- end -}}

{{- define "scheduler.image" -}}
{{- printf "%s/modelops:%s" (.Values.image.registry | trimSuffix "/") .Values.image.tag -}}
{{- end -}}

{{- define "scheduler.publicUrl" -}}
{{- .Values.server.publicUrl | default (printf "http://%s.%s.svc:%d" (include "scheduler.fullname" .) .Release.Namespace (int .Values.service.port)) -}}
{{- end -}}

{{- define "scheduler.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Environment shared by the server and its migration init container. */}}
{{- define "scheduler.env" -}}
- {name: HOME, value: /tmp}
- {name: MODELOPS_SCHEDULER_HOME, value: /tmp/modelops}
- name: MODELOPS_SCHEDULER_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.database.existingSecret | quote }}
      key: {{ .Values.database.key | quote }}
{{- end -}}
