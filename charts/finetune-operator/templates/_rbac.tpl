{{/*
The operator's permissions, one rule per API call family in operator/finetune_operator.
Keep in step with the operator's own RBAC file (tests/chart checks that they match).
*/}}

{{/* Cluster-scoped: presets, and what kopf needs to discover resources and elect a leader. */}}
{{- define "finetune-operator.clusterRules" -}}
- apiGroups: [finetune.dev]
  resources: [clusterfinetuneruntimes]
  verbs: [get, list, watch]
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [list, watch]
- apiGroups: [""]
  resources: [namespaces]
  verbs: [list, watch]
- apiGroups: [kopf.dev]
  resources: [clusterkopfpeerings]
  verbs: [get, list, watch, patch]
{{- end -}}

{{/* In watched namespaces: FineTuneJobs, their children, pods (read-only) and events. */}}
{{- define "finetune-operator.namespacedRules" -}}
# watch jobs; patch (kopf finalizers/annotations); delete (ttlSecondsAfterFinished)
- apiGroups: [finetune.dev]
  resources: [finetunejobs]
  verbs: [get, list, watch, patch, update, delete]
- apiGroups: [finetune.dev]
  resources: [finetunejobs/status]
  verbs: [get, patch, update]
# children, applied server-side under the field manager finetune-operator
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, patch, update, delete]
- apiGroups: [""]
  resources: [configmaps, services]
  verbs: [get, list, watch, create, patch, update, delete]
# trainer pods are read (phases, exit codes, IPs for /progress); the validation step is a pod
# the operator applies and deletes itself
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: ["", events.k8s.io]
  resources: [events]
  verbs: [create, patch]
- apiGroups: [kopf.dev]
  resources: [kopfpeerings]
  verbs: [get, list, watch, patch]
{{- end -}}
