"""`ftctl run --local` and `ftctl validate`'s pre-flight: the trainer on this machine, no cluster.

The FineTuneJob spec becomes the same TrainerConfig the operator renders into the job's ConfigMap
(the spec reuses the trainer's sub-models, so this is a field-for-field copy). The trainer then
runs in this process (`--nproc 1`) or under `torchrun --standalone` (`--nproc N`), exactly as in
a pod. Credentials come from this environment (AWS_*, HF_TOKEN); secretRefs are cluster-only.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
from typing import Any

from finetune_trainer import contract
from finetune_trainer.config import ConfigError, TrainerConfig, parse_config
from rich.table import Table

from .errors import CommandFailed, UserError
from .manifest import JobManifest
from .storage import Storage, parse_location


@dataclasses.dataclass(frozen=True)
class Overrides:
    """Command-line replacements for spec fields (None keeps the manifest's value)."""

    output: str | None = None
    endpoint: str | None = None
    model: str | None = None
    dataset: str | None = None
    max_steps: int | None = None


@dataclasses.dataclass(frozen=True)
class RunResult:
    output_uri: str
    adapter_uri: str
    manifest_uri: str
    manifest: dict[str, Any]
    metrics: list[dict[str, Any]]
    seconds: float


@dataclasses.dataclass(frozen=True)
class Preset:
    """A ClusterFineTuneRuntime the local run resolves the job against, as the operator would."""

    name: str
    spec: Any  # finetune_operator.api.ClusterFineTuneRuntimeSpec


def load_preset(value: str, cluster: Any | None = None) -> Preset:
    """`--runtime`: a ClusterFineTuneRuntime YAML file, else the name of one in the cluster
    (`cluster`: a ftctl.kube.Cluster, made only when a name must be looked up)."""
    import yaml
    from finetune_operator.api import InvalidResource, parse_runtime

    path = pathlib.Path(value).expanduser()
    if path.is_file():
        try:
            doc = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise UserError(f"{value}: not YAML: {err}") from None
        if not isinstance(doc, dict) or doc.get("kind") != contract.KIND_RUNTIME:
            raise UserError(f"{value}: not a {contract.KIND_RUNTIME} (kind: {doc.get('kind') if isinstance(doc, dict) else None!r})")
        name = str((doc.get("metadata") or {}).get("name") or path.stem)
    else:
        if cluster is None:
            raise UserError(f"--runtime {value}: no such file, and no cluster to look the name up in")
        doc = cluster.get_runtime(value)
        name = value
    try:
        return Preset(name, parse_runtime(doc.get("spec") or {}))
    except InvalidResource as err:
        raise UserError(f"{contract.KIND_RUNTIME} {name}: {err}") from None


def trainer_config(job: JobManifest, overrides: Overrides, preset: Preset | None = None) -> TrainerConfig:
    """The TrainerConfig for a local run of `job`, with command-line overrides applied. With a
    `preset`, the job is first resolved against it exactly as the operator resolves it (method
    and size limits, the default output): what the cluster would refuse is refused here."""
    spec = job.spec
    data: dict[str, Any] = {
        "jobName": job.name,
        "namespace": job.namespace or "local",
        "model": _dump(spec.model),
        "dataset": _dump(spec.dataset),
        "method": _dump(spec.method),
        "hyperparameters": _dump(spec.hyperparameters),
        "checkpoint": _dump(spec.checkpoint),
        "metricsPort": 0,
    }
    output = _dump(spec.output) if spec.output is not None else None
    if preset is not None:
        from finetune_operator.resolve import JobMeta, OperatorConfig, Problem, resolve

        meta = JobMeta(name=job.name, namespace=job.namespace or "local", uid="", generation=1)
        resolved = resolve(meta, spec, preset.spec, True, OperatorConfig(default_runtime=preset.name), local=True)
        if isinstance(resolved, Problem):
            raise UserError(f"{job.path} under {contract.KIND_RUNTIME} {preset.name!r}: {resolved.message}")
        output = _dump(resolved.output)
    if overrides.output:
        location = parse_location(overrides.output, field="--output")
        output = {**(output or {}), "uri": location.uri}
        if location.scheme == "file":
            output.pop("endpoint", None)
    if output is None:
        raise UserError(
            f"{job.path}: spec.output is not set (the cluster takes it from runtime "
            f"{spec.runtime_ref.name if spec.runtime_ref else '?'}); pass --runtime FILE|NAME, or --output DIR or s3://bucket/prefix/"
        )
    data["output"] = output
    if overrides.model:
        data["model"] = {**data["model"], "uri": _local_or_uri(overrides.model)}
    if overrides.dataset:
        data["dataset"] = {**data["dataset"], "uri": _local_or_uri(overrides.dataset)}
    for block in ("model", "dataset", "output"):
        # --endpoint replaces every S3 endpoint of the manifest (in-cluster names do not resolve here)
        if not data[block]["uri"].startswith("s3://"):
            data[block].pop("endpoint", None)
        elif overrides.endpoint:
            data[block]["endpoint"] = overrides.endpoint
    if overrides.max_steps is not None:
        data["hyperparameters"] = {**data["hyperparameters"], "maxSteps": overrides.max_steps}
        every = data["checkpoint"].get("everySteps")
        if isinstance(every, int) and every > overrides.max_steps:
            data["checkpoint"] = {**data["checkpoint"], "everySteps": overrides.max_steps}
    for block in ("model", "dataset", "output"):
        data[block].pop("secretRef", None)  # cluster-only: locally the environment holds credentials
    try:
        return parse_config(data)
    except ConfigError as err:
        raise UserError(f"{job.path} with the given overrides is not runnable:\n{err}") from None


def _dump(model: Any) -> dict[str, Any]:
    out: dict[str, Any] = model.model_dump(by_alias=True, exclude_none=True, mode="json")
    return out


def _local_or_uri(value: str) -> str:
    """A URI as given, or a relative local path made absolute (the trainer needs absolute paths)."""
    if "://" in value or value.startswith("/"):
        return value
    path = pathlib.Path(value).expanduser().resolve()
    if not path.exists():
        raise UserError(f"{value}: no such file or directory")
    return str(path)


def _env_for(config: TrainerConfig) -> dict[str, str]:
    """The environment a pod would get: job identity, plus this shell's credentials."""
    env = dict(os.environ)
    env[contract.ENV_JOB_NAME] = config.job_name
    env[contract.ENV_JOB_NAMESPACE] = config.namespace
    env.setdefault(contract.ENV_ATTEMPT, "0")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def write_config(config: TrainerConfig, directory: pathlib.Path) -> pathlib.Path:
    directory.mkdir(parents=True, exist_ok=True)
    path: pathlib.Path = directory / str(contract.CONFIG_FILE_NAME)
    path.write_text(config.to_json())
    return path


def run(config: TrainerConfig, *, nproc: int, workdir: pathlib.Path | None, validate: bool = True) -> RunResult:
    """Validate, then train `config` here, and return what the run wrote (manifest + metrics
    history). `validate` False skips the validation step."""
    import time

    own_tmp = workdir is None
    work = pathlib.Path(tempfile.mkdtemp(prefix="ftctl-run-")) if workdir is None else workdir.resolve()
    try:
        config_path = write_config(config, work)
        env = _env_for(config)
        env[contract.ENV_CONFIG_PATH] = str(config_path)
        env.setdefault("FINETUNE_WORK_DIR", str(work / "trainer"))
        if validate:
            # the step a cluster runs first, in its validation pod: model and dataset reachable,
            # every row parses; nothing trains until it passed
            code = _run_trainer(["validate", "--config", str(config_path)], env=dict(env), nproc=1)
            if code != contract.EXIT_OK:
                raise _trainer_failure(code, "validation")
        t0 = time.monotonic()
        code = _run_trainer(["train", "--config", str(config_path)], env=env, nproc=nproc)
        seconds = time.monotonic() - t0
        if code != contract.EXIT_OK:
            raise _trainer_failure(code)
        return collect(config, seconds)
    finally:
        if own_tmp:
            shutil.rmtree(work, ignore_errors=True)


def _run_trainer(args: list[str], *, env: dict[str, str], nproc: int) -> int:
    """Run the trainer's CLI: in this process for one process, else under torchrun."""
    if nproc == 1:
        return _in_process(args, env)
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        raise CommandFailed("torchrun not found: install the training extras (pip install 'finetune-operator[train]')")
    # The image's launcher: torchrun in-process, exiting with the code the workers recorded (plain
    # torchrun exits 1 for a bad config, bad data and a crash alike).
    cmd = [sys.executable, "-m", "finetune_trainer.launch", "--standalone", f"--nproc-per-node={nproc}", "-m", "finetune_trainer", *args]
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    with tempfile.TemporaryDirectory(prefix="ftctl-launch-") as d:
        env.setdefault(contract.ENV_TERMINATION_MESSAGE_PATH, str(pathlib.Path(d) / "termination-log"))
        return subprocess.run(cmd, env=env, check=False).returncode


def _in_process(args: list[str], env: dict[str, str]) -> int:
    try:
        from finetune_trainer.__main__ import main as trainer_main
    except ImportError as err:
        raise CommandFailed(
            f"the trainer is not installed here ({err}); install the training extras: "
            "pip install 'finetune-operator[train]'"
        ) from None
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        result = trainer_main(args)
        return int(result or 0)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _trainer_failure(code: int, step: str = "training") -> Exception:
    if code == contract.EXIT_CONFIG_ERROR:
        return UserError(f"{step}: the trainer rejected the configuration (see its message above)")
    if code == contract.EXIT_DATA_ERROR:
        return UserError(f"{step}: the model or dataset is unreachable or malformed (see the trainer's message above)")
    return CommandFailed(f"{step} failed (trainer exit code {code}; see its log above)")


def collect(config: TrainerConfig, seconds: float) -> RunResult:
    """Read the run's manifest (written last) and metrics history from its output location."""
    from .download import read_metrics

    location = parse_location(config.output.uri)
    storage = Storage(location, config.output.endpoint)
    try:
        manifest = json.loads(storage.read_bytes(contract.MANIFEST_NAME))
    except CommandFailed:
        raise CommandFailed(f"the trainer exited 0 but wrote no {contract.MANIFEST_NAME} under {location.uri}") from None
    metrics: list[dict[str, Any]] = []
    if storage.exists(contract.METRICS_HISTORY_NAME):
        metrics = read_metrics(storage.read_bytes(contract.METRICS_HISTORY_NAME).decode())
    return RunResult(
        output_uri=location.uri,
        adapter_uri=location.child(contract.ADAPTER_PREFIX).uri,
        manifest_uri=location.child(contract.MANIFEST_NAME).uri,
        manifest=manifest,
        metrics=metrics,
        seconds=seconds,
    )


def summary_table(result: RunResult) -> Table:
    """First/last loss, eval loss, tokens/s and the adapter's files, for the terminal."""
    losses = [r for r in result.metrics if isinstance(r.get("loss"), int | float)]
    evals = [r for r in result.metrics if isinstance(r.get("evalLoss", r.get("eval_loss")), int | float)]
    tps = [float(r["tokensPerSecond"]) for r in result.metrics if isinstance(r.get("tokensPerSecond"), int | float)]
    t = Table(title="run summary", box=None, show_header=False)
    t.add_column(style="bold")
    t.add_column()
    t.add_row("wall time", f"{result.seconds:.1f} s")
    if losses:
        t.add_row("steps", str(losses[-1].get("step", len(losses))))
        t.add_row("train loss", f"{losses[0]['loss']:.4f} (step {losses[0].get('step')}) -> "
                                f"{losses[-1]['loss']:.4f} (step {losses[-1].get('step')})")
    if evals:
        first, last = evals[0], evals[-1]
        key = "evalLoss" if "evalLoss" in last else "eval_loss"
        t.add_row("eval loss", f"{first[key]:.4f} -> {last[key]:.4f}")
    if tps:
        t.add_row("tokens/s", f"{sum(tps) / len(tps):,.0f} mean, {max(tps):,.0f} max")
    files = result.manifest.get("files")
    if isinstance(files, list | dict):
        t.add_row("files", f"{len(files)} listed in {contract.MANIFEST_NAME}")
    return t


# --- pre-flight (ftctl validate) ---------------------------------------------------------------
def preflight(job: JobManifest, overrides: Overrides | None = None) -> dict[str, Any]:
    """The trainer's `validate` command on this machine: model + dataset reachable, rows parse."""
    given = overrides or Overrides()
    with tempfile.TemporaryDirectory(prefix="ftctl-out-") as scratch:
        config = trainer_config(job, dataclasses.replace(given, output=scratch))
        return _preflight(job, config)


def _preflight(job: JobManifest, config: TrainerConfig) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="ftctl-validate-") as d:
        work = pathlib.Path(d)
        config_path = write_config(config, work)
        summary_path = work / "summary.json"
        env = _env_for(config)
        env["FINETUNE_WORK_DIR"] = str(work / "trainer")
        code = _run_trainer(["validate", "--config", str(config_path), "--termination-log", str(summary_path)],
                            env=env, nproc=1)
        summary: dict[str, Any] = {}
        if summary_path.exists():
            summary = json.loads(summary_path.read_text())
    if code != contract.EXIT_OK:
        reason = summary.get("message") or summary.get("error") or "see the trainer's message above"
        raise UserError(f"{job.path}: pre-flight failed: {reason}")
    return summary


def describe_preflight(summary: dict[str, Any]) -> str:
    """One line from the trainer's validate summary: rows, split, token lengths, labels."""
    data = summary.get("dataset") or {}
    model = summary.get("model") or {}
    parts = []
    if model.get("modelType"):
        parts.append(f"model {model['modelType']}")
    for key, label in (("rows", "rows"), ("trainRows", "train"), ("validationRows", "validation"),
                       ("maxTokens", "max tokens"), ("meanTokens", "mean tokens"),
                       ("rowsLongerThanMaxSeqLength", "rows longer than maxSeqLength"),
                       ("rowsDroppedNoTrainedTokens", "rows dropped (no trained token left)")):
        if key in data:
            parts.append(f"{data[key]} {label}")
    if data.get("labels"):
        parts.append(f"labels {', '.join(map(str, data['labels']))}")
    return ", ".join(parts) or "dataset parses"
