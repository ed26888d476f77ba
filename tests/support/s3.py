"""A real S3-compatible server for tests: moto's server as a subprocess on 127.0.0.1.

The server enforces credentials: the fixture creates an IAM user with full access, then turns
authentication on (moto's /moto-api/reset-auth), so a wrong key is rejected as on real S3.

    def test_x(s3: S3Server) -> None:
        s3.create_bucket("models")
        s3.upload_dir(local_dir, "s3://models/tiny/")
        env = s3.env()          # AWS_* variables for a subprocess
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from .ports import free_port, wait_for_port

REGION = "us-east-1"


@dataclasses.dataclass
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    process: subprocess.Popen[bytes]

    def env(self, *, wrong_secret: bool = False) -> dict[str, str]:
        """Variables a boto3 client (or the trainer) needs to reach this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": "wrong" + self.secret_key if wrong_secret else self.secret_key,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ENDPOINT_URL": self.endpoint,
        }

    def client(self, **overrides: str) -> Any:
        import boto3
        from botocore.config import Config

        creds = {"aws_access_key_id": self.access_key, "aws_secret_access_key": self.secret_key, **overrides}
        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name=REGION, config=Config(s3={"addressing_style": "path"}), **creds
        )

    def scoped_user(self, name: str, buckets: list[str]) -> tuple[str, str]:
        """A new IAM user allowed s3:* on `buckets` only (the server enforces it): its key pair."""
        import json

        import boto3

        iam = boto3.client("iam", endpoint_url=self.endpoint, region_name=REGION, aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key)
        iam.create_user(UserName=name)
        resources = [arn for b in buckets for arn in (f"arn:aws:s3:::{b}", f"arn:aws:s3:::{b}/*")]
        iam.put_user_policy(UserName=name, PolicyName="buckets", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": resources}]}))
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return str(key["AccessKeyId"]), str(key["SecretAccessKey"])

    def create_bucket(self, name: str | None = None) -> str:
        name = name or f"b-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def upload_file(self, local: pathlib.Path, uri: str) -> None:
        bucket, key = split_uri(uri)
        self.client().upload_file(str(local), bucket, key)

    def upload_dir(self, local: pathlib.Path, uri: str) -> list[str]:
        bucket, prefix = split_uri(uri)
        prefix = prefix if prefix.endswith("/") or not prefix else prefix + "/"
        keys = []
        client = self.client()
        for p in sorted(local.rglob("*")):
            if p.is_file():
                key = prefix + p.relative_to(local).as_posix()
                client.upload_file(str(p), bucket, key)
                keys.append(key)
        return keys

    def put_bytes(self, uri: str, data: bytes) -> None:
        bucket, key = split_uri(uri)
        self.client().put_object(Bucket=bucket, Key=key, Body=data)

    def get_bytes(self, uri: str) -> bytes:
        bucket, key = split_uri(uri)
        return bytes(self.client().get_object(Bucket=bucket, Key=key)["Body"].read())

    def list_keys(self, uri: str) -> list[str]:
        bucket, prefix = split_uri(uri)
        out: list[str] = []
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            out.extend(o["Key"] for o in page.get("Contents", []))
        return sorted(out)

    def download_prefix(self, uri: str, dest: pathlib.Path) -> list[pathlib.Path]:
        bucket, prefix = split_uri(uri)
        client = self.client()
        out = []
        for key in self.list_keys(uri):
            target = dest / key[len(prefix) :].lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, key, str(target))
            out.append(target)
        return out


def split_uri(uri: str) -> tuple[str, str]:
    assert uri.startswith("s3://"), uri
    bucket, _, key = uri[len("s3://") :].partition("/")
    return bucket, key


def _moto_server_command() -> list[str]:
    exe = pathlib.Path(sys.executable).parent / "moto_server"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("moto_server")
    if found:
        return [found]
    return [sys.executable, "-m", "moto.server"]


def start_s3_server(host: str = "127.0.0.1") -> S3Server:
    """Start moto's server on a free port of ``host``, create an admin IAM key, then require
    credentials. ``host``: 127.0.0.1, or an address pods reach (the real node's veth)."""
    port = free_port()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "bootstrap", "AWS_SECRET_ACCESS_KEY": "bootstrap", "AWS_DEFAULT_REGION": REGION}
    proc = subprocess.Popen(
        [*_moto_server_command(), "-H", host, "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    endpoint = f"http://{host}:{port}"
    try:
        wait_for_port(port, timeout=60, host=host)
        import boto3

        iam = boto3.client("iam", endpoint_url=endpoint, region_name=REGION, aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
        iam.create_user(UserName="finetune-tests")
        iam.put_user_policy(
            UserName="finetune-tests",
            PolicyName="all",
            PolicyDocument='{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}',
        )
        key = iam.create_access_key(UserName="finetune-tests")["AccessKey"]
        requests.post(f"{endpoint}/moto-api/reset-auth", data=b"0", timeout=10).raise_for_status()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return S3Server(endpoint, key["AccessKeyId"], key["SecretAccessKey"], proc)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """One moto server for the whole test session (state is kept in RAM; use fresh buckets)."""
    server = start_s3_server()
    try:
        yield server
    finally:
        server.process.terminate()
        try:
            server.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


@pytest.fixture
def s3(s3_server: S3Server) -> S3Server:
    """The session's S3 server (alias for tests that just need it)."""
    return s3_server
