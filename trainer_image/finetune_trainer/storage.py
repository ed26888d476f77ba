"""Object storage and local directories: the only module that talks to S3.

Locations are `s3://bucket/prefix`, `pvc://claim/path` (the claim mounted under
contract.PVC_MOUNT_ROOT), `file:///abs/path` or a plain local path. S3 transfers use boto3's
transfer manager (many objects and multipart parts at once) and path-style addressing, which
works with AWS, MinIO, Ceph and moto. The endpoint comes from the config, else AWS_ENDPOINT_URL.
Every failure becomes a readable DataError/StorageError naming the URI; credentials never
appear in messages.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import shutil
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlparse

from . import contract
from .errors import DataError, OutputError, SourceUnavailable, StorageError, TrainerError

#: Multipart size: 64 MiB parts were ~6x faster than 8 MiB ones against S3-compatible servers.
PART_SIZE = 64 * 1024 * 1024
MAX_CONCURRENCY = 8


@dataclasses.dataclass(frozen=True)
class Location:
    """A parsed location: scheme "s3" (bucket + key prefix) or "file" (absolute directory/file)."""

    scheme: str
    bucket: str
    path: str  # s3: key or key prefix (no leading "/"); file: absolute path

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.path}" if self.scheme == "s3" else self.path

    def child(self, relative: str) -> Location:
        relative = relative.lstrip("/")
        if self.scheme == "s3":
            base = self.path if (not self.path or self.path.endswith("/")) else self.path + "/"
            return Location("s3", self.bucket, base + relative)
        return Location("file", "", str(pathlib.Path(self.path) / relative))


def parse_location(uri: str) -> Location:
    """s3://, pvc://, file:// or a local path -> Location."""
    if uri.startswith("s3://"):
        parsed = urlparse(uri)
        return Location("s3", parsed.netloc, parsed.path.lstrip("/"))
    if uri.startswith("pvc://"):
        rest = uri[len("pvc://") :]
        return Location("file", "", str(pathlib.Path(pvc_root()) / rest))
    if uri.startswith("file://"):
        return Location("file", "", str(pathlib.Path(urlparse(uri).path)))
    return Location("file", "", str(pathlib.Path(uri).expanduser().resolve()))


def pvc_root() -> str:
    """Where PersistentVolumeClaims are mounted (overridable for local runs and tests)."""
    return os.environ.get("FINETUNE_PVC_ROOT", contract.PVC_MOUNT_ROOT)


def s3_client(endpoint: str | None, role: str | None = None) -> Any:
    """A client for one source: with `role` (MODEL, DATASET, OUTPUT) and that source's own
    credentials in the environment (contract.role_env), those; else the default chain (AWS_*,
    a web identity, the instance profile)."""
    import boto3
    from botocore.config import Config

    creds: dict[str, str] = {}
    if role is not None:
        key = os.environ.get(contract.role_env(role, contract.ENV_AWS_ACCESS_KEY_ID))
        secret = os.environ.get(contract.role_env(role, contract.ENV_AWS_SECRET_ACCESS_KEY))
        if key and secret:
            creds = {"aws_access_key_id": key, "aws_secret_access_key": secret}
            token = os.environ.get(contract.role_env(role, contract.ENV_AWS_SESSION_TOKEN))
            if token:
                creds["aws_session_token"] = token
    return boto3.client(
        "s3",
        endpoint_url=endpoint or os.environ.get(contract.ENV_S3_ENDPOINT) or None,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 5, "mode": "standard"}),
        **creds,
    )


def _transfer_config() -> Any:
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(
        multipart_threshold=PART_SIZE,
        multipart_chunksize=PART_SIZE,
        max_concurrency=MAX_CONCURRENCY,
        use_threads=True,
    )


def explain_s3_error(err: Exception, uri: str, action: str) -> str:
    """A one-line explanation of a boto3 failure that names the URI and never a secret."""
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    if isinstance(err, NoCredentialsError):
        return f"cannot {action} {uri}: no S3 credentials (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY through the secretRef)"
    if isinstance(err, EndpointConnectionError):
        return f"cannot {action} {uri}: S3 endpoint unreachable ({err})"
    if isinstance(err, ClientError):
        code = str(err.response.get("Error", {}).get("Code", "?"))
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidClientTokenId", "AuthFailure"):
            return f"cannot {action} {uri}: the S3 credentials were rejected ({code}); check the access key and secret in the secretRef"
        if code in ("AccessDenied", "403") or status == 403:
            return f"cannot {action} {uri}: access denied ({code}); the credentials lack permission"
        if code in ("NoSuchBucket",):
            return f"cannot {action} {uri}: bucket does not exist"
        if code in ("NoSuchKey", "404", "NotFound") or status == 404:
            return f"cannot {action} {uri}: object not found"
        return f"cannot {action} {uri}: {code} (HTTP {status})"
    return f"cannot {action} {uri}: {type(err).__name__}: {err}"


#: S3 answers that say the output is misconfigured: the same request fails again whenever it is made.
_MISCONFIGURED_CODES = frozenset({
    "NoSuchBucket", "InvalidBucketName", "AccessDenied", "AllAccessDisabled", "InvalidAccessKeyId",
    "SignatureDoesNotMatch", "InvalidClientTokenId", "AuthFailure", "AccountProblem", "403",
})


def _misconfigured(err: Exception) -> bool:
    from botocore.exceptions import ClientError, NoCredentialsError, PartialCredentialsError

    if isinstance(err, NoCredentialsError | PartialCredentialsError):
        return True
    if isinstance(err, ClientError):
        code = str(err.response.get("Error", {}).get("Code", ""))
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return code in _MISCONFIGURED_CODES or status == 403
    return False


def _is_boto_error(err: Exception) -> bool:
    from botocore.exceptions import BotoCoreError, ClientError

    return isinstance(err, BotoCoreError | ClientError)


def sha256_file(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclasses.dataclass(frozen=True)
class FileEntry:
    path: str  # relative, "/"-separated
    sha256: str
    size: int


def describe_files(root: pathlib.Path, prefix: str = "") -> list[FileEntry]:
    """sha256 and size of every file below `root`, paths relative to it (plus `prefix`)."""
    out = []
    for p in sorted(root.rglob("*")):
        if p.is_file():
            rel = prefix + p.relative_to(root).as_posix()
            out.append(FileEntry(rel, sha256_file(p), p.stat().st_size))
    return out


# --- reading inputs (model and dataset) -------------------------------------------------------


def download_prefix(
    uri: str,
    dest: pathlib.Path,
    *,
    endpoint: str | None,
    keep: Callable[[str], bool] = lambda _key: True,
    role: str | None = None,
) -> list[pathlib.Path]:
    """Download every object under an s3:// prefix (or one object) into `dest`, concurrently
    (with the credentials of source `role`, see s3_client)."""
    loc = parse_location(uri)
    client = s3_client(endpoint, role)
    prefix = loc.path
    try:
        keys = _list_keys(client, loc.bucket, prefix)
        if not keys:
            raise DataError(f"cannot read {uri}: no objects under this prefix")
        if prefix in keys and len(keys) == 1:  # a single object
            rel = {prefix: pathlib.PurePosixPath(prefix).name}
        else:
            base = prefix if prefix.endswith("/") or not prefix else prefix + "/"
            rel = {k: k[len(base) :] for k in keys if k.startswith(base) and not k.endswith("/")}
        rel = {k: r for k, r in rel.items() if keep(r)}
        targets = []
        from boto3.s3.transfer import create_transfer_manager

        with create_transfer_manager(client, _transfer_config()) as manager:
            futures = []
            for key, r in rel.items():
                target = dest / r
                target.parent.mkdir(parents=True, exist_ok=True)
                futures.append(manager.download(loc.bucket, key, str(target)))
                targets.append(target)
            for f in futures:
                f.result()
        return targets
    except TrainerError:
        raise
    except Exception as err:
        if _is_boto_error(err):
            text = explain_s3_error(err, uri, "read")
            raise (SourceUnavailable(text) if transient_s3_error(err) else DataError(text)) from None
        raise


def transient_s3_error(err: Exception) -> bool:
    """An S3 failure that may pass on its own: the endpoint did not answer, or said 5xx/SlowDown."""
    from botocore.exceptions import (
        ClientError,
        ConnectionError,
        ConnectTimeoutError,
        EndpointConnectionError,
        ReadTimeoutError,
    )

    if isinstance(err, EndpointConnectionError | ConnectionError | ConnectTimeoutError | ReadTimeoutError):
        return True
    if isinstance(err, ClientError):
        code = str(err.response.get("Error", {}).get("Code", ""))
        status = int(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        return status == 429 or status >= 500 or code in ("SlowDown", "RequestTimeout", "ServiceUnavailable", "InternalError")
    return False


def _list_keys(client: Any, bucket: str, prefix: str) -> list[str]:
    keys: list[str] = []
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        keys.extend(obj["Key"] for obj in page.get("Contents", []))
    # "data/train.jsonl" as a prefix also matches "data/train.jsonl.bak": prefer the exact key.
    if prefix in keys:
        return [prefix]
    return keys


# --- the job's output location --------------------------------------------------------------


class Output:
    """The job's output location (S3 or a directory): checkpoints, adapter, manifest."""

    def __init__(self, uri: str, endpoint: str | None = None) -> None:
        self.location = parse_location(uri)
        self.endpoint = endpoint
        self._client: Any = None

    @property
    def uri(self) -> str:
        return self.location.uri

    def _s3(self) -> Any:
        if self._client is None:
            self._client = s3_client(self.endpoint, "OUTPUT")
        return self._client

    def _key(self, rel: str) -> str:
        return self.location.child(rel).path

    def _fail(self, err: Exception, rel: str, action: str) -> TrainerError:
        return StorageError(explain_s3_error(err, self.location.child(rel).uri, action))

    def check_writable(self) -> None:
        """Fail early (validation, and before training) when the output cannot be written: a
        misconfiguration (no such bucket, access denied, credentials rejected or missing, a path
        that cannot be written) raises OutputError, final; anything else (an unreachable
        endpoint, a 5xx) StorageError, which a retry may cure."""
        probe = ".write-probe"
        uri = self.location.child(probe).uri
        if self.location.scheme == "file":
            try:
                self.write_bytes(probe, b"ok")
                self.delete(probe)
            except OSError as err:
                raise OutputError(f"output.uri: cannot write {uri}: {err.strerror or err}") from None
            return
        client = self._s3()
        for action in ("write", "delete"):
            try:
                if action == "write":
                    client.put_object(Bucket=self.location.bucket, Key=self._key(probe), Body=b"ok")
                else:
                    client.delete_object(Bucket=self.location.bucket, Key=self._key(probe))
            except Exception as err:
                if not _is_boto_error(err):
                    raise
                text = "output.uri: " + explain_s3_error(err, uri, action)
                raise (OutputError(text) if _misconfigured(err) else StorageError(text)) from None

    def upload_files(self, files: Iterable[tuple[pathlib.Path, str]]) -> None:
        """Upload (local file, relative path) pairs, concurrently on S3."""
        files = list(files)
        if self.location.scheme == "file":
            for local, rel in files:
                target = pathlib.Path(self.location.child(rel).path)
                target.parent.mkdir(parents=True, exist_ok=True)
                if local.resolve() != target.resolve():
                    shutil.copyfile(local, target)
            return
        from boto3.s3.transfer import create_transfer_manager

        try:
            with create_transfer_manager(self._s3(), _transfer_config()) as manager:
                futures = [manager.upload(str(local), self.location.bucket, self._key(rel)) for local, rel in files]
                for f in futures:
                    f.result()
        except Exception as err:
            if _is_boto_error(err):
                raise self._fail(err, files[0][1] if files else "", "write") from None
            raise

    def upload_dir(self, local_dir: pathlib.Path, rel_prefix: str) -> list[FileEntry]:
        """Upload a directory tree under `rel_prefix`; returns what was uploaded (for a manifest)."""
        entries = describe_files(local_dir, rel_prefix)
        self.upload_files((local_dir / e.path[len(rel_prefix) :], e.path) for e in entries)
        return entries

    def write_bytes(self, rel: str, data: bytes) -> None:
        if self.location.scheme == "file":
            target = pathlib.Path(self.location.child(rel).path)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, target)  # readers never see half a manifest
            return
        try:
            self._s3().put_object(Bucket=self.location.bucket, Key=self._key(rel), Body=data)
        except Exception as err:
            if _is_boto_error(err):
                raise self._fail(err, rel, "write") from None
            raise

    def read_bytes(self, rel: str) -> bytes | None:
        """The object's bytes, or None when it does not exist."""
        if self.location.scheme == "file":
            p = pathlib.Path(self.location.child(rel).path)
            return p.read_bytes() if p.is_file() else None
        from botocore.exceptions import ClientError

        try:
            resp = self._s3().get_object(Bucket=self.location.bucket, Key=self._key(rel))
            return bytes(resp["Body"].read())
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise self._fail(err, rel, "read") from None
        except Exception as err:
            if _is_boto_error(err):
                raise self._fail(err, rel, "read") from None
            raise

    def list_subdirs(self, rel_prefix: str) -> list[str]:
        """Names of the immediate "directories" below `rel_prefix`."""
        if self.location.scheme == "file":
            p = pathlib.Path(self.location.child(rel_prefix).path)
            return sorted(c.name for c in p.iterdir() if c.is_dir()) if p.is_dir() else []
        prefix = self._key(rel_prefix)
        names: list[str] = []
        try:
            paginator = self._s3().get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.location.bucket, Prefix=prefix, Delimiter="/"):
                names.extend(cp["Prefix"][len(prefix) :].rstrip("/") for cp in page.get("CommonPrefixes", []))
        except Exception as err:
            if _is_boto_error(err):
                raise self._fail(err, rel_prefix, "list") from None
            raise
        return sorted(names)

    def download_dir(self, rel_prefix: str, dest: pathlib.Path) -> None:
        if self.location.scheme == "file":
            src = pathlib.Path(self.location.child(rel_prefix).path)
            shutil.copytree(src, dest, dirs_exist_ok=True)
            return
        try:
            download_prefix(self.location.child(rel_prefix).uri, dest, endpoint=self.endpoint, role="OUTPUT")
        except DataError as err:
            raise StorageError(str(err)) from None

    def delete(self, rel: str) -> None:
        if self.location.scheme == "file":
            pathlib.Path(self.location.child(rel).path).unlink(missing_ok=True)
            return
        try:
            self._s3().delete_object(Bucket=self.location.bucket, Key=self._key(rel))
        except Exception as err:
            if _is_boto_error(err):
                raise self._fail(err, rel, "delete") from None
            raise

    def delete_prefix(self, rel_prefix: str) -> None:
        if self.location.scheme == "file":
            shutil.rmtree(self.location.child(rel_prefix).path, ignore_errors=True)
            return
        client = self._s3()
        try:
            keys = _list_keys(client, self.location.bucket, self._key(rel_prefix))
            for i in range(0, len(keys), 1000):
                client.delete_objects(
                    Bucket=self.location.bucket,
                    Delete={"Objects": [{"Key": k} for k in keys[i : i + 1000]], "Quiet": True},
                )
        except Exception as err:
            if _is_boto_error(err):
                raise self._fail(err, rel_prefix, "delete") from None
            raise
