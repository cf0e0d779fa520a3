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

{{/* Services: one per component and track (candidate-gen: one per shard and track, plus a headless one per track). */}}
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
# Governs the StatefulSets' pod DNS names; has no metrics port so it is never scraped twice.
apiVersion: v1
kind: Service
metadata:
  name: {{ include "recfleet.componentName" $sel }}-headless
  labels:
    {{- include "recfleet.labels" $sel | nindent 4 }}
spec:
  clusterIP: None
  publishNotReadyAddresses: false
  selector:
    {{- include "recfleet.selectorLabels" $sel | nindent 4 }}
  ports:
    - name: grpc
      port: {{ $v.ports.grpc }}
      targetPort: grpc
      protocol: TCP
      appProtocol: kubernetes.io/h2c
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
    {{- else }}
    {{- if eq $c.kind "grpc" }}
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
    {{- end }}
{{- end }}
{{- end }}
{{- end }}
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
  {{- if $v.pdb.minAvailable }}
  minAvailable: {{ $v.pdb.minAvailable }}
  {{- else }}
  maxUnavailable: {{ $v.pdb.maxUnavailable }}
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
    - port: {{ ternary "http" "metrics" (eq $c.kind "http") }}
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
helm test pod, Prometheus) and what it may reach (what it `calls`, its backing systems).
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
    # Clients of the REST API; anyone when gatewayIngressFrom is empty.
    - ports:
        - port: http
          protocol: TCP
      {{- with $np.gatewayIngressFrom }}
      from:
        {{- toYaml . | nindent 8 }}
    # Prometheus scrapes /metrics on the same port; the helm test pod calls the API.
    - ports:
        - port: http
          protocol: TCP
      from:
        {{- toYaml $np.metricsFrom | nindent 8 }}
        - podSelector:
            matchLabels:
              {{- include "recfleet.selectorLabels" (dict "root" $root "component" "test") | nindent 14 }}
      {{- end }}
    {{- else }}
    {{- if eq $c.kind "grpc" }}
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
    - ports:
        - port: metrics
          protocol: TCP
      from:
        {{- toYaml $np.metricsFrom | nindent 8 }}
    {{- end }}
  egress:
    {{- range $callee := $registry }}
    {{- if has $callee.name (default (list) $c.calls) }}
    - to:
        - podSelector:
            matchLabels:
              {{- include "recfleet.selectorLabels" (dict "root" $root "component" $callee.name) | nindent 14 }}
      ports:
        - port: {{ (index $root.Values $callee.key).ports.grpc }}
          protocol: TCP
    {{- end }}
    {{- end }}
    {{- include "recfleet.backendEgress" (dict "root" $root "uses" $c.uses) | nindent 4 }}
{{- end }}
{{- end }}
{{- end -}}
