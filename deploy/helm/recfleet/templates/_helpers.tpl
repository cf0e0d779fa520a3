{{/*
recfleet chart helpers.

Every workload is described once in "recfleet.components": its values key, its name in
object names, its settings prefix and the backing systems its settings class reads. The
files under templates/<component>/ render it through the named templates in
_components.tpl, so all components share one values shape and one set of manifests.
*/}}

{{- define "recfleet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "recfleet.fullname" -}}
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

{{/*
The component registry (see the file comment). kind: http, grpc or consumer; uses: the
backing systems its settings read; calls: the fleet services it calls over gRPC (the
NetworkPolicies allow exactly these edges).
*/}}
{{- define "recfleet.components" -}}
- key: gateway
  name: gateway
  kind: http
  prefix: RECFLEET_GATEWAY_
  args: ["python", "-m", "recfleet_gateway"]
  uses: [postgres, redis, bootstrapAdminKey, erasureHashKey]
  calls: [feature-store, candidate-gen, ranking, event-ingest]
- key: candidateGen
  name: candidate-gen
  kind: grpc
  service: candidate-gen
  prefix: RECFLEET_CANDIDATES_
  args: ["python", "-m", "recfleet_candidates"]
  uses: [postgres, artifacts]
- key: ranking
  name: ranking
  kind: grpc
  service: ranking
  prefix: RECFLEET_RANKING_
  args: ["python", "-m", "recfleet_ranking"]
  uses: [postgres, redis, artifacts]
  calls: [feature-store]
- key: featureStore
  name: feature-store
  kind: grpc
  service: feature-store
  prefix: RECFLEET_FEATURES_
  args: ["python", "-m", "recfleet_features"]
  uses: [postgres, redis]
- key: eventIngest
  name: event-ingest
  kind: grpc
  service: event-ingest
  prefix: RECFLEET_INGEST_
  args: ["python", "-m", "recfleet_ingest"]
  uses: [postgres, redis, kafka, erasureHashKey]
- key: ingestSink
  name: ingest-sink
  kind: consumer
  prefix: RECFLEET_INGEST_
  args: ["python", "-m", "recfleet_ingest.sink"]
  inherit: eventIngest
  uses: [postgres, redis, kafka, erasureHashKey]
- key: ingestRealtime
  name: ingest-realtime
  kind: consumer
  prefix: RECFLEET_INGEST_
  args: ["python", "-m", "recfleet_ingest.realtime"]
  inherit: eventIngest
  uses: [postgres, redis, kafka, erasureHashKey]
{{- end -}}

{{/* Selector labels: stable across upgrades, so never the version or chart. */}}
{{- define "recfleet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "recfleet.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- if .track }}
recfleet.io/track: {{ .track }}
{{- end }}
{{- /* shard is an int for candidate-gen (0 included) and "" or absent for the others. */ -}}
{{- if and (hasKey . "shard") (kindIs "int" .shard) }}
recfleet.io/shard: {{ .shard | quote }}
{{- end }}
{{- end -}}

{{/* Metadata labels: selector labels plus version and chart. */}}
{{- define "recfleet.labels" -}}
{{ include "recfleet.selectorLabels" . }}
app.kubernetes.io/part-of: recfleet
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* Labels shared by every object of the release, without a component. */}}
{{- define "recfleet.commonLabels" -}}
app.kubernetes.io/name: {{ include "recfleet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: recfleet
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* image reference from {repository, tag, digest}; the tag defaults to appVersion. */}}
{{- define "recfleet.image" -}}
{{- $img := .image -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $img.repository $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $img.repository (default .root.Chart.AppVersion $img.tag) -}}
{{- end -}}
{{- end -}}

{{/* Object name of a component (optionally its canary track). */}}
{{- define "recfleet.componentName" -}}
{{- $base := printf "%s-%s" (include "recfleet.fullname" .root) .component -}}
{{- if eq .track "canary" -}}
{{- printf "%s-canary" $base | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $base | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* candidate-gen's per-shard name, e.g. recfleet-candidate-gen-s0 or ...-canary-s0. */}}
{{- define "recfleet.shardName" -}}
{{- printf "%s-s%d" (include "recfleet.componentName" .) (int .shard) -}}
{{- end -}}

{{/*
Name of the headless Service of one component and track (candidate-gen: of one shard, when
.shard is an int). Clients resolve it to every ready pod and balance calls over them.
*/}}
{{- define "recfleet.headlessName" -}}
{{- $base := include "recfleet.componentName" . -}}
{{- if and (hasKey . "shard") (kindIs "int" .shard) -}}
{{- $base = include "recfleet.shardName" . -}}
{{- end -}}
{{- printf "%s-headless" $base | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Comma-separated candidate-gen targets in shard order, for one track: the shard Services
(host:port, for the helm test), or with .headless the shards' headless Services in the
form the gRPC clients balance over (dns:///name:port, round robin over ready pods).
*/}}
{{- define "recfleet.candidateTargets" -}}
{{- $root := .root -}}
{{- $track := .track -}}
{{- $headless := .headless -}}
{{- $port := int $root.Values.candidateGen.ports.grpc -}}
{{- $targets := list -}}
{{- range $shard := until (int $root.Values.candidateGen.shards.count) -}}
{{- $sel := dict "root" $root "component" "candidate-gen" "track" $track "shard" $shard -}}
{{- if $headless -}}
{{- $targets = append $targets (printf "dns:///%s:%d" (include "recfleet.headlessName" $sel) $port) -}}
{{- else -}}
{{- $targets = append $targets (printf "%s:%d" (include "recfleet.shardName" $sel) $port) -}}
{{- end -}}
{{- end -}}
{{- join "," $targets -}}
{{- end -}}

{{/*
Target of a single-Service component for one track: its Service (e.g. recfleet-ranking:50071,
for the helm test), or with .headless its headless Service as the gRPC clients use it
(dns:///recfleet-ranking-headless:50071).
*/}}
{{- define "recfleet.target" -}}
{{- $values := index .root.Values .key -}}
{{- if .headless -}}
{{- printf "dns:///%s:%d" (include "recfleet.headlessName" (dict "root" .root "component" .component "track" .track)) (int $values.ports.grpc) -}}
{{- else -}}
{{- printf "%s:%d" (include "recfleet.componentName" .) (int $values.ports.grpc) -}}
{{- end -}}
{{- end -}}

{{/* Canary weights per downstream service (0 where the canary is off), as a dict. */}}
{{- define "recfleet.canaryWeights" -}}
{{- $weights := dict -}}
{{- range $c := include "recfleet.components" . | fromYamlArray -}}
{{- if $c.service -}}
{{- $v := index $.Values $c.key -}}
{{- $_ := set $weights $c.service (ternary (int $v.canary.weight) 0 (and $v.enabled $v.canary.enabled)) -}}
{{- end -}}
{{- end -}}
{{- toJson $weights -}}
{{- end -}}

{{/*
The plain settings of one component, as the data of its env ConfigMap: the values'
`env` map first (the consumers start from eventIngest.env: they share its settings class), then what the chart derives (ports, addresses, topics), which wins.
Secrets, the track, the shard and the pod name are set on the container instead.
Every gRPC target is a headless Service in dns:/// form: the clients resolve it to every
ready pod and balance round robin; servers close connections after
grpc.maxConnectionAgeSeconds so clients re-resolve and reach pods added since.
*/}}
{{- define "recfleet.configData" -}}
{{- $root := .root -}}
{{- $c := .c -}}
{{- $v := index $root.Values $c.key -}}
{{- $data := dict -}}
{{- if $c.inherit -}}
{{- range $k, $val := (index $root.Values $c.inherit).env -}}
{{- $_ := set $data $k (toString $val) -}}
{{- end -}}
{{- end -}}
{{- range $k, $val := $v.env -}}
{{- $_ := set $data $k (toString $val) -}}
{{- end -}}
{{- $_ := set $data (printf "%sMAX_CONNECTION_AGE_SECONDS" $c.prefix) (toString $root.Values.grpc.maxConnectionAgeSeconds) -}}
{{- $_ := set $data (printf "%sMAX_CONNECTION_AGE_GRACE_SECONDS" $c.prefix) (toString $root.Values.grpc.maxConnectionAgeGraceSeconds) -}}
{{- $_ := set $data (printf "%sMETRICS_PORT" $c.prefix) (toString $v.ports.metrics) -}}
{{- if eq $c.kind "http" -}}
{{- $_ := set $data (printf "%sHOST" $c.prefix) "0.0.0.0" -}}
{{- $_ := set $data (printf "%sPORT" $c.prefix) (toString $v.ports.http) -}}
{{- range $t := list (list "FEATURE_STORE" "featureStore" "feature-store") (list "RANKING" "ranking" "ranking") (list "EVENT_INGEST" "eventIngest" "event-ingest") }}
{{- $tv := index $root.Values (index $t 1) -}}
{{- $_ := set $data (printf "%s%s_TARGET" $c.prefix (index $t 0)) (include "recfleet.target" (dict "root" $root "key" (index $t 1) "component" (index $t 2) "track" "stable" "headless" true)) -}}
{{- $_ := set $data (printf "%s%s_CANARY_TARGET" $c.prefix (index $t 0)) (ternary (include "recfleet.target" (dict "root" $root "key" (index $t 1) "component" (index $t 2) "track" "canary" "headless" true)) "" (and $tv.enabled $tv.canary.enabled)) -}}
{{- end -}}
{{- $cg := $root.Values.candidateGen -}}
{{- $_ := set $data (printf "%sCANDIDATE_GEN_TARGETS" $c.prefix) (include "recfleet.candidateTargets" (dict "root" $root "track" "stable" "headless" true)) -}}
{{- $_ := set $data (printf "%sCANDIDATE_GEN_CANARY_TARGETS" $c.prefix) (ternary (include "recfleet.candidateTargets" (dict "root" $root "track" "canary" "headless" true)) "" (and $cg.enabled $cg.canary.enabled)) -}}
{{- $_ := set $data (printf "%sCANARY_WEIGHTS" $c.prefix) (include "recfleet.canaryWeights" $root) -}}
{{- $_ := set $data (printf "%sROUTING_FILE" $c.prefix) "/etc/recfleet/routing/routing.json" -}}
{{- $_ := set $data "RECFLEET_PROMOTION_MAX_REGRESSION" (toString $root.Values.promotion.maxRegression) -}}
{{- if $root.Values.cursorSecret.existingSecret -}}
{{- /* Set from its Secret on the container instead. */ -}}
{{- $_ := unset $data (printf "%sCURSOR_SECRET" $c.prefix) -}}
{{- end -}}
{{- else -}}
{{- if $v.ports.grpc -}}
{{- $_ := set $data (printf "%sGRPC_PORT" $c.prefix) (toString $v.ports.grpc) -}}
{{- else if $c.inherit -}}
{{- /* Consumers serve no gRPC; their settings class still has the field. */ -}}
{{- $_ := set $data (printf "%sGRPC_PORT" $c.prefix) (toString (index $root.Values $c.inherit).ports.grpc) -}}
{{- end -}}
{{- end -}}
{{- if eq $c.key "candidateGen" -}}
{{- $_ := set $data (printf "%sSHARD_COUNT" $c.prefix) (toString $v.shards.count) -}}
{{- end -}}
{{- if eq $c.key "ranking" -}}
{{- $_ := set $data (printf "%sFEATURE_STORE_TARGET" $c.prefix) (include "recfleet.target" (dict "root" $root "key" "featureStore" "component" "feature-store" "track" "stable" "headless" true)) -}}
{{- end -}}
{{- if has "kafka" $c.uses -}}
{{- include "recfleet.kafkaData" (dict "root" $root "data" $data) -}}
{{- end -}}
{{- if has "artifacts" $c.uses -}}
{{- $_ := set $data "RECFLEET_ARTIFACT_URL" $root.Values.artifacts.url -}}
{{- end -}}
{{- toYaml $data -}}
{{- end -}}

{{/* Adds the broker and topic names to .data (a dict); renders nothing. */}}
{{- define "recfleet.kafkaData" -}}
{{- $k := .root.Values.kafka -}}
{{- $_ := set .data "KAFKA_BOOTSTRAP_SERVERS" $k.bootstrapServers -}}
{{- $_ := set .data "RECFLEET_EVENTS_TOPIC" $k.topics.events -}}
{{- $_ := set .data "RECFLEET_DEAD_LETTER_TOPIC" $k.topics.deadLetter -}}
{{- $_ := set .data "RECFLEET_USERS_TOPIC" $k.topics.users -}}
{{- end -}}

{{/* Container env: the track, secrets by reference, the downward API, OTel, canary overrides. */}}
{{- define "recfleet.env" -}}
{{- $root := .root -}}
{{- $c := .c -}}
{{- if ne $c.key "jobs" }}
- name: RECFLEET_TRACK
  value: {{ .track | quote }}
{{- end }}
{{- if has "postgres" $c.uses }}
- name: RECFLEET_POSTGRES_DSN
  valueFrom:
    secretKeyRef:
      name: {{ $root.Values.postgres.existingSecret }}
      key: {{ $root.Values.postgres.secretKey }}
{{- end }}
{{- if has "redis" $c.uses }}
- name: RECFLEET_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ $root.Values.redis.existingSecret }}
      key: {{ $root.Values.redis.secretKey }}
{{- end }}
{{- if has "bootstrapAdminKey" $c.uses }}
- name: RECFLEET_BOOTSTRAP_ADMIN_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $root.Values.bootstrapAdminKey.existingSecret }}
      key: {{ $root.Values.bootstrapAdminKey.secretKey }}
      # Optional: without the Secret the gateway accepts only keys stored in Postgres.
      optional: true
{{- end }}
{{- if has "erasureHashKey" $c.uses }}
- name: RECFLEET_ERASURE_HASH_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $root.Values.erasureHashKey.existingSecret }}
      key: {{ $root.Values.erasureHashKey.secretKey }}
{{- end }}
{{- if and (eq $c.key "gateway") $root.Values.cursorSecret.existingSecret }}
- name: RECFLEET_GATEWAY_CURSOR_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ $root.Values.cursorSecret.existingSecret }}
      key: {{ $root.Values.cursorSecret.secretKey }}
{{- end }}
{{- if eq $c.key "candidateGen" }}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: RECFLEET_CANDIDATES_SHARD
  value: {{ .shard | quote }}
{{- end }}
{{- if $root.Values.otel.enabled }}
{{ include "recfleet.otelEnv" (dict "root" $root "component" $c.name "track" .track) }}
{{- end }}
{{- if eq .track "canary" }}
{{- range $k, $val := (index $root.Values $c.key).canary.env }}
- name: {{ $k }}
  value: {{ toString $val | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The standard OpenTelemetry SDK variables the runtime's tracing reads. */}}
{{- define "recfleet.otelEnv" -}}
- name: OTEL_SERVICE_NAME
  value: {{ printf "recfleet-%s" .component | quote }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ .root.Values.otel.endpoint | quote }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: {{ .root.Values.otel.protocol | quote }}
- name: OTEL_TRACES_EXPORTER
  value: otlp
- name: OTEL_TRACES_SAMPLER
  value: {{ .root.Values.otel.sampler | quote }}
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ .root.Values.otel.samplerArg | quote }}
- name: OTEL_RESOURCE_ATTRIBUTES
  {{- $attributes := list "service.namespace=recfleet" (printf "recfleet.track=%s" .track) }}
  {{- with .root.Values.otel.environment }}{{ $attributes = append $attributes (printf "deployment.environment=%s" .) }}{{ end }}
  value: {{ join "," $attributes | quote }}
{{- end -}}

{{/* Restricted pod security (Pod Security Standards "restricted"). */}}
{{- define "recfleet.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.podSecurity.runAsUser }}
runAsGroup: {{ .Values.podSecurity.runAsGroup }}
fsGroup: {{ .Values.podSecurity.fsGroup }}
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "recfleet.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.podSecurity.runAsUser }}
runAsGroup: {{ .Values.podSecurity.runAsGroup }}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/*
The pod template of one workload. Arguments: root, c (registry entry), track, shard
(candidate-gen only).
*/}}
{{- define "recfleet.podTemplate" -}}
{{- $root := .root -}}
{{- $c := .c -}}
{{- $v := index $root.Values $c.key -}}
{{- $sel := dict "root" $root "component" $c.name "track" .track "shard" .shard -}}
{{- $image := $v.image -}}
{{- if eq .track "canary" -}}
{{- $image = dict "repository" (default $v.image.repository $v.canary.image.repository) "tag" (default $v.image.tag $v.canary.image.tag) "digest" $v.canary.image.digest "pullPolicy" $v.image.pullPolicy -}}
{{- end -}}
metadata:
  labels:
    {{- include "recfleet.labels" $sel | nindent 4 }}
  annotations:
    checksum/config: {{ include "recfleet.configData" (dict "root" $root "c" $c) | sha256sum }}
    kubectl.kubernetes.io/default-container: {{ $c.name }}
    {{- with $v.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "recfleet.componentName" (dict "root" $root "component" $c.name "track" "stable") }}
  automountServiceAccountToken: false
  enableServiceLinks: false
  terminationGracePeriodSeconds: {{ $v.terminationGracePeriodSeconds }}
  securityContext:
    {{- include "recfleet.podSecurityContext" $root | nindent 4 }}
  {{- with $root.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- if $root.Values.topologySpread.enabled }}
  topologySpreadConstraints:
    {{- range $key := list "topology.kubernetes.io/zone" "kubernetes.io/hostname" }}
    - maxSkew: {{ $root.Values.topologySpread.maxSkew }}
      topologyKey: {{ $key }}
      whenUnsatisfiable: {{ $root.Values.topologySpread.whenUnsatisfiable }}
      labelSelector:
        matchLabels:
          {{- include "recfleet.selectorLabels" $sel | nindent 10 }}
    {{- end }}
  {{- end }}
  {{- with $v.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  containers:
    - name: {{ $c.name }}
      image: {{ include "recfleet.image" (dict "root" $root "image" $image) }}
      imagePullPolicy: {{ $image.pullPolicy }}
      command: {{ toJson $c.args }}
      ports:
        {{- if eq $c.kind "http" }}
        - name: http
          containerPort: {{ $v.ports.http }}
          protocol: TCP
        {{- else if eq $c.kind "grpc" }}
        - name: grpc
          containerPort: {{ $v.ports.grpc }}
          protocol: TCP
        {{- end }}
        # /metrics on a port of its own, never the public one (the gateway's HTTPRoute and
        # clients reach only http).
        - name: metrics
          containerPort: {{ $v.ports.metrics }}
          protocol: TCP
      envFrom:
        - configMapRef:
            name: {{ include "recfleet.componentName" (dict "root" $root "component" $c.name "track" "stable") }}-env
      env:
        {{- include "recfleet.env" . | nindent 8 }}
      {{- if eq $c.kind "grpc" }}
      startupProbe:
        grpc:
          port: {{ $v.ports.grpc }}
        periodSeconds: {{ $v.startupProbe.periodSeconds }}
        failureThreshold: {{ $v.startupProbe.failureThreshold }}
      readinessProbe:
        grpc:
          port: {{ $v.ports.grpc }}
        periodSeconds: 5
        failureThreshold: 2
      livenessProbe:
        grpc:
          port: {{ $v.ports.grpc }}
        periodSeconds: 10
        failureThreshold: 3
      {{- else if eq $c.kind "http" }}
      startupProbe:
        httpGet:
          path: /healthz/live
          port: http
        periodSeconds: {{ $v.startupProbe.periodSeconds }}
        failureThreshold: {{ $v.startupProbe.failureThreshold }}
      readinessProbe:
        httpGet:
          path: /healthz/ready
          port: http
        periodSeconds: 5
        failureThreshold: 2
      livenessProbe:
        httpGet:
          path: /healthz/live
          port: http
        periodSeconds: 10
        failureThreshold: 3
      {{- else }}
      # Consumers answer on their metrics port: /healthz/live fails once the poll loop's
      # heartbeat is older than RECFLEET_INGEST_LIVENESS_SECONDS (a stuck loop is restarted),
      # /healthz/ready once the consumer has joined its group and polls.
      startupProbe:
        httpGet:
          path: /healthz/live
          port: metrics
        periodSeconds: {{ $v.startupProbe.periodSeconds }}
        failureThreshold: {{ $v.startupProbe.failureThreshold }}
      readinessProbe:
        httpGet:
          path: /healthz/ready
          port: metrics
        periodSeconds: 5
        failureThreshold: 2
      livenessProbe:
        httpGet:
          path: /healthz/live
          port: metrics
        periodSeconds: 10
        failureThreshold: 3
      {{- end }}
      resources:
        {{- toYaml $v.resources | nindent 8 }}
      securityContext:
        {{- include "recfleet.containerSecurityContext" $root | nindent 8 }}
      volumeMounts:
        - name: tmp
          mountPath: /tmp
        {{- if has "artifacts" $c.uses }}
        - name: artifacts
          mountPath: {{ $root.Values.artifacts.mountPath }}
          readOnly: true
        {{- end }}
        {{- if eq $c.kind "http" }}
        - name: routing
          mountPath: /etc/recfleet/routing
          readOnly: true
        {{- end }}
  volumes:
    - name: tmp
      emptyDir:
        sizeLimit: {{ $v.tmpSizeLimit }}
    {{- if has "artifacts" $c.uses }}
    - name: artifacts
      {{- include "recfleet.artifactVolume" $root | nindent 6 }}
    {{- end }}
    {{- if eq $c.kind "http" }}
    # Mounted as a directory (not subPath) so weight changes reach the file without a restart.
    - name: routing
      configMap:
        name: {{ include "recfleet.fullname" $root }}-routing
    {{- end }}
{{- end -}}

{{- define "recfleet.artifactClaim" -}}
{{- default (printf "%s-artifacts" (include "recfleet.fullname" .)) .Values.artifacts.persistence.existingClaim -}}
{{- end -}}

{{/* The tracks a component renders: stable, plus canary when enabled. */}}
{{- define "recfleet.tracks" -}}
{{- $v := index .root.Values .c.key -}}
{{- if $v.canary.enabled -}}
["stable", "canary"]
{{- else -}}
["stable"]
{{- end -}}
{{- end -}}

{{/*
The jobs' plain settings: the values' `jobs.env`, then the shard count, the promotion
margin, the artifact URL, the broker and topics, and how `create-topics` lays the topics
out (kafka.topics; only the jobs read these: services never create topics).
*/}}
{{- define "recfleet.jobsConfigData" -}}
{{- $data := dict -}}
{{- range $k, $val := .Values.jobs.env -}}
{{- $_ := set $data $k (toString $val) -}}
{{- end -}}
{{- $_ := set $data "RECFLEET_JOBS_SHARD_COUNT" (toString .Values.candidateGen.shards.count) -}}
{{- $_ := set $data "RECFLEET_PROMOTION_MAX_REGRESSION" (toString .Values.promotion.maxRegression) -}}
{{- $_ := set $data "RECFLEET_ARTIFACT_URL" .Values.artifacts.url -}}
{{- include "recfleet.kafkaData" (dict "root" . "data" $data) -}}
{{- $t := .Values.kafka.topics -}}
{{- $_ := set $data "RECFLEET_KAFKA_TOPIC_PARTITIONS" (toString $t.partitions) -}}
{{- $_ := set $data "RECFLEET_KAFKA_REPLICATION_FACTOR" (toString $t.replicationFactor) -}}
{{- $_ := set $data "RECFLEET_KAFKA_MIN_INSYNC_REPLICAS" (toString $t.minInsyncReplicas) -}}
{{- toYaml $data -}}
{{- end -}}

{{/* The artifact store volume: the chart's PVC or an existing claim; scratch space when the
artifact URL points at an object store (persistence.enabled=false, no existingClaim). */}}
{{- define "recfleet.artifactVolume" -}}
{{- if or .Values.artifacts.persistence.enabled .Values.artifacts.persistence.existingClaim -}}
persistentVolumeClaim:
  claimName: {{ include "recfleet.artifactClaim" . }}
{{- else -}}
emptyDir: {}
{{- end -}}
{{- end -}}
