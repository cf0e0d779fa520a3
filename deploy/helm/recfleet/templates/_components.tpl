{{/*
Named templates for one component's objects. Each takes (dict "root" $ "key" "<values key>")
and renders nothing when the component (or the feature) is off; the files under
templates/<component>/ call them, so every component gets the same objects from one source.
*/}}

{{/* The registry entry (see recfleet.components) of one values key, as YAML. */}}
{{- define "recfleet.component" -}}
{{- $key := .key -}}
{{- range $c := include "recfleet.components" .root | fromYamlArray -}}
{{- if eq $c.key $key }}{{ toYaml $c }}{{ end -}}
{{- end -}}
{{- end -}}

{{/* One Deployment per component and track; candidate-gen: one StatefulSet per shard and track. */}}
{{- define "recfleet.workloads" -}}
{{- $root := .root -}}
{{- $c := include "recfleet.component" . | fromYaml -}}
{{- $v := index $root.Values $c.key -}}
{{- if $v.enabled }}
{{- range $track := include "recfleet.tracks" (dict "root" $root "c" $c) | fromJsonArray }}
{{- $replicas := ternary $v.canary.replicas $v.replicas (eq $track "canary") }}
{{- $hpa := and (eq $track "stable") $v.autoscaling.enabled }}
{{- if eq $c.key "candidateGen" }}
{{- range $shard := until (int $v.shards.count) }}
{{- $sel := dict "root" $root "component" $c.name "track" $track "shard" $shard }}
---
# Shard {{ $shard }} of {{ $v.shards.count }} ({{ $track }}): every pod of this StatefulSet
# serves the same shard; replicas are copies of it.
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: {{ include "recfleet.shardName" $sel }}
  labels:
    {{- include "recfleet.labels" $sel | nindent 4 }}
spec:
  serviceName: {{ include "recfleet.componentName" $sel }}-headless
  {{- if not $hpa }}
  replicas: {{ $replicas }}
  {{- end }}
  podManagementPolicy: Parallel
  updateStrategy:
    type: RollingUpdate
  selector:
    matchLabels:
      {{- include "recfleet.selectorLabels" $sel | nindent 6 }}
  template:
    {{- include "recfleet.podTemplate" (dict "root" $root "c" $c "track" $track "shard" $shard) | nindent 4 }}
{{- end }}
{{- else }}
{{- $sel := dict "root" $root "component" $c.name "track" $track }}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "recfleet.componentName" $sel }}
  labels:
    {{- include "recfleet.labels" $sel | nindent 4 }}
spec:
  {{- if not $hpa }}
  replicas: {{ $replicas }}
  {{- end }}
  revisionHistoryLimit: 5
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxUnavailable: 0
      maxSurge: 25%
  selector:
    matchLabels:
      {{- include "recfleet.selectorLabels" $sel | nindent 6 }}
  template:
    {{- include "recfleet.podTemplate" (dict "root" $root "c" $c "track" $track) | nindent 4 }}
{{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{/*
Services, per component and track (candidate-gen: per shard and track):
- the ClusterIP Service (grpc/http and metrics: what the ServiceMonitor and the helm test use);
- for gRPC components a headless Service (grpc only, ready pods only) that the gRPC clients
  resolve to every pod and balance over, since one long-lived connection to a ClusterIP would
  pin each client to one pod;
- candidate-gen also keeps one headless Service per track that governs its StatefulSets'
  pod DNS names (a StatefulSet's serviceName cannot change).
Headless Services have no metrics port, so pods are never scraped twice.
*/}}
{{- define "recfleet.services" -}}
{{- $root := .root -}}
{{- $c := include "recfleet.component" . | fromYaml -}}
{{- $v := index $root.Values $c.key -}}
{{- if $v.enabled }}
{{- range $track := include "recfleet.tracks" (dict "root" $root "c" $c) | fromJsonArray }}
{{- $shards := list "" }}
{{- if eq $c.key "candidateGen" }}
{{- $shards = until (int $v.shards.count) }}
{{- $sel := dict "root" $root "component" $c.name "track" $track }}
---
# Governs the StatefulSets' pod DNS names.
{{- include "recfleet.headlessService" (dict "sel" $sel "name" (printf "%s-headless" (include "recfleet.componentName" $sel)) "port" $v.ports.grpc) }}
{{- end }}
{{- range $shard := $shards }}
{{- $sel := dict "root" $root "component" $c.name "track" $track "shard" $shard }}
---
apiVersion: v1
kind: Service
metadata:
  name: {{ ternary (include "recfleet.shardName" $sel) (include "recfleet.componentName" $sel) (eq $c.key "candidateGen") }}
  labels:
    {{- include "recfleet.labels" $sel | nindent 4 }}
spec:
  type: {{ if eq $c.kind "http" }}{{ $v.service.type }}{{ else }}ClusterIP{{ end }}
  selector:
    {{- include "recfleet.selectorLabels" $sel | nindent 4 }}
  ports:
    {{- if eq $c.kind "http" }}
    - name: http
      port: {{ $v.ports.http }}
      targetPort: http
      protocol: TCP
      appProtocol: http
    {{- else if eq $c.kind "grpc" }}
    - name: grpc
      port: {{ $v.ports.grpc }}
      targetPort: grpc
      protocol: TCP
      appProtocol: kubernetes.io/h2c
    {{- end }}
    - name: metrics
      port: {{ $v.ports.metrics }}
      targetPort: metrics
      protocol: TCP
      appProtocol: http
{{- if eq $c.kind "grpc" }}
---
# What the gRPC clients resolve (dns:///{{ include "recfleet.headlessName" $sel }}:{{ $v.ports.grpc }}).
{{- include "recfleet.headlessService" (dict "sel" $sel "name" (include "recfleet.headlessName" $sel) "port" $v.ports.grpc) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{/* A headless Service on the grpc port of the pods .sel selects, ready pods only. */}}
{{- define "recfleet.headlessService" }}
apiVersion: v1
kind: Service
metadata:
  name: {{ .name }}
  labels:
    {{- include "recfleet.labels" .sel | nindent 4 }}
spec:
  clusterIP: None
  publishNotReadyAddresses: false
  selector:
    {{- include "recfleet.selectorLabels" .sel | nindent 4 }}
  ports:
    - name: grpc
      port: {{ .port }}
      targetPort: grpc
      protocol: TCP
      appProtocol: kubernetes.io/h2c
{{- end -}}

{{/* HorizontalPodAutoscalers for the stable track (candidate-gen: per shard, scaling its copies). */}}
{{- define "recfleet.hpa" -}}
{{- $root := .root -}}
{{- $c := include "recfleet.component" . | fromYaml -}}
{{- $v := index $root.Values $c.key -}}
{{- if and $v.enabled $v.autoscaling.enabled }}
{{- $shards := list "" }}
{{- if eq $c.key "candidateGen" }}{{ $shards = until (int $v.shards.count) }}{{ end }}
{{- range $shard := $shards }}
{{- $sel := dict "root" $root "component" $c.name "track" "stable" "shard" $shard }}
{{- $target := ternary (include "recfleet.shardName" $sel) (include "recfleet.componentName" $sel) (eq $c.key "candidateGen") }}
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ $target }}
  labels:
    {{- include "recfleet.labels" $sel | nindent 4 }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: {{ ternary "StatefulSet" "Deployment" (eq $c.key "candidateGen") }}
    name: {{ $target }}
  minReplicas: {{ $v.autoscaling.minReplicas }}
  maxReplicas: {{ $v.autoscaling.maxReplicas }}
  metrics:
    - type: Resource
      resource:
        name: cpu
        target:
          type: Utilization
          averageUtilization: {{ $v.autoscaling.targetCPUUtilizationPercentage }}
    {{- with $v.autoscaling.metrics }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with $v.autoscaling.behavior }}
  behavior:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{/* PodDisruptionBudgets for the stable track (candidate-gen: per shard, so a drain never empties a shard). */}}
{{- define "recfleet.pdb" -}}
{{- $root := .root -}}
{{- $c := include "recfleet.component" . | fromYaml -}}
{{- $v := index $root.Values $c.key -}}
{{- if and $v.enabled $v.pdb.enabled }}
{{- $shards := list "" }}
{{- if eq $c.key "candidateGen" }}{{ $shards = until (int $v.shards.count) }}{{ end }}
{{- range $shard := $shards }}
{{- $sel := dict "root" $root "component" $c.name "track" "stable" "shard" $shard }}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ ternary (include "recfleet.shardName" $sel) (include "recfleet.componentName" $sel) (eq $c.key "candidateGen") }}
  labels:
    {{- include "recfleet.labels" $sel | nindent 4 }}
spec:
  {{- /* Exactly one of the two; validate.yaml refuses a budget that allows no disruption. */}}
  {{- if hasKey $v.pdb "minAvailable" }}
  minAvailable: {{ $v.pdb.minAvailable }}
  {{- else }}
  maxUnavailable: {{ $v.pdb.maxUnavailable | default 1 }}
  {{- end }}
  unhealthyPodEvictionPolicy: AlwaysAllow
  selector:
    matchLabels:
      {{- include "recfleet.selectorLabels" $sel | nindent 6 }}
{{- end }}
{{- end }}
{{- end -}}

{{/* One ServiceMonitor per component, scraping both tracks; track and shard become target labels. */}}
{{- define "recfleet.servicemonitor" -}}
{{- $root := .root -}}
{{- $c := include "recfleet.component" . | fromYaml -}}
{{- $v := index $root.Values $c.key -}}
{{- if $root.Values.monitoring.enabled }}
{{- if and $v.enabled $v.serviceMonitor.enabled }}
{{- $sel := dict "root" $root "component" $c.name }}
---
apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata:
  name: {{ include "recfleet.componentName" (dict "root" $root "component" $c.name "track" "stable") }}
  labels:
    {{- include "recfleet.labels" $sel | nindent 4 }}
    {{- with $root.Values.monitoring.labels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  selector:
    matchLabels:
      {{- include "recfleet.selectorLabels" $sel | nindent 6 }}
  podTargetLabels:
    - recfleet.io/track
    - recfleet.io/shard
  endpoints:
    - port: metrics
      path: /metrics
      interval: {{ $v.serviceMonitor.interval }}
      scrapeTimeout: {{ $v.serviceMonitor.scrapeTimeout }}
{{- end }}
{{- end }}
{{- end -}}

{{/* One ServiceAccount per component (both tracks), with no API token mounted. */}}
{{- define "recfleet.serviceaccount" -}}
{{- $root := .root -}}
{{- $c := include "recfleet.component" . | fromYaml -}}
{{- $v := index $root.Values $c.key -}}
{{- if $v.enabled }}
{{- $sel := dict "root" $root "component" $c.name }}
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ include "recfleet.componentName" (dict "root" $root "component" $c.name "track" "stable") }}
  labels:
    {{- include "recfleet.labels" $sel | nindent 4 }}
automountServiceAccountToken: false
{{- end }}
{{- end -}}

{{/* Each component's plain settings (secrets stay in Secrets, set by reference). */}}
{{- define "recfleet.envConfigMap" -}}
{{- $root := .root -}}
{{- $c := include "recfleet.component" . | fromYaml -}}
{{- $v := index $root.Values $c.key -}}
{{- if $v.enabled }}
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ include "recfleet.componentName" (dict "root" $root "component" $c.name "track" "stable") }}-env
  labels:
    {{- include "recfleet.labels" (dict "root" $root "component" $c.name) | nindent 4 }}
data:
  {{- include "recfleet.configData" (dict "root" $root "c" $c) | nindent 2 }}
{{- end }}
{{- end -}}

{{/*
A component's NetworkPolicy: who may call it (the components whose `calls` name it, the
helm test pod, Prometheus) and which fleet services it may call (its `calls`); its backing
systems are reached through the release-wide recfleet-egress-<system> policies.
*/}}
{{- define "recfleet.networkpolicy" -}}
{{- $root := .root -}}
{{- $c := include "recfleet.component" . | fromYaml -}}
{{- $v := index $root.Values $c.key -}}
{{- if $root.Values.networkPolicy.enabled }}
{{- $np := $root.Values.networkPolicy }}
{{- $registry := include "recfleet.components" $root | fromYamlArray }}
{{- if $v.enabled }}
{{- $sel := dict "root" $root "component" $c.name }}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: {{ include "recfleet.componentName" (dict "root" $root "component" $c.name "track" "stable") }}
  labels:
    {{- include "recfleet.labels" $sel | nindent 4 }}
spec:
  podSelector:
    matchLabels:
      {{- include "recfleet.selectorLabels" $sel | nindent 6 }}
  policyTypes: [Ingress, Egress]
  ingress:
    {{- if eq $c.kind "http" }}
    # Clients of the REST API (anyone when gatewayIngressFrom is empty) and the helm test pod.
    - ports:
        - port: http
          protocol: TCP
      {{- with $np.gatewayIngressFrom }}
      from:
        {{- toYaml . | nindent 8 }}
        - podSelector:
            matchLabels:
              {{- include "recfleet.selectorLabels" (dict "root" $root "component" "test") | nindent 14 }}
      {{- end }}
    {{- else if eq $c.kind "grpc" }}
    - ports:
        - port: grpc
          protocol: TCP
      from:
        {{- range $caller := $registry }}
        {{- if has $c.name (default (list) $caller.calls) }}
        - podSelector:
            matchLabels:
              {{- include "recfleet.selectorLabels" (dict "root" $root "component" $caller.name) | nindent 14 }}
        {{- end }}
        {{- end }}
        - podSelector:
            matchLabels:
              {{- include "recfleet.selectorLabels" (dict "root" $root "component" "test") | nindent 14 }}
    {{- end }}
    # Prometheus scrapes /metrics on a port of its own (the kubelet's probes need no rule).
    - ports:
        - port: metrics
          protocol: TCP
      from:
        {{- toYaml $np.metricsFrom | nindent 8 }}
  {{- /* Backing systems: the release-wide recfleet-egress-<system> policies. */}}
  {{- if $c.calls }}
  egress:
    {{- range $callee := $registry }}
    {{- if has $callee.name $c.calls }}
    - to:
        - podSelector:
            matchLabels:
              {{- include "recfleet.selectorLabels" (dict "root" $root "component" $callee.name) | nindent 14 }}
      ports:
        - port: {{ (index $root.Values $callee.key).ports.grpc }}
          protocol: TCP
    {{- end }}
    {{- end }}
  {{- else }}
  egress: []
  {{- end }}
{{- end }}
{{- end }}
{{- end -}}
