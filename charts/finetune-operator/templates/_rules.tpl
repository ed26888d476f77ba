{{/*
The alert rules, shared by templates/prometheusrule.yaml and the promtool unit tests in
tests/chart (which render this block through `helm template --show-only`).
*/}}
{{- define "finetune-operator.ruleGroups" -}}
{{- $r := .Values.metrics.prometheusRule -}}
- name: finetune-operator.jobs
  rules:
    - alert: FineTuneJobFailed
      # Jobs entered phase Failed (restarts exhausted, bad config or data) in the last 10 minutes.
      # The counter has one series per reason, exported at 0 from the operator's start, so the
      # first failure is an increase; job names are not labels (see `kubectl get ftj -A`).
      expr: sum by (reason) (increase(finetune_operator_job_failures_total[10m])) > 0
      labels:
        severity: {{ $r.severity }}
      annotations:
        summary: "FineTuneJobs failed in the last 10 minutes ({{`{{ $labels.reason }}`}})"
        description: "About {{`{{ $value | printf \"%.0f\" }}`}} FineTuneJob(s) failed with reason {{`{{ $labels.reason }}`}}. Find them with `kubectl get ftj -A` (phase Failed) and read `kubectl describe ftj`."
    - alert: FineTuneJobStalled
      # The rank-0 trainer reports the same step for stalledMinutes while the job runs.
      expr: |
        max by (namespace, job) (changes(finetune_trainer_step{node_rank="0"}[{{ $r.stalledMinutes }}m])) == 0
        and max by (namespace, job) (finetune_trainer_step{node_rank="0"}) < max by (namespace, job) (finetune_trainer_total_steps{node_rank="0"})
      for: 1m
      labels:
        severity: {{ $r.severity }}
      annotations:
        summary: "FineTuneJob {{`{{ $labels.namespace }}/{{ $labels.job }}`}} made no progress for {{ $r.stalledMinutes }} minutes"
        description: "The training step has not advanced; the job may hang in a collective or on storage. Check `ftctl logs {{`{{ $labels.job }}`}}`."
    - alert: FineTuneJobGPUsIdle
      # GPUs of a training job stay almost unused (data loading, a dead rank, a stuck upload): the
      # mean over the last gpuIdleMinutes is below gpuIdlePercent, and the job was past its
      # download all that time (total_steps is 0 until the model and data are loaded), so it
      # fires gpuIdleMinutes after training began at the earliest, never while downloading.
      expr: |
        (avg by (namespace, job) (avg_over_time(finetune_trainer_gpu_utilization_ratio[{{ $r.gpuIdleMinutes }}m])) * 100 < {{ $r.gpuIdlePercent }})
        and on (namespace, job)
        (min by (namespace, job) (min_over_time(finetune_trainer_total_steps[{{ $r.gpuIdleMinutes }}m])) > 0)
      labels:
        severity: {{ $r.severity }}
      annotations:
        summary: "GPUs of FineTuneJob {{`{{ $labels.namespace }}/{{ $labels.job }}`}} below {{ $r.gpuIdlePercent }}% for {{ $r.gpuIdleMinutes }} minutes"
        description: "Mean GPU utilization is {{`{{ $value | printf \"%.1f\" }}`}}%. The job holds GPUs it does not use."
{{- end -}}
