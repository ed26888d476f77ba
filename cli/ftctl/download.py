"""`ftctl download`: fetch a finished run's adapter, verify it, and draw its loss curve.

The run's `manifest.json` is written last by the trainer and lists every file with its sha256
and size; each downloaded file is checked against it. `metrics.jsonl` (one JSON object per
logged step) becomes `loss.png`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import pathlib
from typing import Any

from finetune_trainer import contract

from .errors import CommandFailed
from .storage import Storage


@dataclasses.dataclass(frozen=True)
class ManifestFile:
    path: str  # relative to the output location
    sha256: str
    size: int


@dataclasses.dataclass(frozen=True)
class DownloadResult:
    directory: pathlib.Path
    files: list[ManifestFile]
    total_bytes: int
    manifest: dict[str, Any]
    loss_png: pathlib.Path | None
    metrics_rows: int


def manifest_files(manifest: dict[str, Any]) -> list[ManifestFile]:
    """The files a manifest lists, paths relative to the output location."""
    raw = manifest.get("files")
    entries: list[tuple[str, dict[str, Any]]]
    if isinstance(raw, dict):
        entries = [(str(k), v) for k, v in raw.items()]
    elif isinstance(raw, list):
        entries = [(str(e.get("path", "")), e) for e in raw if isinstance(e, dict)]
    else:
        raise CommandFailed("manifest.json has no 'files' list: not a finished run")
    out = []
    for path, meta in entries:
        if not path or path.startswith("/") or ".." in path.split("/"):
            raise CommandFailed(f"manifest.json lists an unsafe path {path!r}")
        out.append(ManifestFile(path=path, sha256=str(meta["sha256"]), size=int(meta["size"])))
    return out


def sha256_of(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_metrics(text: str) -> list[dict[str, Any]]:
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if line:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line from an interrupted run
            if isinstance(row, dict):
                rows.append(row)
    return rows


#: How to get loss.png when matplotlib is not installed (it is only in the `cli` extra).
PLOT_HINT = "loss.png not drawn: matplotlib is not installed (pip install 'finetune-operator[cli]')"


def can_plot() -> bool:
    """Whether matplotlib can be imported (the `cli` extra; not needed for anything else)."""
    import importlib.util

    try:
        return importlib.util.find_spec("matplotlib") is not None
    except (ImportError, ValueError):
        return False


def plot_loss(rows: list[dict[str, Any]], dest: pathlib.Path, title: str) -> bool:
    """Draw train (and eval) loss against step into `dest`; False when there is nothing to draw."""
    rows = [r for r in rows if "step" in r and not r.get("final")]  # "final" repeats the last step
    train = [(r["step"], r["loss"]) for r in rows if _num(r.get("loss"))]
    # rows carry the latest eval loss forward: keep only the steps where a new one appeared
    evals: list[tuple[Any, Any]] = []
    for r in rows:
        value = r.get("evalLoss", r.get("eval_loss"))
        if _num(value) and (not evals or value != evals[-1][1]):
            evals.append((r["step"], value))
    if not train and not evals:
        return False
    if not can_plot():
        return False  # (the command says how to get the plot; the download itself is complete)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False  # a broken install: the download stays complete

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss")
    if evals:
        ax.plot(*zip(*evals, strict=True), "o-", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(dest)
    plt.close(fig)
    return True


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def download_run(storage: Storage, dest: pathlib.Path, *, title: str,
                 manifest_sha256: str | None = None) -> DownloadResult:
    """Download every file the run's manifest lists into `dest`, verifying each sha256.

    `manifest_sha256` (a job's status.output.sha256) pins the manifest itself: a manifest
    replaced after the job finished is refused before any file is fetched. Each file is written
    to `<file>.part` and renamed once its size and sha256 match, so `dest` never holds a partial
    or unverified file under its real name; a `.part` is removed when its file fails.
    """
    raw = storage.read_bytes(contract.MANIFEST_NAME)
    if manifest_sha256:
        digest = hashlib.sha256(raw).hexdigest()
        if digest != manifest_sha256.lower():
            raise CommandFailed(
                f"{storage.location.uri}{contract.MANIFEST_NAME}: sha256 {digest[:12]}.. does not "
                f"match the job's status.output.sha256 {manifest_sha256[:12]}..; the output was "
                "overwritten after the job finished"
            )
    try:
        manifest = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CommandFailed(f"{storage.location.uri}{contract.MANIFEST_NAME} is not JSON: {err}") from None
    if not isinstance(manifest, dict):
        raise CommandFailed(f"{storage.location.uri}{contract.MANIFEST_NAME} is not a JSON object")
    files = manifest_files(manifest)
    dest.mkdir(parents=True, exist_ok=True)
    total = 0
    for f in files:
        total += _fetch_verified(storage, f, dest / f.path)
    _write_atomic(dest / contract.MANIFEST_NAME, json.dumps(manifest, indent=2).encode() + b"\n")
    rows: list[dict[str, Any]] = []
    png: pathlib.Path | None = None
    if storage.exists(contract.METRICS_HISTORY_NAME):
        data = storage.read_bytes(contract.METRICS_HISTORY_NAME)
        _write_atomic(dest / contract.METRICS_HISTORY_NAME, data)
        rows = read_metrics(data.decode(errors="replace"))
        candidate = dest / "loss.png"
        if plot_loss(rows, candidate, title):
            png = candidate
    return DownloadResult(dest, files, total, manifest, png, len(rows))


def part_path(target: pathlib.Path) -> pathlib.Path:
    return target.with_name(target.name + ".part")


def _fetch_verified(storage: Storage, f: ManifestFile, target: pathlib.Path) -> int:
    """Download one file to `<target>.part`, check it, rename it to `target`; its size."""
    part = part_path(target)
    try:
        storage.download(f.path, part)
        size = part.stat().st_size
        digest = sha256_of(part)
        if size != f.size or digest != f.sha256:
            raise CommandFailed(
                f"{f.path}: checksum mismatch (manifest sha256 {f.sha256[:12]}.. size {f.size}, "
                f"downloaded sha256 {digest[:12]}.. size {size}); the download is incomplete or "
                "the object was changed after the run"
            )
        part.replace(target)
    except BaseException:  # also Ctrl-C: never leave a .part behind
        part.unlink(missing_ok=True)
        raise
    return size


def _write_atomic(target: pathlib.Path, data: bytes) -> None:
    part = part_path(target)
    try:
        part.write_bytes(data)
        part.replace(target)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
