"""The command line: config errors name every bad field; `validate` reports on model and data."""

from __future__ import annotations

import json
import pathlib

import pytest
from finetune_trainer import contract

from tests.support.s3 import S3Server

from .helpers import chat_rows, run_trainer, summary_of, trainer_env, write_config, write_jsonl


def test_bad_config_lists_every_problem_and_exits_2(tmp_path: pathlib.Path) -> None:
    cfg = write_config(tmp_path / "bad.json", {
        "model": {"uri": "ftp://nope"},
        "dataset": {"uri": "/data.jsonl", "format": "csv"},
        "hyperparameters": {"learningRate": -1},
        "output": {"uri": "s3://bucket/x"},
    })
    proc = run_trainer(["train", "--config", str(cfg)], trainer_env({"FINETUNE_TERMINATION_MESSAGE_PATH": str(tmp_path / "t")}))
    assert proc.returncode == contract.EXIT_CONFIG_ERROR
    summary = summary_of(proc)
    for field in ("model.uri", "dataset.format", "hyperparameters.learningRate"):
        assert field in summary["message"]
    assert json.loads((tmp_path / "t").read_text())["reason"] == "InvalidConfig"
    assert "Traceback" not in proc.stderr


def test_config_path_from_contract_env_and_qlora_needs_a_gpu(tiny_llama: pathlib.Path, tmp_path: pathlib.Path) -> None:
    data = write_jsonl(tmp_path / "chat.jsonl", chat_rows(8))
    cfg = write_config(tmp_path / "q.json", {
        "model": {"uri": str(tiny_llama)}, "dataset": {"uri": str(data), "format": "chat"},
        "method": {"type": "qlora"}, "hyperparameters": {"maxSteps": 1, "maxSeqLength": 32},
        "output": {"uri": str(tmp_path / "out")},
    })
    proc = run_trainer(["train"], trainer_env({contract.ENV_CONFIG_PATH: str(cfg), "FINETUNE_WORK_DIR": str(tmp_path / "w")}))
    assert proc.returncode == contract.EXIT_CONFIG_ERROR
    assert "qlora needs a CUDA GPU" in summary_of(proc)["message"]


@pytest.mark.slow
def test_validate_reports_rows_tokens_and_long_rows_from_s3(s3: S3Server, tiny_llama: pathlib.Path, tmp_path: pathlib.Path) -> None:
    bucket = s3.create_bucket()
    s3.upload_dir(tiny_llama, f"s3://{bucket}/m/")
    rows = chat_rows(20)
    rows[3]["messages"][2]["content"] = "very long answer " * 40
    s3.put_bytes(f"s3://{bucket}/d/part-1.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())
    s3.put_bytes(f"s3://{bucket}/d/part-2.jsonl", "".join(json.dumps(r) + "\n" for r in chat_rows(5, seed=1)).encode())
    cfg = write_config(tmp_path / "v.json", {
        "model": {"uri": f"s3://{bucket}/m"}, "dataset": {"uri": f"s3://{bucket}/d/", "format": "chat", "validationSplit": 0.2},
        "hyperparameters": {"maxSeqLength": 48}, "output": {"uri": f"s3://{bucket}/out"},
    })
    env = trainer_env({**s3.env(), "FINETUNE_WORK_DIR": str(tmp_path / "w")})
    proc = run_trainer(["validate", "--config", str(cfg)], env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = summary_of(proc)
    ds = summary["dataset"]
    assert summary["status"] == "Valid" and ds["files"] == 2 and ds["rows"] == 25
    assert ds["rowsLongerThanMaxSeqLength"] == 1 and "part-1.jsonl:4" in ds["longerRowsSample"][0]
    assert ds["maxTokens"] > 48 and ds["minTokens"] > 0 and ds["trainRows"] + ds["validationRows"] == 25
    assert summary["model"]["modelType"] == "llama" and summary["model"]["vocabSize"] == 30522
    assert not list((tmp_path / "w").rglob("*.safetensors"))  # config only: weights never downloaded

    # one broken row: exit 3 and its line number
    s3.put_bytes(f"s3://{bucket}/d/part-2.jsonl", b'{"messages": []}\n')
    proc = run_trainer(["validate", "--config", str(cfg)], env)
    assert proc.returncode == contract.EXIT_DATA_ERROR
    assert "line 1 of part-2.jsonl: field 'messages' must be a non-empty list" in summary_of(proc)["message"]


def test_launcher_passes_contract_exit_codes_through_torchrun(tmp_path: pathlib.Path) -> None:
    """Plain torchrun exits 1 for any worker failure; finetune_trainer.launch keeps the code."""
    import subprocess
    import sys

    from .helpers import CACHE_ROOT

    cfg = write_config(tmp_path / "bad.json", {"model": {"uri": "ftp://x"}})
    env = trainer_env({"FINETUNE_TERMINATION_MESSAGE_PATH": str(tmp_path / "t")}, threads=1)
    cmd = ["--standalone", "--nproc-per-node", "1", "-m", "finetune_trainer", "train", "--config", str(cfg)]
    plain = subprocess.run([sys.executable, "-m", "torch.distributed.run", *cmd], env=env, capture_output=True, timeout=300, cwd=str(CACHE_ROOT))
    wrapped = subprocess.run([sys.executable, "-m", "finetune_trainer.launch", *cmd], env=env, capture_output=True, timeout=300, cwd=str(CACHE_ROOT))
    assert plain.returncode == 1
    assert wrapped.returncode == contract.EXIT_CONFIG_ERROR
    assert json.loads((tmp_path / "t").read_text())["exitCode"] == contract.EXIT_CONFIG_ERROR


@pytest.mark.parametrize("message", ["x" * 6000, 'bad "row" \\ é\n' * 700, "\u00e9\u4e2d" * 3000], ids=["ascii", "escapes", "non-ascii"])
def test_long_error_message_keeps_termination_json_valid_with_exit_code(tmp_path: pathlib.Path, message: str) -> None:
    """Kubernetes keeps 4096 bytes of the message; a cut JSON document would lose the exit code."""
    from finetune_trainer.__main__ import TERMINATION_MESSAGE_LIMIT, write_termination_message
    from finetune_trainer.launch import recorded_exit_code

    assert len(message) > 5000
    target = tmp_path / "termination-log"
    summary = {"status": "Failed", "reason": "DataError", "message": message, "exitCode": contract.EXIT_DATA_ERROR, "extra": "y" * 3000}
    write_termination_message(summary, str(target))
    raw = target.read_bytes()
    assert len(raw) <= TERMINATION_MESSAGE_LIMIT
    doc = json.loads(raw)
    assert doc["status"] == "Failed" and doc["reason"] == "DataError" and "extra" not in doc
    assert doc["message"].endswith("[truncated]") and message.startswith(doc["message"][: -len(" ... [truncated]")])
    assert len(doc["message"]) > 500  # shortened, not dropped
    assert recorded_exit_code(str(target)) == contract.EXIT_DATA_ERROR


def test_short_termination_message_is_written_whole(tmp_path: pathlib.Path) -> None:
    from finetune_trainer.__main__ import write_termination_message

    summary = {"status": "Succeeded", "exitCode": 0, "steps": 3, "history": [{"step": 1}]}
    write_termination_message(summary, str(tmp_path / "t"))
    assert json.loads((tmp_path / "t").read_text()) == summary


def test_validate_checks_the_output_can_be_written(s3: S3Server, tiny_llama: pathlib.Path, tmp_path: pathlib.Path) -> None:
    """A typo in the output bucket, or credentials the server rejects, fail validation with exit 2
    (final: no GPU is requested and nothing is retried); a writable output leaves no probe behind."""
    data = write_jsonl(tmp_path / "chat.jsonl", chat_rows(8))
    bucket = s3.create_bucket()

    def validate(output: str, **env_over: str) -> tuple[int, dict[str, object]]:
        cfg = write_config(tmp_path / "v.json", {
            "model": {"uri": str(tiny_llama)}, "dataset": {"uri": str(data), "format": "chat"},
            "hyperparameters": {"maxSeqLength": 32}, "output": {"uri": output},
        })
        env = trainer_env({**s3.env(), **env_over, "FINETUNE_WORK_DIR": str(tmp_path / "w")})
        proc = run_trainer(["validate", "--config", str(cfg)], env)
        return proc.returncode, summary_of(proc)

    rc, summary = validate(f"s3://{bucket}/runs/one/")
    assert rc == 0 and summary["output"] == {"uri": f"s3://{bucket}/runs/one/", "writable": True}, summary
    assert s3.client().list_objects_v2(Bucket=bucket).get("KeyCount") == 0, "the probe was left behind"

    rc, summary = validate(f"s3://{bucket}-typo/runs/one/")
    assert rc == contract.EXIT_CONFIG_ERROR and summary["reason"] == "OutputNotWritable", summary
    assert summary["message"] == f"output.uri: cannot write s3://{bucket}-typo/runs/one/.write-probe: bucket does not exist"

    rc, summary = validate(f"s3://{bucket}/runs/one/", AWS_SECRET_ACCESS_KEY="wrong" + s3.secret_key)
    assert rc == contract.EXIT_CONFIG_ERROR and "the S3 credentials were rejected" in str(summary["message"]), summary
    assert s3.secret_key not in str(summary)

    rc, summary = validate(f"s3://{bucket}/runs/one/", AWS_ENDPOINT_URL="http://127.0.0.1:9")
    assert rc == contract.EXIT_TRAINING_ERROR and "S3 endpoint unreachable" in str(summary["message"]), summary  # may pass on a retry


def test_a_source_that_does_not_answer_is_retryable_and_a_missing_one_final(tiny_llama: pathlib.Path, tmp_path: pathlib.Path) -> None:
    """The dataset's HTTP server answers 503 (or nothing at all): exit 4, SourceUnavailable (the
    operator runs validation again, a training attempt is restarted); 404: exit 3, final."""
    import http.server
    import threading

    answers = {"/busy.jsonl": 503, "/gone.jsonl": 404}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(answers.get(self.path, 404))
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"

    def validate(dataset: str) -> tuple[int, dict[str, object]]:
        cfg = write_config(tmp_path / "v.json", {
            "model": {"uri": str(tiny_llama)}, "dataset": {"uri": dataset, "format": "chat"},
            "hyperparameters": {"maxSeqLength": 32}, "output": {"uri": str(tmp_path / "out")},
        })
        proc = run_trainer(["validate", "--config", str(cfg)], trainer_env({"FINETUNE_WORK_DIR": str(tmp_path / "w")}))
        return proc.returncode, summary_of(proc)

    try:
        rc, summary = validate(f"{base}/busy.jsonl")
        assert rc == contract.EXIT_TRAINING_ERROR and summary["reason"] == "SourceUnavailable", summary
        assert "answered HTTP 503" in str(summary["message"])
        rc, summary = validate(f"{base}/gone.jsonl")
        assert rc == contract.EXIT_DATA_ERROR and summary["reason"] == "DataError" and "answered HTTP 404" in str(summary["message"]), summary
    finally:
        server.shutdown()
        server.server_close()
    rc, summary = validate(f"{base}/busy.jsonl")  # nobody listens any more: connection refused
    assert rc == contract.EXIT_TRAINING_ERROR and summary["reason"] == "SourceUnavailable", summary


def test_model_and_output_in_two_accounts_each_use_their_own_credentials(s3: S3Server, tiny_llama: pathlib.Path, tmp_path: pathlib.Path) -> None:
    """The model's bucket is readable only by one user, the output's writable only by another
    (the S3 server enforces both policies). With each source's own credentials (the variables
    the operator sets from each secretRef) validation reads the one and writes the other; with one
    credential set for everything (AWS_* from the output's Secret) the model read is denied."""
    import uuid

    models, outputs = s3.create_bucket(), s3.create_bucket()
    s3.upload_dir(tiny_llama, f"s3://{models}/m/")
    reader = s3.scoped_user(f"reader-{uuid.uuid4().hex[:6]}", [models])
    writer = s3.scoped_user(f"writer-{uuid.uuid4().hex[:6]}", [outputs])
    data = write_jsonl(tmp_path / "chat.jsonl", chat_rows(8))
    cfg = write_config(tmp_path / "v.json", {
        "model": {"uri": f"s3://{models}/m"}, "dataset": {"uri": str(data), "format": "chat"},
        "hyperparameters": {"maxSeqLength": 32}, "output": {"uri": f"s3://{outputs}/run/"},
    })
    default = {**s3.env(), "AWS_ACCESS_KEY_ID": writer[0], "AWS_SECRET_ACCESS_KEY": writer[1], "FINETUNE_WORK_DIR": str(tmp_path / "w")}
    own = {
        contract.role_env("MODEL", contract.ENV_AWS_ACCESS_KEY_ID): reader[0],
        contract.role_env("MODEL", contract.ENV_AWS_SECRET_ACCESS_KEY): reader[1],
        contract.role_env("OUTPUT", contract.ENV_AWS_ACCESS_KEY_ID): writer[0],
        contract.role_env("OUTPUT", contract.ENV_AWS_SECRET_ACCESS_KEY): writer[1],
    }
    proc = run_trainer(["validate", "--config", str(cfg)], trainer_env({**default, **own}))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert summary_of(proc)["output"] == {"uri": f"s3://{outputs}/run/", "writable": True}
    proc = run_trainer(["validate", "--config", str(cfg)], trainer_env(default))
    assert proc.returncode == contract.EXIT_DATA_ERROR and "access denied" in summary_of(proc)["message"], summary_of(proc)
