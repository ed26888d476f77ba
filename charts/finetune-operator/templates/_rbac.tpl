{{/*
The operator's permissions: exactly operator/finetune_operator/rbac.yaml (the operator's own
statement of the API calls it makes), split into cluster-scoped and namespaced rules so that
`watchNamespaces` can bind the namespaced half per namespace. tests/chart fails when the two
differ in any (apiGroup, resource, verb).
*/}}

{{/* Cluster-scoped: presets (patch: the finetune.dev/in-use finalizer), and what kopf needs to discover resources. */}}
{{- define "finetune-operator.clusterRules" -}}
- apiGroups: [finetune.dev]
  resources: [clusterfinetuneruntimes]
  verbs: [get, list, watch, patch]
# A queued job's Kueue Workload carries its pods' PriorityClass and that class's value.
- apiGroups: [scheduling.k8s.io]
  resources: [priorityclasses]
  verbs: [get]
# kopf: resource discovery.
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [list, watch]
- apiGroups: [""]
  resources: [namespaces]
  verbs: [list, watch]
{{- end -}}

{{/* In the release namespace: the leader Lease (one replica acts, the others stand by). */}}
{{- define "finetune-operator.leaseRules" -}}
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [get, create, update]
{{- end -}}

{{/* In watched namespaces: FineTuneJobs, their children, pods and events. No Secrets. */}}
{{- define "finetune-operator.namespacedRules" -}}
# FineTuneJobs: watched; deleted after ttlSecondsAfterFinished.
- apiGroups: [finetune.dev]
  resources: [finetunejobs]
  verbs: [get, list, watch, patch, delete]
# One status patch per reconcile, through the status subresource.
- apiGroups: [finetune.dev]
  resources: [finetunejobs/status]
  verbs: [get, patch]
# Children carry a controller ownerReference with blockOwnerDeletion; clusters that enforce
# OwnerReferencesPermissionEnforcement (OpenShift) require this to set it.
- apiGroups: [finetune.dev]
  resources: [finetunejobs/finalizers]
  verbs: [update]
# Children, server-side applied under the field manager finetune-operator. Jobs are watched; a
# failed attempt's Job is deleted.
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [configmaps, services]
  verbs: [get, list, watch, create, patch]
# Trainer pods are watched (phases, exit codes, IPs for /progress); the validation pod is
# applied, and deleted when it was disrupted.
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch, create, patch, delete]
# Events: the operator's own (create), and the Job controller's FailedCreate for a Job whose
# pods do not appear (list), said on the FineTuneJob.
- apiGroups: [""]
  resources: [events]
  verbs: [create, list]
# Kueue: a job with spec.queueName gets a Workload made by the operator, read, kept across
# the job's attempts (owner references of deleted attempts' Jobs dropped: patch), deactivated
# on suspend, and made again when Kueue finished it. Harmless where Kueue is not installed.
- apiGroups: [kueue.x-k8s.io]
  resources: [workloads]
  verbs: [get, create, patch, delete]
{{- end -}}
