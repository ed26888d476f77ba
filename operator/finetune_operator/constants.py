"""Every name the operator writes into the cluster: labels, annotations, phases, condition types
and reasons, child-name suffixes, defaults. Names that cross into trainer pods live in the shared
zero-import module `finetune_trainer.contract`; they are re-exported here as `contract`.
"""

from __future__ import annotations

import finetune_trainer.contract as contract

__all__ = ["contract"]

FIELD_MANAGER = "finetune-operator"
#: Default name of the leader Lease (in the operator's namespace; the chart names it per release).
LEASE_NAME = "finetune-operator"
EVENT_SOURCE = "finetune-operator"

# --- Child names (deterministic: re-running a reconcile never makes a second child) -----------
CONFIGMAP_SUFFIX = "-config"
SERVICE_SUFFIX = "-workers"
VALIDATOR_SUFFIX = "-validate"
#: Longest FineTuneJob name: the Job's pods are named <job>-<index>-<5 chars> and the Service
#: <job>-workers must be a DNS label (63).
MAX_JOB_NAME_LENGTH = 48
#: A FineTuneJob name is a DNS-1035 label: it names the <name>-workers Service.
JOB_NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"

# --- Labels / annotations written by the operator (beyond contract.LABEL_*) ------------------
ANNOTATION_TEMPLATE_HASH = "finetune.dev/template-hash"
ANNOTATION_CONFIG_HASH = "finetune.dev/config-hash"

# --- Phases -------------------------------------------------------------------------------------
PHASE_PENDING = "Pending"
PHASE_VALIDATING = "Validating"
PHASE_QUEUED = "Queued"
PHASE_INITIALIZING = "Initializing"
PHASE_RUNNING = "Running"
PHASE_UPLOADING = "Uploading"
PHASE_SUCCEEDED = "Succeeded"
PHASE_FAILED = "Failed"
PHASE_SUSPENDED = "Suspended"
PHASES = (
    PHASE_PENDING,
    PHASE_VALIDATING,
    PHASE_QUEUED,
    PHASE_INITIALIZING,
    PHASE_RUNNING,
    PHASE_UPLOADING,
    PHASE_SUCCEEDED,
    PHASE_FAILED,
    PHASE_SUSPENDED,
)
TERMINAL_PHASES = (PHASE_SUCCEEDED, PHASE_FAILED)
#: Phases in which the rank-0 trainer is polled for progress.
PROGRESS_PHASES = (PHASE_INITIALIZING, PHASE_RUNNING, PHASE_UPLOADING)

# --- Condition types ----------------------------------------------------------------------------
COND_VALIDATED = "Validated"  # the validation pod checked model + dataset
COND_RUNNING = "Running"  # every worker of the current attempt is running
COND_SUSPENDED = "Suspended"  # spec.suspend (or Kueue) holds the job
COND_SUCCEEDED = "Succeeded"
COND_FAILED = "Failed"
CONDITION_TYPES = (COND_VALIDATED, COND_RUNNING, COND_SUSPENDED, COND_SUCCEEDED, COND_FAILED)

#: On a ClusterFineTuneRuntime while unfinished jobs started under it: deleting the runtime waits
#: for them (they run on their copy in status.runtime either way; this says it is in use).
RUNTIME_FINALIZER = f"{contract.GROUP}/in-use"

# --- Condition reasons (constant CamelCase; messages carry the details) -----------------------
REASON_RUNTIME_NOT_FOUND = "RuntimeNotFound"
#: No spec.runtimeRef and no default runtime configured: every job runs under a preset.
REASON_RUNTIME_REQUIRED = "RuntimeRequired"
#: A child's name is held by an object that is not this operator's: never overwritten, reported.
REASON_CHILD_NAME_TAKEN = "ChildNameTaken"
#: The API server refused a child (400/403/404/422: quota, Pod Security, missing ServiceAccount).
REASON_CHILD_REJECTED = "ChildRejected"
#: The Job controller cannot create the trainer pods (its FailedCreate events say why).
REASON_FAILED_CREATE = "FailedCreate"
#: A worker was OOMKilled (over its memory limit): failed at once, the same memory fails again.
REASON_OUT_OF_MEMORY = "OutOfMemory"
#: The workers did not all start within the runtime's startupDeadlineSeconds.
REASON_STARTUP_DEADLINE_EXCEEDED = "StartupDeadlineExceeded"
#: More worker pods were taken away (evicted, preempted) than spec.maxDisruptions allows.
REASON_DISRUPTION_LIMIT_EXCEEDED = "DisruptionLimitExceeded"
REASON_INVALID_SPEC = "InvalidSpec"
REASON_METHOD_NOT_ALLOWED = "MethodNotAllowed"
REASON_RUNTIME_LIMIT_EXCEEDED = "RuntimeLimitExceeded"
REASON_IMAGE_OVERRIDE_NOT_ALLOWED = "ImageOverrideNotAllowed"
REASON_VALIDATION_PENDING = "ValidationPending"
REASON_VALIDATION_RUNNING = "ValidationRunning"
REASON_VALIDATION_PASSED = "ValidationPassed"
REASON_VALIDATION_FAILED = "ValidationFailed"
REASON_QUEUED = "Queued"
REASON_WORKERS_STARTING = "WorkersStarting"
REASON_WORKERS_RUNNING = "WorkersRunning"
REASON_UPLOADING = "Uploading"
REASON_RESTARTING = "Restarting"
REASON_SUSPENDED = "SuspendedByUser"
REASON_RESUMED = "Resumed"
REASON_NOT_SUSPENDED = "NotSuspended"
REASON_TRAINING_SUCCEEDED = "TrainingSucceeded"
REASON_CONFIG_ERROR = "ConfigError"
REASON_DATA_ERROR = "DataError"
REASON_RESTART_LIMIT_EXCEEDED = "RestartLimitExceeded"
REASON_JOB_FAILED = "JobFailed"
REASON_DISRUPTED = "WorkerDisrupted"
REASON_SPEC_EDITED = "SpecEdited"
#: Kueue deactivated the job's Workload by its own policy (requeuing limit, maximum execution time).
REASON_WORKLOAD_DEACTIVATED = "WorkloadDeactivated"
#: The job's Workload was deleted or finished under a live Job: both are made again.
REASON_WORKLOAD_RECREATED = "WorkloadRecreated"
#: Reasons that fail a job because of its spec: editing the spec (new generation) re-evaluates.
SPEC_FAILURE_REASONS = (
    REASON_INVALID_SPEC,
    REASON_RUNTIME_REQUIRED,
    REASON_METHOD_NOT_ALLOWED,
    REASON_RUNTIME_LIMIT_EXCEEDED,
    REASON_IMAGE_OVERRIDE_NOT_ALLOWED,
)

#: Every reason a job can fail with (the `reason` label of finetune_operator_job_failures_total,
#: exported at 0 from the start so that the first failure is an increase Prometheus can see).
FAILURE_REASONS = (
    *SPEC_FAILURE_REASONS,
    REASON_VALIDATION_FAILED,
    REASON_CONFIG_ERROR,
    REASON_DATA_ERROR,
    REASON_RESTART_LIMIT_EXCEEDED,
    REASON_OUT_OF_MEMORY,
    REASON_STARTUP_DEADLINE_EXCEEDED,
    REASON_DISRUPTION_LIMIT_EXCEEDED,
    REASON_JOB_FAILED,
    REASON_WORKLOAD_DEACTIVATED,
    "Unknown",
)

# --- Event reasons (besides the condition reasons above) ---------------------------------------
EVENT_PHASE_CHANGED = "PhaseChanged"

#: Validation pods run again after exit 4 (a source that did not answer) before the job fails.
MAX_VALIDATION_RETRIES = 3
#: A pod being deleted that is still there this long after its deletion deadline (deletion time
#: plus grace period) has a kubelet that cannot confirm (node lost or partitioned): while the
#: group restarts, it is deleted with grace 0 so the restart does not wait for good
#: (--unconfirmed-deletion-seconds).
UNCONFIRMED_DELETION_SECONDS = 60.0
REASON_POD_DELETION_FORCED = "PodDeletionForced"
#: A training Job without pods is looked at again this often, and its FailedCreate events (the
#: Job controller's reason, e.g. a quota or a missing ServiceAccount) are read at most this often.
FAILED_CREATE_SECONDS = 10.0

# --- Defaults -------------------------------------------------------------------------------------
DEFAULT_IMAGE = "ghcr.io/finetune-operator/trainer:0.1.0"
DEFAULT_NODES = 1
DEFAULT_GPUS_PER_NODE = 1
DEFAULT_MAX_DISRUPTIONS = 20
DEFAULT_MAX_RESTARTS = 3
VALIDATOR_CPU = "500m"
VALIDATOR_MEMORY = "2Gi"
VALIDATOR_DEADLINE_SECONDS = 1800
TERMINATION_GRACE_SECONDS = 120
RUN_AS_USER = 1000
GPU_RESOURCE = "nvidia.com/gpu"
#: Kueue's Workload API (a job with spec.queueName gets one, made by the operator).
KUEUE_API_VERSION = "kueue.x-k8s.io/v1beta2"
#: How often a job waiting in a Kueue queue is looked at again (Workloads are read, not watched:
#: the reason it waits is refreshed this often; admission itself arrives as a Job event).
KUEUE_RECHECK_SECONDS = 30.0
#: Size of the writable emptyDirs on a read-only root filesystem.
WORKSPACE_VOLUME = "workspace"
TMP_VOLUME = "tmp"
SHM_VOLUME = "dshm"
CONFIG_VOLUME = "trainer-config"
PVC_VOLUME_PREFIX = "pvc-"  # pvc-0, pvc-1, ...: one per distinct claim named by a pvc:// URI
TRAINER_CONTAINER = "trainer"
VALIDATOR_CONTAINER = "validate"
#: Longest message copied into a condition or event (trainer output is cut, never a traceback).
MAX_MESSAGE_LENGTH = 1024
#: app.kubernetes.io/managed-by value on the CRDs (installed by the chart or `kubectl apply`).
MANAGED_BY_CHART = "finetune-operator"
