{{/*
Helpers of the modelops chart: names, labels, the image, security contexts, resources, the values document
the components read, and the volumes of file data channels.
*/}}

{{- define "modelops.name" -}}
modelops
{{- end -}}

{{/* The release's own name, cut to 63 characters (per job: `modelops-<job uuid>`, 45). */}}
{{- define "modelops.fullname" -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "modelops.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Name of a per-component object: `<release>-<suffix>`, the release name shortened so that the whole stays a
63-character DNS label and the suffix (a component name of up to 40 characters) is never cut.
Call: include "modelops.objectName" (list $ "digits-rf")
*/}}
{{- define "modelops.objectName" -}}
{{- $root := index . 0 -}}
{{- $suffix := index . 1 -}}
{{- $room := sub 62 (len $suffix) | int -}}
{{- if lt $room 1 -}}
{{- fail (printf "modelops: the name %q is too long for a Kubernetes object name" $suffix) -}}
{{- end -}}
{{- printf "%s-%s" (include "modelops.fullname" $root | trunc $room | trimSuffix "-") $suffix -}}
{{- end -}}

{{/* Selector labels: name, instance, component. Never the chart version. Call with (list $ component). */}}
{{- define "modelops.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "modelops.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* Labels of every object. Call with (list $ component). */}}
{{- define "modelops.labels" -}}
{{- $root := index . 0 -}}
{{ include "modelops.selectorLabels" . }}
app.kubernetes.io/part-of: modelops
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
app.kubernetes.io/version: {{ $root.Chart.AppVersion | quote }}
helm.sh/chart: {{ include "modelops.chart" $root }}
modelops.io/job-id: {{ $root.Values.global.jobId | default "" | quote }}
{{- with $root.Values.pipeline }}
modelops.io/pipeline: {{ .name | quote }}
{{- end }}
{{- end -}}

{{/* Component label values: `scoring-service-<name>`, `scoring-flow-<name>`, `job` for release-wide objects. */}}
{{- define "modelops.serviceComponent" -}}
scoring-service-{{ . }}
{{- end -}}
{{- define "modelops.flowComponent" -}}
scoring-flow-{{ . }}
{{- end -}}

{{- define "modelops.image" -}}
{{- $image := .Values.global.image -}}
{{- printf "%s/modelops:%s" ($image.registry | trimSuffix "/") $image.tag -}}
{{- end -}}

{{/* Safe by default: non-root (the image's uid 65532), RuntimeDefault seccomp, group-owned volumes. */}}
{{- define "modelops.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "modelops.containerSecurityContext" -}}
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

{{/*
Requests and limits: what the component gives, with the missing parts from sizeProfiles[global.sizeProfile].
Call with (list $ resources).
*/}}
{{- define "modelops.resources" -}}
{{- $root := index . 0 -}}
{{- $given := index . 1 | default dict -}}
{{- $profileName := $root.Values.global.sizeProfile | default "small" -}}
{{- $profile := index $root.Values.sizeProfiles $profileName | default dict -}}
{{- $out := dict -}}
{{- range $part := list "requests" "limits" -}}
{{- $merged := merge (deepCopy (get $given $part | default dict)) (deepCopy (get $profile $part | default dict)) -}}
{{- if $merged }}{{ $_ := set $out $part $merged }}{{ end -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{/* The pipeline, required as soon as there is something to deploy. */}}
{{- define "modelops.pipeline" -}}
{{- required "modelops: .Values.pipeline is missing: install the values `modelops ir render` produces" .Values.pipeline | toYaml -}}
{{- end -}}

{{/*
The values document the components read (/etc/modelops/values.yaml): the five keys of `ir.render.Values`, the
job token removed (it reaches the flows from the `<release>-job-token` Secret), chart-only keys left out.
*/}}
{{- define "modelops.valuesDocument" -}}
{{- $global := deepCopy .Values.global -}}
{{- $scheduler := get $global "scheduler" | default dict -}}
{{- $_ := unset $scheduler "token" -}}
{{- $doc := dict "global" $global "pipeline" (include "modelops.pipeline" . | fromYaml) "scoringServices" .Values.scoringServices "scoringFlows" .Values.scoringFlows "dataChannels" .Values.dataChannels -}}
{{- toYaml $doc -}}
{{- end -}}

{{- define "modelops.configChecksum" -}}
{{- include "modelops.valuesDocument" . | sha256sum -}}
{{- end -}}

{{/* Environment variable of a secretRef: MODELOPS_SECRET_<NAME>_<KEY> (see ir/secrets.py). */}}
{{- define "modelops.secretEnvName" -}}
{{- printf "MODELOPS_SECRET_%s_%s" (regexReplaceAll "[^A-Z0-9]" (upper .name) "_") (regexReplaceAll "[^A-Z0-9]" (upper .key) "_") -}}
{{- end -}}

{{/*
The model store of a model uri, "" for a path, file://, http(s):// or a stored artifact: "s3" for s3://, "models"
for an MLflow registry's models:/ (ir.models.uri_scheme).
*/}}
{{- define "modelops.modelStoreScheme" -}}
{{- if hasPrefix "s3://" (lower .) }}s3{{ else if hasPrefix "models:/" . }}models{{ end -}}
{{- end -}}

{{/*
The keys of its Secret a model store reads (scoring_services/stores/secrets.py STORE_SECRET_KEYS), as JSON.
*/}}
{{- define "modelops.storeSecretKeys" -}}
{{- $keys := dict "s3" (list "endpoint" "region" "access-key-id" "secret-access-key" "session-token") "models" (list "tracking-uri" "token" "username" "password") -}}
{{- index $keys . | default list | toJson -}}
{{- end -}}

{{/*
The env entries of a scoring service's containers for its model's store Secret (model.credentials.secretRef):
each key the store reads, as MODELOPS_SECRET_<NAME>_<KEY>, from the Secret with `optional: true` (a Secret
holds only the keys it needs). Nothing for a model without credentials or not in a store.
*/}}
{{- define "modelops.modelStoreEnv" -}}
{{- $model := . -}}
{{- $scheme := include "modelops.modelStoreScheme" $model.uri -}}
{{- $secret := (($model.credentials | default dict).secretRef | default dict).name | default "" -}}
{{- if and $scheme $secret }}
{{- range $key := include "modelops.storeSecretKeys" $scheme | fromJsonArray }}
- name: {{ include "modelops.secretEnvName" (dict "name" $secret "key" $key) }}
  valueFrom:
    secretKeyRef:
      name: {{ $secret | quote }}
      key: {{ $key | quote }}
      optional: true
{{- end }}
{{- end }}
{{- end -}}

{{/*
Folders of the `file` data channels, as YAML: mount path -> {owner, volume, claim, created, sink}. A relative path
lives under the flows' working directory /data; the folder is the path up to its file name or its first glob
component. Channels in one folder share the volume of the alphabetically first of them.
*/}}
{{- define "modelops.fileDirs" -}}
{{- $root := . -}}
{{- $dirs := dict -}}
{{- range $name := keys .Values.dataChannels | sortAlpha -}}
{{- $channel := index $root.Values.dataChannels $name -}}
{{- if eq $channel.spec.type "file" -}}
{{- $mount := include "modelops.fileMountPath" $channel.spec.file.path -}}
{{- if not (hasKey $dirs $mount) -}}
{{- $existing := get $root.Values.persistence.fileChannels.existingClaims $name -}}
{{- $claim := $existing | default (include "modelops.objectName" (list $root (printf "data-%s" $name))) -}}
{{- $_ := set $dirs $mount (dict "owner" $name "volume" (printf "data-%s" $name) "claim" $claim "created" (not $existing) "sink" false) -}}
{{- end -}}
{{- if eq $channel.spec.direction "sink" -}}
{{- $_ := set (index $dirs $mount) "sink" true -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toYaml $dirs -}}
{{- end -}}

{{/* Mount path of the folder of a file channel path (see modelops.fileDirs). */}}
{{- define "modelops.fileMountPath" -}}
{{- $path := . | trimPrefix "./" -}}
{{- $parts := splitList "/" $path -}}
{{- $keep := list -}}
{{- $stop := false -}}
{{- range $i, $part := $parts -}}
{{- if or (eq $i (sub (len $parts) 1)) (regexMatch "[*?\\[]" $part) -}}{{- $stop = true -}}{{- end -}}
{{- if not $stop -}}{{- $keep = append $keep $part -}}{{- end -}}
{{- end -}}
{{- if has ".." $keep -}}
{{- fail (printf "modelops: file channel path %q leaves its folder ('..'): use a path below the working directory or an absolute one" .) -}}
{{- end -}}
{{- $dir := join "/" $keep -}}
{{- if hasPrefix "/" $path -}}
{{- $dir | default "/" -}}
{{- else if $dir -}}
{{- printf "/data/%s" $dir -}}
{{- else -}}
/data
{{- end -}}
{{- end -}}

{{/* The file channels of a flow: list of its channels (source, sinks, dead letter). Call with a flow. */}}
{{- define "modelops.flowChannels" -}}
{{- $channels := list .source -}}
{{- range .sinks }}{{ $channels = append $channels . }}{{ end -}}
{{- with .deadLetter }}{{ $channels = append $channels . }}{{ end -}}
{{- toYaml (dict "channels" $channels) -}}
{{- end -}}

{{/* Whether the values are a real job (something to deploy). */}}
{{- define "modelops.hasComponents" -}}
{{- if or .Values.scoringServices .Values.scoringFlows -}}true{{- end -}}
{{- end -}}

{{/*
KEDA triggers of a scoring service, as YAML {triggers: [...], auth: {parameter: secretRef}}: the queue of every
redis/rabbitmq source of a flow calling the service, then its Prometheus query. Call with (list $ serviceName).
*/}}
{{- define "modelops.kedaTriggers" -}}
{{- $root := index . 0 -}}
{{- $service := index . 1 -}}
{{- $keda := $root.Values.keda -}}
{{- $triggers := list -}}
{{- range $flowName := keys $root.Values.scoringFlows | sortAlpha -}}
{{- $flow := index $root.Values.scoringFlows $flowName -}}
{{- if has $service ($flow.services | default list) -}}
{{- $source := $flow.source -}}
{{- $authName := include "modelops.objectName" (list $root (printf "keda-%s" $source.name)) -}}
{{- if eq $source.spec.type "rabbitmq" -}}
{{- $triggers = append $triggers (dict "type" "rabbitmq" "name" (printf "queue-%s" $source.name) "metadata" (dict "protocol" "amqp" "queueName" $source.spec.rabbitmq.queue "mode" "QueueLength" "value" (toString $keda.queueLength)) "authenticationRef" (dict "name" $authName)) -}}
{{- else if and (eq $source.spec.type "redis") (hasKey $keda.redis $source.name) -}}
{{- $triggers = append $triggers (dict "type" "redis-streams" "name" (printf "stream-%s" $source.name) "metadata" (dict "stream" $source.spec.redis.stream "consumerGroup" $source.spec.redis.consumerGroup "pendingEntriesCount" (toString $keda.queueLength)) "authenticationRef" (dict "name" $authName)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- with get $keda.prometheus $service -}}
{{- $server := required (printf "modelops: keda.prometheus.%s needs keda.prometheusServer" $service) $keda.prometheusServer -}}
{{- $triggers = append $triggers (dict "type" "prometheus" "name" "prometheus" "metadata" (dict "serverAddress" $server "query" .query "threshold" .threshold)) -}}
{{- end -}}
{{- toYaml (dict "triggers" $triggers) -}}
{{- end -}}

{{/* Whether KEDA scales the service (a ScaledObject instead of an HPA). Call with (list $ serviceName). */}}
{{- define "modelops.kedaScaled" -}}
{{- $root := index . 0 -}}
{{- if $root.Values.keda.enabled -}}
{{- $t := include "modelops.kedaTriggers" . | fromYaml -}}
{{- if $t.triggers }}true{{ end -}}
{{- end -}}
{{- end -}}

{{/* The shared pod-level settings of every component pod. */}}
{{- define "modelops.podCommon" -}}
automountServiceAccountToken: false
enableServiceLinks: false
securityContext:
  {{- include "modelops.podSecurityContext" . | nindent 2 }}
{{- end -}}
