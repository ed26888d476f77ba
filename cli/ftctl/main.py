"""ftctl: submit, follow and fetch FineTuneJobs, or run one on this machine.

Run: `ftctl --help` (console script from pyproject.toml), or `python -m ftctl --help`.

  ftctl validate job.yaml            schema check + model/dataset pre-flight
  ftctl submit job.yaml              create the FineTuneJob in the cluster
  ftctl list [-A] [-l SEL] [-o wide|json|yaml]   jobs with phase, progress, loss, ETA
  ftctl status NAME [-o json|yaml]   details and a live progress bar until the job ends
  ftctl describe NAME                status, conditions, events and pods on one screen
  ftctl wait NAME [--for phase=Succeeded] [--timeout 30m]   until the job gets there
  ftctl suspend NAME / resume NAME   hold a job (pods removed, progress kept) or let it go on
  ftctl delete NAME                  delete a job (its pods, Job, ConfigMap and Service go with it)
  ftctl logs NAME [-f] [--rank N] [--attempt K] [--previous] [--since 10m]   trainer logs
  ftctl download NAME DIR            adapter + manifest (sha256 checked) + loss.png
  ftctl run --local job.yaml         train the same manifest on this machine, no cluster

Cluster commands read the kubeconfig from --kubeconfig, $KUBECONFIG or ~/.kube/config.
Exit codes: 0 success, 1 the work failed (cluster, storage, training), 2 a user mistake (the
message names the file/field). No traceback is shown for either; FTCTL_DEBUG=1 shows them.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import sys
import time
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from . import __version__
from .errors import CommandFailed, FtctlError, UserError

app = typer.Typer(
    name="ftctl",
    help="Submit, follow and fetch FineTuneJobs, or run one on this machine.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion (bash, zsh, fish, PowerShell)
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

F = TypeVar("F", bound=Callable[..., Any])

KubeconfigOpt = Annotated[
    str | None, typer.Option("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config)")
]
ContextOpt = Annotated[str | None, typer.Option("--context", help="kubeconfig context")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="override a spec field, e.g. --set hyperparameters.epochs=4 (repeatable)"),
]
NamespaceOpt = Annotated[
    str | None, typer.Option("--namespace", "-n", help="namespace (default: the manifest's, else the context's)")
]


def clean_errors(fn: F) -> F:
    """Report FtctlError (and Ctrl-C) as one line on stderr with its exit code, no traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except FtctlError as e:
            if os.environ.get("FTCTL_DEBUG"):
                raise
            err.print(Text.assemble(("error:", "bold red"), " ", str(e)))
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _version(value: bool) -> None:
    if value:
        out.print(f"ftctl {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version")
    ] = False,
) -> None:
    """Submit, follow and fetch FineTuneJobs, or run one on this machine."""


OutputOpt = Annotated[str, typer.Option("--output", "-o", help="text, json or yaml")]


def _print_object(obj: Any, fmt: str) -> None:
    """Machine-readable output: plain JSON or YAML on stdout (no colour, no wrapping)."""
    if fmt == "json":
        typer.echo(json.dumps(obj, indent=2, sort_keys=False))
    else:
        import yaml

        typer.echo(yaml.safe_dump(obj, sort_keys=False).rstrip("\n"))


def _check_output(fmt: str, allowed: tuple[str, ...]) -> None:
    if fmt not in allowed:
        raise UserError(f"--output: {fmt!r} is not one of {', '.join(allowed)}")


def _cluster(kubeconfig: str | None, context: str | None) -> Any:
    from .kube import Cluster

    return Cluster(kubeconfig, context)


# --- validate -------------------------------------------------------------------------------
@app.command()
@clean_errors
def validate(
    file: Annotated[pathlib.Path, typer.Argument(help="FineTuneJob manifest (YAML)")],
    preflight: Annotated[
        bool,
        typer.Option(help="also check that the model and dataset are reachable and the dataset parses"),
    ] = True,
    model: Annotated[str | None, typer.Option(help="pre-flight this model URI instead of spec.model.uri")] = None,
    dataset: Annotated[str | None, typer.Option(help="pre-flight this dataset URI instead of spec.dataset.uri")] = None,
    endpoint: Annotated[str | None, typer.Option(help="S3 endpoint for the pre-flight (else $AWS_ENDPOINT_URL)")] = None,
    set_: SetOpt = None,
) -> None:
    """Check a FineTuneJob manifest against the API schema, then pre-flight its model and dataset.

    The pre-flight runs the trainer's `validate` command here, with this shell's credentials
    (AWS_*, HF_TOKEN): model and tokenizer load, dataset reachable, every row parses.
    """
    from . import manifest

    job = manifest.load(file, set_)
    out.print(f"[green]✓[/] {file}: FineTuneJob {job.name!r} matches the schema")
    if not preflight:
        return
    from . import local

    summary = local.preflight(job, local.Overrides(model=model, dataset=dataset, endpoint=endpoint))
    out.print(f"[green]✓[/] model and dataset reachable; {local.describe_preflight(summary)}")


# --- submit ---------------------------------------------------------------------------------
@app.command()
@clean_errors
def submit(
    file: Annotated[pathlib.Path, typer.Argument(help="FineTuneJob manifest (YAML)")],
    namespace: NamespaceOpt = None,
    set_: SetOpt = None,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
) -> None:
    """Validate a FineTuneJob manifest and create it in the cluster."""
    from . import manifest

    job = manifest.load(file, set_)
    if namespace and job.namespace and namespace != job.namespace:
        # as kubectl: a manifest pinned to a namespace is never silently moved to another
        raise UserError(
            f'the namespace from the provided object "{job.namespace}" does not match the namespace '
            f'"{namespace}". You must pass \'--namespace={job.namespace}\' to perform this operation.'
        )
    cluster = _cluster(kubeconfig, context)
    ns = namespace or job.namespace or cluster.default_namespace
    body = dict(job.document)
    body["metadata"] = {**body.get("metadata", {}), "namespace": ns}
    cluster.create_job(ns, body)
    out.print(f"finetunejob.finetune.dev/{job.name} created in {ns}")
    out.print(f"follow it with: ftctl status {job.name} -n {ns}")


# --- list -----------------------------------------------------------------------------------
@app.command("list")
@clean_errors
def list_jobs(
    namespace: NamespaceOpt = None,
    all_namespaces: Annotated[bool, typer.Option("--all-namespaces", "-A", help="every namespace")] = False,
    selector: Annotated[
        str | None, typer.Option("--selector", "-l", help="label selector, e.g. -l team=a,tier!=dev")
    ] = None,
    output: Annotated[
        str, typer.Option("--output", "-o", help="text, wide (more columns), json or yaml (a List of the whole objects)")
    ] = "text",
    watch: Annotated[
        bool, typer.Option("--watch", "-w", help="after the list, print a row for every change (a job added, progressing, deleted) until Ctrl-C, like kubectl get -w")
    ] = False,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
) -> None:
    """List FineTuneJobs with phase, progress, loss, tokens/s and ETA."""
    from .views import jobs_table

    _check_output(output, ("text", "wide", "json", "yaml"))
    cluster = _cluster(kubeconfig, context)
    ns = None if all_namespaces else (namespace or cluster.default_namespace)
    jobs = cluster.list_jobs(ns, selector)
    if output in ("json", "yaml") and not watch:
        jobs.sort(key=lambda j: (j["metadata"].get("namespace", ""), j["metadata"]["name"]))
        _print_object({"apiVersion": "v1", "kind": "List", "items": jobs}, output)
        return
    wide = output == "wide"
    if output in ("json", "yaml"):
        for job in sorted(jobs, key=lambda j: (j["metadata"].get("namespace", ""), j["metadata"]["name"])):
            _print_event(job, output)
    elif jobs:
        out.print(jobs_table(jobs, all_namespaces=all_namespaces, wide=wide))
    elif not watch:
        where = "any namespace" if ns is None else "namespace " + ns
        err.print(f"no FineTuneJobs in {where}" + (f" matching {selector!r}" if selector else ""))
        return
    else:
        out.print(jobs_table([], all_namespaces=all_namespaces, wide=wide))  # the header
    if not watch:
        return
    out.file.flush()
    try:
        for kind, job in cluster.watch_jobs(ns, selector, cluster.last_list_version):
            if output in ("json", "yaml"):
                _print_event(job, output)
                continue
            if kind == "DELETED":
                job = {**job, "status": {**(job.get("status") or {}), "phase": "Deleted"}}
            out.print(jobs_table([job], all_namespaces=all_namespaces, wide=wide, header=False))
            out.file.flush()
    except KeyboardInterrupt:
        return


def _print_event(obj: dict[str, Any], fmt: str) -> None:
    """One object of a watch: a JSON object per line, or a YAML document."""
    if fmt == "json":
        typer.echo(json.dumps(obj, sort_keys=False))
    else:
        import yaml

        typer.echo("---\n" + yaml.safe_dump(obj, sort_keys=False), nl=False)
    sys.stdout.flush()


# --- status ---------------------------------------------------------------------------------
@app.command()
@clean_errors
def status(
    name: Annotated[str, typer.Argument(help="FineTuneJob name")],
    namespace: NamespaceOpt = None,
    watch: Annotated[
        bool, typer.Option("--watch/--once", help="keep a live progress bar until the job ends")
    ] = True,
    interval: Annotated[float, typer.Option(min=0.2, help="refresh interval in seconds")] = 2.0,
    output: Annotated[
        str, typer.Option("--output", "-o", help="text, or json / yaml: the whole FineTuneJob, printed once")
    ] = "text",
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
) -> None:
    """Show a job's phase, workers, conditions and a live progress bar from .status.progress.

    On a terminal it redraws until the job ends and exits 1 if it ended Failed. When stdout is
    not a terminal (a pipe, a file, CI) it prints once and exits 1 if the job is Failed, else 0.
    `--once` prints once and exits 0; so does `-o json|yaml`.
    """
    from .views import TERMINAL_PHASES, phase_of, status_view

    _check_output(output, ("text", "json", "yaml"))
    cluster = _cluster(kubeconfig, context)
    ns = namespace or cluster.default_namespace
    job = cluster.get_job(ns, name)
    if output != "text":
        _print_object(job, output)
        return
    if not watch or phase_of(job) in TERMINAL_PHASES or not out.is_terminal:
        out.print(status_view(job))
        _exit_for_phase(phase_of(job), watch)
        return
    with Live(status_view(job), console=out, auto_refresh=False) as live:
        while phase_of(job) not in TERMINAL_PHASES:
            time.sleep(interval)
            job = cluster.get_job(ns, name)
            live.update(status_view(job), refresh=True)
    _exit_for_phase(phase_of(job), watch)


def _exit_for_phase(phase: str, watched: bool) -> None:
    if watched and phase == "Failed":
        raise typer.Exit(1)


# --- describe -------------------------------------------------------------------------------
@app.command()
@clean_errors
def describe(
    name: Annotated[str, typer.Argument(help="FineTuneJob name")],
    namespace: NamespaceOpt = None,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
) -> None:
    """Everything about one job on one screen, like `kubectl describe`: phase, message,
    attempt/restarts, progress; its conditions; its events (oldest first); its pods (attempt,
    rank, phase, node)."""
    from .views import describe_view

    cluster = _cluster(kubeconfig, context)
    ns = namespace or cluster.default_namespace
    job = cluster.get_job(ns, name)
    # the job itself is required; its events and pods are shown when this user may list them
    events: list[Any] | str
    pods: list[Any] | str
    try:
        events = cluster.job_events(ns, job)
    except UserError as e:
        events = str(e)
    try:
        pods = cluster.job_pods(ns, name)
    except UserError as e:
        pods = str(e)
    out.print(describe_view(job, pods, events))


# --- wait, delete, suspend, resume -------------------------------------------------------------
def _parse_for(condition: str) -> tuple[str, str, str]:
    """`phase=Succeeded` or `condition=Validated` (status True) or `condition=Running=False`."""
    kind, _, rest = condition.partition("=")
    if kind == "phase" and rest:
        return "phase", rest, ""
    if kind == "condition" and rest:
        name, _, value = rest.partition("=")
        return "condition", name, value or "True"
    raise UserError(f"--for: {condition!r} is not phase=<Phase> or condition=<Type>[=True|False]")


def _duration(text: str, option: str = "--timeout") -> float:
    units = {"s": 1, "m": 60, "h": 3600}
    try:
        seconds = float(text[:-1]) * units[text[-1]] if text and text[-1] in units else float(text)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:  # also NaN
        raise UserError(f"{option}: {text!r} is not a duration (e.g. 90s, 30m, 2h)")
    return seconds


@app.command()
@clean_errors
def wait(
    name: Annotated[str, typer.Argument(help="FineTuneJob name")],
    for_: Annotated[str, typer.Option("--for", help="phase=<Phase> or condition=<Type>[=True|False]")] = "phase=Succeeded",
    timeout: Annotated[str, typer.Option(help="give up after this long (90s, 30m, 2h)")] = "30m",
    namespace: NamespaceOpt = None,
    interval: Annotated[float, typer.Option(min=0.2, help="poll interval in seconds")] = 2.0,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
) -> None:
    """Wait until the job is in a phase or has a condition, like `kubectl wait`. Exit 0 when it
    is; 1 when it ends without getting there (e.g. Failed while waiting for Succeeded) or on
    timeout, with the job's message."""
    from .views import TERMINAL_PHASES, phase_of

    kind, want, value = _parse_for(for_)
    limit = time.monotonic() + _duration(timeout)
    cluster = _cluster(kubeconfig, context)
    ns = namespace or cluster.default_namespace
    while True:
        job = cluster.get_job(ns, name)
        status = job.get("status") or {}
        phase = phase_of(job)
        if kind == "phase":
            met = phase == want
        else:
            met = any(x.get("type") == want and x.get("status") == value for x in status.get("conditions") or [])
        if met:
            out.print(f"finetunejob.finetune.dev/{name} {for_}")
            return
        if phase in TERMINAL_PHASES:
            raise CommandFailed(f"FineTuneJob {ns}/{name} ended {phase} without {for_}: {status.get('message') or ''}".rstrip(": "))
        if time.monotonic() >= limit:
            raise CommandFailed(f"timed out after {timeout} waiting for {for_} (phase {phase}: {status.get('message') or 'no message'})")
        time.sleep(interval)


@app.command()
@clean_errors
def delete(
    name: Annotated[str, typer.Argument(help="FineTuneJob name")],
    namespace: NamespaceOpt = None,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
) -> None:
    """Delete a job; its Job, pods, ConfigMap and Service go with it (owner references). Its output
    in object storage stays."""
    cluster = _cluster(kubeconfig, context)
    ns = namespace or cluster.default_namespace
    cluster.delete_job(ns, name)
    out.print(f"finetunejob.finetune.dev/{name} deleted from {ns}")


def _set_suspend(name: str, namespace: str | None, kubeconfig: str | None, context: str | None, value: bool) -> None:
    cluster = _cluster(kubeconfig, context)
    ns = namespace or cluster.default_namespace
    cluster.patch_job_spec(ns, name, {"suspend": value})
    out.print(f"finetunejob.finetune.dev/{name} {'suspended' if value else 'resumed'} in {ns}")


@app.command()
@clean_errors
def suspend(name: Annotated[str, typer.Argument(help="FineTuneJob name")], namespace: NamespaceOpt = None,
            kubeconfig: KubeconfigOpt = None, context: ContextOpt = None) -> None:
    """Hold a job: spec.suspend=true; its pods are removed, its progress and checkpoints kept."""
    _set_suspend(name, namespace, kubeconfig, context, True)


@app.command()
@clean_errors
def resume(name: Annotated[str, typer.Argument(help="FineTuneJob name")], namespace: NamespaceOpt = None,
           kubeconfig: KubeconfigOpt = None, context: ContextOpt = None) -> None:
    """Let a suspended job go on (spec.suspend=false): it resumes from its newest checkpoint."""
    _set_suspend(name, namespace, kubeconfig, context, False)


# --- logs -----------------------------------------------------------------------------------
@app.command()
@clean_errors
def logs(
    name: Annotated[str, typer.Argument(help="FineTuneJob name")],
    namespace: NamespaceOpt = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="stream new lines")] = False,
    tail: Annotated[int | None, typer.Option(min=0, help="only the last N lines")] = None,
    validator: Annotated[
        bool, typer.Option("--validator", help="logs of the validation pod instead of a trainer")
    ] = False,
    rank: Annotated[int, typer.Option(min=0, help="the trainer pod of this rank (Job completion index)")] = 0,
    attempt: Annotated[
        int | None, typer.Option(min=0, help="the pod of this attempt (default: the newest)")
    ] = None,
    previous: Annotated[
        bool, typer.Option("--previous", "-p", help="the pod's previous container instance (after a restart)")
    ] = False,
    since: Annotated[str | None, typer.Option(help="only lines newer than this (90s, 10m, 2h)")] = None,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
) -> None:
    """Print the logs of one trainer pod: rank 0 of the newest attempt unless --rank/--attempt
    say otherwise (or of the validation pod)."""
    from finetune_trainer import contract

    from .kube import pick_trainer_pod, pod_attempt, pod_rank

    if validator and (rank or attempt is not None):
        raise UserError("--validator cannot be combined with --rank or --attempt")
    since_seconds = None if since is None else max(1, round(_duration(since, "--since")))
    cluster = _cluster(kubeconfig, context)
    ns = namespace or cluster.default_namespace
    cluster.get_job(ns, name)  # a clean "not found" for a wrong name
    if validator:
        pods = cluster.job_pods(ns, name, contract.COMPONENT_VALIDATOR)
        pod = max(pods, key=lambda p: p.metadata.creation_timestamp) if pods else None
        if pod is None:
            raise UserError(f"FineTuneJob {ns}/{name} has no validation pod yet (see: ftctl status {name})")
    else:
        pods = cluster.job_pods(ns, name, contract.COMPONENT_TRAINER)
        pod = pick_trainer_pod(pods, rank=rank, attempt=attempt)
        if pod is None:
            what = f"rank-{rank} trainer pod" + (f" in attempt {attempt}" if attempt is not None else "")
            if not pods:
                raise UserError(f"FineTuneJob {ns}/{name} has no {what} yet (see: ftctl status {name})")
            have = sorted({(pod_attempt(p), pod_rank(p)) for p in pods}, key=lambda x: (x[0] or 0, x[1] or 0))
            listed = ", ".join(f"attempt {a} rank {r}" for a, r in have)
            raise UserError(f"FineTuneJob {ns}/{name} has no {what} (its trainer pods: {listed})")
    err.print(f"pod/{pod.metadata.name} (attempt {pod_attempt(pod)}, rank {pod_rank(pod)})"
              if not validator else f"pod/{pod.metadata.name}", style="dim")
    for line in cluster.pod_logs(ns, pod.metadata.name, follow=follow, tail=tail,
                                 previous=previous, since_seconds=since_seconds):
        print(line)


# --- download -------------------------------------------------------------------------------
@app.command()
@clean_errors
def download(
    name: Annotated[str, typer.Argument(help="FineTuneJob name, or an output URI (s3://... or a directory)")],
    directory: Annotated[pathlib.Path, typer.Argument(help="local directory to write into")],
    namespace: NamespaceOpt = None,
    endpoint: Annotated[
        str | None, typer.Option(help="S3 endpoint (default: the job's output.endpoint, else $AWS_ENDPOINT_URL)")
    ] = None,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
) -> None:
    """Download a finished run's adapter and manifest (sha256 verified) and draw loss.png."""
    from .download import PLOT_HINT, can_plot, download_run
    from .storage import Storage, parse_location

    manifest_sha256: str | None = None
    if "://" in name or name.startswith(("/", ".")):
        output_uri, title = name, name
    else:
        cluster = _cluster(kubeconfig, context)
        ns = namespace or cluster.default_namespace
        job = cluster.get_job(ns, name)
        output_uri, job_endpoint = _job_output(cluster, job)
        endpoint = endpoint or job_endpoint
        title = f"{ns}/{name}"
        # the trainer reported the manifest's own sha256: the manifest read now must be that one
        manifest_sha256 = ((job.get("status") or {}).get("output") or {}).get("sha256") or None
    storage = Storage(parse_location(output_uri), endpoint)
    result = download_run(storage, directory, title=title, manifest_sha256=manifest_sha256)
    table = Table(box=None, header_style="bold")
    table.add_column("file")
    table.add_column("bytes", justify="right")
    table.add_column("sha256")
    for f in result.files:
        table.add_row(f.path, f"{f.size:,}", f.sha256[:16] + "…")
    out.print(table)
    pinned = " (its own sha256 matches the job's status)" if manifest_sha256 else ""
    out.print(f"[green]✓[/] {len(result.files)} files, {result.total_bytes:,} bytes, every sha256 "
              f"matches {storage.location.uri}manifest.json{pinned} -> {directory}")
    if result.loss_png:
        out.print(f"loss curve ({result.metrics_rows} logged steps): {result.loss_png}")
    elif result.metrics_rows and not can_plot():
        err.print(PLOT_HINT, markup=False)


def _job_output(cluster: Any, job: dict[str, Any]) -> tuple[str, str | None]:
    """The output location of a finished job and its S3 endpoint (spec, else its runtime)."""
    status = job.get("status") or {}
    name = job["metadata"]["name"]
    out_status = status.get("output") or {}
    manifest_uri = out_status.get("manifestUri")
    spec_out = (job.get("spec") or {}).get("output") or {}
    endpoint = spec_out.get("endpoint")
    if not manifest_uri:
        phase = status.get("phase", "Pending")
        raise UserError(
            f"FineTuneJob {name} has no output yet (phase {phase}); download works once it has Succeeded"
        )
    if endpoint is None and not spec_out:
        # The output came from the job's runtime: the copy the job started with (status.runtime)
        # says where, and reading it needs no access to the cluster-scoped runtime.
        copy = (status.get("runtime") or {}).get("spec")
        if copy is None and (job.get("spec") or {}).get("runtimeRef"):
            copy = cluster.get_runtime(job["spec"]["runtimeRef"]["name"]).get("spec")
        endpoint = ((copy or {}).get("defaultOutput") or {}).get("endpoint")
    base = str(manifest_uri).rsplit("/", 1)[0] + "/"
    return base, endpoint


# --- run --local ----------------------------------------------------------------------------
@app.command()
@clean_errors
def run(
    file: Annotated[pathlib.Path, typer.Argument(help="FineTuneJob manifest (YAML)")],
    local_: Annotated[
        bool, typer.Option("--local", help="run on this machine (the only mode today)")
    ] = False,
    output: Annotated[
        str | None, typer.Option(help="override spec.output.uri: a directory or s3://bucket/prefix/")
    ] = None,
    endpoint: Annotated[
        str | None, typer.Option(help="S3-compatible endpoint URL for every s3:// URI of the manifest (model, dataset, output)")
    ] = None,
    model: Annotated[str | None, typer.Option(help="override spec.model.uri (e.g. a local directory)")] = None,
    dataset: Annotated[str | None, typer.Option(help="override spec.dataset.uri")] = None,
    max_steps: Annotated[
        int | None, typer.Option(min=1, help="override spec.hyperparameters.maxSteps")
    ] = None,
    nproc: Annotated[
        int, typer.Option(min=1, max=64, help="processes: 1 runs in this process, >1 under torchrun")
    ] = 1,
    workdir: Annotated[
        pathlib.Path | None, typer.Option(help="scratch directory (default: a temporary one)")
    ] = None,
    runtime: Annotated[
        str | None, typer.Option(help="resolve the job against this preset as the operator would (limits, allowed methods, "
                                      "defaultOutput): a ClusterFineTuneRuntime YAML file, or the name of one in the cluster")
    ] = None,
    validate_: Annotated[
        bool, typer.Option("--validate/--no-validate", help="run the validation step first (model and dataset reachable, every row parses), as the cluster does")
    ] = True,
    set_: SetOpt = None,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
) -> None:
    """Train a FineTuneJob manifest on this machine: no cluster, same trainer, same outputs.

    As in a cluster, the validation step runs first, and with --nproc > 1 the image's launcher
    keeps the trainer's exit codes (2 configuration, 3 data, 4 retryable). Credentials come from
    the usual environment variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL,
    HF_TOKEN); spec.*.secretRef is ignored locally.
    """
    from . import local, manifest

    if not local_:
        raise UserError("only local runs are supported: pass --local (use `ftctl submit` for the cluster)")
    job = manifest.load(file, set_)
    overrides = local.Overrides(
        output=output, endpoint=endpoint, model=model, dataset=dataset, max_steps=max_steps
    )
    preset = None
    if runtime is not None:
        cluster = None if pathlib.Path(runtime).expanduser().is_file() else _cluster(kubeconfig, context)
        preset = local.load_preset(runtime, cluster)
    config = local.trainer_config(job, overrides, preset)
    out.print(f"running FineTuneJob {job.name!r} locally: {config.method.type} on {config.model.uri}, "
              f"{'in process' if nproc == 1 else f'torchrun x{nproc}'} -> {config.output.uri}"
              + (f" (runtime {preset.name})" if preset else ""))
    result = local.run(config, nproc=nproc, workdir=workdir, validate=validate_)
    out.print(local.summary_table(result))
    out.print(f"[green]✓[/] adapter: {result.adapter_uri}")
    out.print(f"[green]✓[/] manifest: {result.manifest_uri}")


def main() -> None:
    """Entry point for `python -m ftctl`."""
    app(prog_name="ftctl")


if __name__ == "__main__":
    main()
