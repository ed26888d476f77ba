{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "finetune-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name: <release>-<chart> unless the release name already contains the chart name. */}}
{{- define "finetune-operator.fullname" -}}
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

{{- define "finetune-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on every resource. */}}
{{- define "finetune-operator.labels" -}}
helm.sh/chart: {{ include "finetune-operator.chart" . }}
{{ include "finetune-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Labels that select the operator pods (immutable on the Deployment). */}}
{{- define "finetune-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "finetune-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "finetune-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "finetune-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "finetune-operator.image" -}}
{{- $repository := required "image.repository is required: build operator/Dockerfile, push it to a registry your nodes pull from, and set it (README, Install): --set image.repository=REGISTRY/finetune-operator" .Values.image.repository -}}
{{- printf "%s:%s" $repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Command-line arguments of the operator (operator/finetune_operator/main.py). */}}
{{- define "finetune-operator.args" -}}
- --liveness=http://0.0.0.0:{{ .Values.health.port }}/healthz
- --metrics-port={{ .Values.metrics.port }}
- --leader-election-id={{ include "finetune-operator.fullname" . }}
{{- if .Values.watchNamespaces }}
{{- range .Values.watchNamespaces }}
- --namespace={{ . }}
{{- end }}
{{- else }}
- --all-namespaces
{{- end }}
{{- end -}}

{{/* Environment of the operator container (names read by finetune_operator's settings). */}}
{{- define "finetune-operator.env" -}}
- name: FINETUNE_OPERATOR_TRAINER_IMAGE
  value: {{ required "trainerImage is required: build trainer_image/Dockerfile, push it, and set it (README, Install): --set trainerImage=REGISTRY/finetune-trainer:0.1.0" .Values.trainerImage | quote }}
{{- with .Values.trainerImagePullSecrets }}
- name: FINETUNE_OPERATOR_IMAGE_PULL_SECRETS
  value: {{ join "," . | quote }}
{{- end }}
{{- with .Values.defaultRuntime }}
- name: FINETUNE_OPERATOR_DEFAULT_RUNTIME
  value: {{ . | quote }}
{{- end }}
- name: FINETUNE_OPERATOR_LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- end -}}

{{/* The trainer pods' metrics/progress port (finetune_trainer.contract.METRICS_PORT). */}}
{{- define "finetune-operator.trainerMetricsPort" -}}9400{{- end -}}

{{/* NetworkPolicy for the trainer pods of one tenant namespace (dict "ctx" $ "namespace" NS);
docs/chart.md shows the same object for namespaces the chart does not know. */}}
{{- define "finetune-operator.trainerNetworkPolicy" -}}
{{- $ctx := .ctx -}}
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: {{ include "finetune-operator.fullname" $ctx }}-trainers
  namespace: {{ .namespace }}
  labels:
    {{- include "finetune-operator.labels" $ctx | nindent 4 }}
spec:
  podSelector:
    matchLabels:
      app.kubernetes.io/managed-by: finetune-operator
      finetune.dev/component: trainer
  policyTypes: [Ingress]
  ingress:
    # The operator reads rank 0's /progress.
    - from:
        - namespaceSelector:
            matchLabels:
              kubernetes.io/metadata.name: {{ $ctx.Release.Namespace }}
          podSelector:
            matchLabels:
              {{- include "finetune-operator.selectorLabels" $ctx | nindent 14 }}
      ports:
        - port: {{ include "finetune-operator.trainerMetricsPort" $ctx }}
          protocol: TCP
    {{- with $ctx.Values.networkPolicy.metricsFrom }}
    # Prometheus scrapes every rank.
    - from:
        {{- toYaml . | nindent 8 }}
      ports:
        - port: {{ include "finetune-operator.trainerMetricsPort" $ctx }}
          protocol: TCP
    {{- end }}
    # The ranks of a job talk to each other on every port (rendezvous, NCCL).
    - from:
        - podSelector:
            matchLabels:
              app.kubernetes.io/managed-by: finetune-operator
              finetune.dev/component: trainer
{{- end -}}
