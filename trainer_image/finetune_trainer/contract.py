"""The contract between the operator and the trainer pods.

Zero imports on purpose: both the operator (which renders pods) and the trainer (which reads its
environment) import these names, so neither can drift from the other. Every environment variable,
port, path, label and annotation that crosses the operator/trainer boundary is named here.
"""

# --- API group -------------------------------------------------------------------------------
GROUP = "finetune.dev"
VERSION = "v1alpha1"
API_VERSION = GROUP + "/" + VERSION
KIND_JOB = "FineTuneJob"
PLURAL_JOB = "finetunejobs"
KIND_RUNTIME = "ClusterFineTuneRuntime"
PLURAL_RUNTIME = "clusterfinetuneruntimes"

# --- Environment variables set on every trainer container -----------------------------------
# torchrun reads PET_* itself (torch.distributed.run maps --nnodes <-> PET_NNODES, and so on).
ENV_NNODES = "PET_NNODES"
ENV_NPROC_PER_NODE = "PET_NPROC_PER_NODE"
ENV_NODE_RANK = "PET_NODE_RANK"
ENV_MASTER_ADDR = "PET_MASTER_ADDR"
ENV_MASTER_PORT = "PET_MASTER_PORT"
# Kubeflow v1 compatible names for user scripts that read them directly.
ENV_MASTER_ADDR_COMPAT = "MASTER_ADDR"
ENV_MASTER_PORT_COMPAT = "MASTER_PORT"
# Path of the mounted TrainerConfig (YAML or JSON).
ENV_CONFIG_PATH = "FINETUNE_CONFIG"
# Identity of the job, used for metric labels and log lines.
ENV_JOB_NAME = "FINETUNE_JOB_NAME"
ENV_JOB_NAMESPACE = "FINETUNE_JOB_NAMESPACE"
# Port the trainer serves /metrics (and, on rank 0, /progress) on.
ENV_METRICS_PORT = "FINETUNE_METRICS_PORT"
# Attempt number (0 for the first run, incremented on every group restart).
ENV_ATTEMPT = "FINETUNE_ATTEMPT"
# Credentials: only ever set from secretKeyRef, never as literal values.
ENV_AWS_ACCESS_KEY_ID = "AWS_ACCESS_KEY_ID"
ENV_AWS_SECRET_ACCESS_KEY = "AWS_SECRET_ACCESS_KEY"
ENV_AWS_SESSION_TOKEN = "AWS_SESSION_TOKEN"
ENV_HF_TOKEN = "HF_TOKEN"
# Per-source S3 credentials: FINETUNE_<ROLE>_AWS_ACCESS_KEY_ID / _SECRET_ACCESS_KEY / _SESSION_TOKEN,
# ROLE one of S3_ROLES, each from the secretRef of that source (model, dataset, output). A source
# without its own uses the AWS_* variables (or the pod's identity) like any AWS SDK.
S3_ROLES = ("MODEL", "DATASET", "OUTPUT")
ROLE_ENV_PREFIX = "FINETUNE_{role}_"


def role_env(role: str, name: str) -> str:
    """The per-source variable for `name` (an AWS_* variable) of source `role`."""
    return ROLE_ENV_PREFIX.format(role=role) + name


# Where the trainer writes its JSON summary (local runs point it at a file of their choosing).
ENV_TERMINATION_MESSAGE_PATH = "FINETUNE_TERMINATION_MESSAGE_PATH"
# Endpoint of S3-compatible storage for the model/dataset/output (not a secret).
ENV_S3_ENDPOINT = "AWS_ENDPOINT_URL"

# Keys expected inside the Secrets that a FineTuneJob names.
SECRET_KEY_AWS_ACCESS_KEY_ID = "AWS_ACCESS_KEY_ID"
SECRET_KEY_AWS_SECRET_ACCESS_KEY = "AWS_SECRET_ACCESS_KEY"
SECRET_KEY_HF_TOKEN = "HF_TOKEN"

# --- Ports -------------------------------------------------------------------------------------
RENDEZVOUS_PORT = 29500
METRICS_PORT = 9400
PORT_NAME_RENDEZVOUS = "rendezvous"
PORT_NAME_METRICS = "metrics"

# --- Paths inside trainer pods ---------------------------------------------------------------
CONFIG_MOUNT_DIR = "/etc/finetune"
CONFIG_FILE_NAME = "trainer-config.json"
CONFIG_PATH = CONFIG_MOUNT_DIR + "/" + CONFIG_FILE_NAME
WORK_DIR = "/workspace"
SHM_DIR = "/dev/shm"
TMP_DIR = "/tmp"
CACHE_DIR = "/workspace/.cache"
PVC_MOUNT_ROOT = "/mnt/pvc"
TERMINATION_MESSAGE_PATH = "/dev/termination-log"

# --- HTTP paths served by the trainer --------------------------------------------------------
HTTP_METRICS_PATH = "/metrics"
HTTP_PROGRESS_PATH = "/progress"
HTTP_HEALTH_PATH = "/healthz"

# --- Labels and annotations ------------------------------------------------------------------
LABEL_JOB_NAME = "finetune.dev/job-name"
LABEL_COMPONENT = "finetune.dev/component"
LABEL_ATTEMPT = "finetune.dev/attempt"
#: The UID of the FineTuneJob a child belongs to (names are reused; UIDs are not).
LABEL_JOB_UID = "finetune.dev/job-uid"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "finetune-operator"
COMPONENT_TRAINER = "trainer"
COMPONENT_VALIDATOR = "validator"
LABEL_KUEUE_QUEUE = "kueue.x-k8s.io/queue-name"
LABEL_KUEUE_PREBUILT_WORKLOAD = "kueue.x-k8s.io/prebuilt-workload-name"
ANNOTATION_JOB_COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"

# --- Trainer exit codes (read from the pod's terminated state) -------------------------------
EXIT_OK = 0
EXIT_CONFIG_ERROR = 2        # bad TrainerConfig: never retried
EXIT_DATA_ERROR = 3          # dataset/model unreachable or malformed: never retried
EXIT_TRAINING_ERROR = 4      # training failed: retried up to maxRestarts
EXIT_PREEMPTED = 143         # SIGTERM honoured after a checkpoint: a disruption, not a failure
NON_RETRYABLE_EXIT_CODES = (EXIT_CONFIG_ERROR, EXIT_DATA_ERROR)

# --- Object storage layout under the job's output URI ----------------------------------------
CHECKPOINTS_PREFIX = "checkpoints/"
CHECKPOINT_DIR_FORMAT = "checkpoints/step-{step}/"
ADAPTER_PREFIX = "adapter/"
MODEL_PREFIX = "model/"      # method full: consolidated safetensors weights + tokenizer
MANIFEST_NAME = "manifest.json"
METRICS_HISTORY_NAME = "metrics.jsonl"
