"""Object storage and local directories behind one small interface, for `download` and `run`.

A location is an `s3://bucket/prefix/` URI (boto3, credentials and region from the usual AWS_*
environment variables, endpoint from the manifest or `AWS_ENDPOINT_URL`) or a local directory
(`/abs/path`, `file:///abs/path`). Only this module talks to object storage.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Iterator
from typing import Any, Literal
from urllib.parse import urlparse

from .errors import CommandFailed, UserError

ENDPOINT_ENV = "AWS_ENDPOINT_URL"


@dataclasses.dataclass(frozen=True)
class Location:
    """A parsed output location: `scheme` is "s3" or "file"."""

    scheme: str
    bucket: str  # "" for local directories
    prefix: str  # key prefix ending in "/" (s3) or an absolute directory path (file)

    @property
    def uri(self) -> str:
        if self.scheme == "s3":
            return f"s3://{self.bucket}/{self.prefix}"
        return self.prefix

    def child(self, relative: str) -> Location:
        """The location of `relative` (a path with "/") under this one."""
        if self.scheme == "s3":
            return Location("s3", self.bucket, self.prefix + relative)
        return Location("file", "", str(pathlib.Path(self.prefix) / relative))


def parse_location(uri: str, *, field: str = "output.uri") -> Location:
    """Parse an s3:// URI or a local directory; relative local paths are made absolute."""
    if uri.startswith("s3://"):
        parsed = urlparse(uri)
        if not parsed.netloc:
            raise UserError(f"{field}: {uri!r} has no bucket name (expected s3://bucket/prefix/)")
        prefix = parsed.path.lstrip("/")
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        return Location("s3", parsed.netloc, prefix)
    if uri.startswith("file://"):
        return Location("file", "", str(pathlib.Path(urlparse(uri).path).resolve()))
    if "://" in uri:
        scheme = uri.split("://", 1)[0]
        raise UserError(f"{field}: scheme {scheme}:// is not supported here (use s3:// or a local directory)")
    return Location("file", "", str(pathlib.Path(uri).expanduser().resolve()))


class Storage:
    """Reads files below a Location (S3 or local)."""

    def __init__(self, location: Location, endpoint: str | None = None) -> None:
        self.location = location
        self.endpoint = endpoint or os.environ.get(ENDPOINT_ENV) or None
        self._client: Any = None

    def _s3(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config

            self._client = boto3.client(
                "s3",
                endpoint_url=self.endpoint,
                config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3}),
            )
        return self._client

    def read_bytes(self, relative: str) -> bytes:
        """The content of `relative` below the location; a clear error when it is missing."""
        loc = self.location.child(relative)
        if loc.scheme == "file":
            try:
                return pathlib.Path(loc.prefix).read_bytes()
            except FileNotFoundError:
                raise CommandFailed(f"{loc.uri} does not exist") from None
        with _s3_errors(loc):
            body = self._s3().get_object(Bucket=loc.bucket, Key=loc.prefix)["Body"]
            data: bytes = body.read()
            return data

    def exists(self, relative: str) -> bool:
        loc = self.location.child(relative)
        if loc.scheme == "file":
            return pathlib.Path(loc.prefix).exists()
        from botocore.exceptions import ClientError

        try:
            with _s3_errors(loc, missing_ok=True):
                self._s3().head_object(Bucket=loc.bucket, Key=loc.prefix)
        except _Missing:
            return False
        except ClientError:
            return False
        return True

    def download(self, relative: str, dest: pathlib.Path) -> None:
        """Copy `relative` below the location to the local file `dest` (parents created)."""
        loc = self.location.child(relative)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if loc.scheme == "file":
            try:
                dest.write_bytes(pathlib.Path(loc.prefix).read_bytes())
            except FileNotFoundError:
                raise CommandFailed(f"{loc.uri} does not exist") from None
            return
        from boto3.s3.transfer import TransferConfig

        with _s3_errors(loc):
            self._s3().download_file(
                loc.bucket, loc.prefix, str(dest),
                Config=TransferConfig(multipart_chunksize=16 * 1024 * 1024, max_concurrency=8),
            )

    def list(self, relative: str = "") -> Iterator[str]:
        """Paths (relative to the location) of every file under `relative`."""
        loc = self.location.child(relative)
        if loc.scheme == "file":
            root = pathlib.Path(self.location.prefix)
            base = pathlib.Path(loc.prefix)
            if base.is_dir():
                for p in sorted(base.rglob("*")):
                    if p.is_file():
                        yield p.relative_to(root).as_posix()
            return
        with _s3_errors(loc):
            pages = self._s3().get_paginator("list_objects_v2").paginate(
                Bucket=loc.bucket, Prefix=loc.prefix
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    yield str(obj["Key"])[len(self.location.prefix):]


class _Missing(Exception):
    pass


class _s3_errors:
    """Turn botocore errors into one-line messages naming the object."""

    def __init__(self, loc: Location, *, missing_ok: bool = False) -> None:
        self.loc = loc
        self.missing_ok = missing_ok

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> Literal[False]:
        if exc is None:
            return False
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        if isinstance(exc, NoCredentialsError):
            raise UserError(
                f"no object storage credentials for {self.loc.uri}: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (or an AWS profile)"
            ) from None
        if isinstance(exc, ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchKey", "NotFound"):
                if self.missing_ok:
                    raise _Missing() from None
                raise CommandFailed(f"{self.loc.uri} does not exist") from None
            if code == "NoSuchBucket":
                raise CommandFailed(f"bucket {self.loc.bucket!r} does not exist ({self.loc.uri})") from None
            if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                raise CommandFailed(
                    f"access to {self.loc.uri} denied ({code}): check AWS_ACCESS_KEY_ID / "
                    "AWS_SECRET_ACCESS_KEY"
                ) from None
            raise CommandFailed(f"{self.loc.uri}: {code or exc}") from None
        if isinstance(exc, BotoCoreError):
            raise CommandFailed(f"object storage unreachable for {self.loc.uri}: {exc}") from None
        return False
