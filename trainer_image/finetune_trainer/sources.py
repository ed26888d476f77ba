"""Fetch the base model and the dataset to local disk, from hf://, s3://, https://, pvc:// or a path.

Each node downloads once (local rank 0) into its own work directory; the other ranks wait at a
barrier. A multi-node job may download its model once for the whole job instead (model.download:
rank 0 fetches, the other nodes receive the files from it). Failures become DataError messages
naming the URI and what is wrong (SourceUnavailable for a source that did not answer).
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import re
import tempfile

from . import contract, distributed
from .config import DatasetSource, ModelSource, TrainerConfig
from .data import Problems, Row
from .datafiles import READERS, data_files, image_files
from .errors import DataError, SetupError, SourceUnavailable, TrainerError
from .storage import download_prefix, parse_location

#: Files that hold weights; skipped when only the config and tokenizer are needed.
WEIGHT_FILE = re.compile(r".*\.(safetensors|bin|pt|pth|ckpt|h5|msgpack|gguf|onnx)(\.index\.json)?$")


def work_dir(cfg: TrainerConfig) -> pathlib.Path:
    """This node's scratch directory (downloads, local checkpoint staging)."""
    root = os.environ.get("FINETUNE_WORK_DIR")
    if not root:
        root = contract.WORK_DIR if os.access(contract.WORK_DIR, os.W_OK) else tempfile.gettempdir()
    d = pathlib.Path(root) / "finetune" / cfg.job_name / f"node-{distributed.env().node_rank}"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _s3_endpoint(cfg: TrainerConfig, own: str | None) -> str | None:
    return own or cfg.output.endpoint or os.environ.get(contract.ENV_S3_ENDPOINT) or None


def fetch_model(cfg: TrainerConfig, dest: pathlib.Path, *, config_only: bool = False) -> pathlib.Path:
    """A local directory holding the model (config, tokenizer and, unless config_only, weights).

    Multi-node with model.download Once (Auto for hf://): rank 0 downloads, and the first rank of
    each other node receives the files from it over the job's network."""
    src: ModelSource = cfg.model
    uri = src.uri
    me = distributed.env()
    nodes = me.world_size // max(me.local_world_size, 1)
    if not config_only and src.downloads_once(nodes):
        try:
            path = distributed.share_from_first_node(lambda: _fetch_model_here(cfg, uri, dest, config_only), dest / "model-shared")
        except distributed.SharedFetchError as err:
            # rank 0's error with rank 0's exit code: a missing, denied or malformed model (3) or a
            # configuration error (2) is final on every rank; anything else (a source that did not
            # answer, rank 0's disk) may go better next attempt
            raise _as_trainer_error(err) from None
    elif me.is_local_main:
        path = _fetch_model_here(cfg, uri, dest, config_only)
        distributed.barrier()
    else:
        distributed.barrier()
        path = _fetch_model_here(cfg, uri, dest, config_only, download=False)
    if not (path / "config.json").is_file():
        raise DataError(f"model.uri: {uri} has no config.json (is it a Hugging Face model directory?)")
    return path


def _as_trainer_error(err: distributed.SharedFetchError) -> TrainerError:
    cls: type[TrainerError] = {contract.EXIT_DATA_ERROR: DataError, contract.EXIT_CONFIG_ERROR: SetupError}.get(err.exit_code or -1, SourceUnavailable)
    return cls(f"{err} (downloaded by rank 0)")


def _fetch_model_here(cfg: TrainerConfig, uri: str, dest: pathlib.Path, config_only: bool, download: bool = True) -> pathlib.Path:
    if uri.startswith("hf://"):
        return _fetch_hf_model(uri, dest, config_only, download)
    if uri.startswith("s3://"):
        target = dest / "model"
        if download:
            download_prefix(
                uri,
                target,
                endpoint=_s3_endpoint(cfg, cfg.model.endpoint),
                keep=(lambda rel: not WEIGHT_FILE.fullmatch(rel)) if config_only else (lambda _rel: True),
                role="MODEL",
            )
        return target
    path = pathlib.Path(parse_location(uri).path)
    if not path.is_dir():
        raise DataError(f"model.uri: {uri} -> {path} is not a directory")
    return path


def _fetch_hf_model(uri: str, dest: pathlib.Path, config_only: bool, download: bool) -> pathlib.Path:
    from huggingface_hub import snapshot_download

    repo, _, revision = uri[len("hf://") :].partition("@")
    try:
        return pathlib.Path(
            snapshot_download(
                repo_id=repo,
                revision=revision or None,
                token=os.environ.get(contract.ENV_HF_TOKEN) or None,
                cache_dir=str(dest / "hf"),
                ignore_patterns=["*.safetensors", "*.bin", "*.pt", "*.h5", "*.msgpack", "*.gguf", "*.onnx"] if config_only else None,
                local_files_only=not download,
            )
        )
    except Exception as err:  # huggingface_hub raises many types (auth, 404, offline)
        text = f"model.uri: cannot download {uri} from the Hugging Face Hub: {type(err).__name__}: {_first_line(err)}"
        raise (SourceUnavailable(text) if _transient_http_error(err) else DataError(text)) from None


def fetch_dataset(cfg: TrainerConfig, dest: pathlib.Path) -> list[pathlib.Path]:
    """Local data files (JSON Lines, Parquet, CSV) holding the dataset, in a stable order; for
    image-classification without a data file, the images of a `<label>/<file>` layout."""
    if distributed.env().is_local_main:
        files = _fetch_dataset_here(cfg, cfg.dataset, dest)
    distributed.barrier()
    if not distributed.env().is_local_main:
        files = _fetch_dataset_here(cfg, cfg.dataset, dest, download=False)
    return files


def _fetch_dataset_here(cfg: TrainerConfig, src: DatasetSource, dest: pathlib.Path, download: bool = True) -> list[pathlib.Path]:
    uri = src.uri
    target = dest / "dataset"
    if uri.startswith("s3://"):
        if download:
            download_prefix(uri, target, endpoint=_s3_endpoint(cfg, src.endpoint), role="DATASET")
        return _data_files(target, uri, src.format)
    if uri.startswith(("http://", "https://")):
        suffix = pathlib.PurePosixPath(_redact(uri)).suffix.lower()
        out = target / f"data{suffix if suffix in READERS else '.jsonl'}"
        if download:
            _http_download(uri, out)
        return [out]
    if uri.startswith("hf://datasets/"):
        out = target / "data.jsonl"
        if download:
            _hf_dataset_to_jsonl(uri, out)
        return [out]
    path = pathlib.Path(parse_location(uri).path)
    if path.is_file():
        return [path]
    if path.is_dir():
        return _data_files(path, uri, src.format)
    raise DataError(f"dataset.uri: {uri} -> {path} does not exist")


def _data_files(root: pathlib.Path, uri: str, fmt: str) -> list[pathlib.Path]:
    """The data files under a downloaded prefix or local directory (or the one file it is)."""
    if root.is_file():
        return [root]
    files = data_files(root)
    if not files and fmt == "image-classification":
        files = image_files(root)  # a <label>/<file> layout
    if not files:
        kinds = ", ".join(sorted(READERS)) + (" or images in <label>/ directories" if fmt == "image-classification" else "")
        raise DataError(f"dataset.uri: {uri} holds no data files ({kinds})")
    return files


def _http_download(uri: str, out: pathlib.Path) -> None:
    import requests

    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with requests.get(uri, stream=True, timeout=(10, 300)) as resp:
            if resp.status_code != 200:
                text = f"dataset.uri: GET {_redact(uri)} answered HTTP {resp.status_code} {resp.reason}"
                raise SourceUnavailable(text) if _transient_status(resp.status_code) else DataError(text)
            with out.open("wb") as f:
                for chunk in resp.iter_content(1 << 20):
                    f.write(chunk)
    except requests.RequestException as err:
        text = f"dataset.uri: cannot download {_redact(uri)}: {type(err).__name__}"
        raise (SourceUnavailable(text) if _transient_http_error(err) else DataError(text)) from None


def _transient_status(status: int) -> bool:
    return status in (408, 429) or status >= 500


def _transient_http_error(err: BaseException) -> bool:
    """A download failure that may pass on its own: no answer (connection refused or reset, DNS,
    a timeout) or an answer of 408/429/5xx. A 401/403/404, a missing revision or a gated repo
    are final."""
    import importlib

    import requests

    if isinstance(err, requests.ConnectionError | requests.Timeout):
        return True
    for name in ("httpx", "httpx2"):  # the Hub client's HTTP library
        try:
            http = importlib.import_module(name)
        except ImportError:
            continue
        if isinstance(err, http.TimeoutException | http.NetworkError):
            return True
    response = getattr(err, "response", None)
    status = getattr(response, "status_code", None)
    return isinstance(status, int) and _transient_status(status)


def _hf_dataset_to_jsonl(uri: str, out: pathlib.Path) -> None:
    import datasets

    name, _, revision = uri[len("hf://datasets/") :].partition("@")
    try:
        ds = datasets.load_dataset(name, revision=revision or None, split="train", token=os.environ.get(contract.ENV_HF_TOKEN) or None)
    except Exception as err:
        text = f"dataset.uri: cannot load {uri}: {type(err).__name__}: {_first_line(err)}"
        raise (SourceUnavailable(text) if _transient_http_error(err) else DataError(text)) from None
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as f:
        for row in ds:
            f.write(json.dumps(row) + "\n")


def _redact(uri: str) -> str:
    """Drop a query string (pre-signed URLs carry credentials there)."""
    return uri.split("?", 1)[0]


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else ""


def localize_images(cfg: TrainerConfig, rows: list[Row], dest: pathlib.Path) -> None:
    """Point every image row at a local file (in place; `_uri` keeps the path as written).

    A relative path is relative to the data file's directory and must stay inside it; an
    s3://bucket/key image is downloaded (local rank 0 of each node) into `dest/images/`.
    A `<label>/<file>` layout's rows already hold local paths.
    """
    problems = Problems()
    remote: dict[str, pathlib.Path] = {}
    for row in rows:
        value = str(row.data["image"])
        base = row.data.pop("_dir", None)
        row.data["_uri"] = value
        if value.startswith("s3://"):
            loc = parse_location(value)
            remote[value] = dest / "images" / loc.bucket / loc.path
            row.data["image"] = str(remote[value])
        elif base is not None:
            root = pathlib.Path(base).resolve()
            path = (root / value).resolve()
            if "://" in value or pathlib.PurePosixPath(value).is_absolute() or not path.is_relative_to(root):
                problems.add(row.named, f"image {value} must be a path relative to the data file or an s3:// URI")
            row.data["image"] = str(path)
    problems.raise_if_any("name an image outside the dataset")
    if distributed.env().is_local_main:
        endpoint = _s3_endpoint(cfg, cfg.dataset.endpoint)
        for uri, target in remote.items():
            if not target.is_file():
                with contextlib.suppress(DataError):  # reported per row by images.check_images ("does not exist")
                    download_prefix(uri, target.parent, endpoint=endpoint, role="DATASET")
    distributed.barrier()
