"""LoRA throughput and MFU on one GPU: our training loop vs HF Trainer + peft, same model and data.

    bench/gpu_lora.sh                                   (an 8B-shaped Llama on the GPU, bf16)
    .venv/bin/python bench/gpu_lora.py --shape tiny --device cpu --steps 4   (the code path on CPU)

No weights can be downloaded, so the model is a Llama with the Llama-3-8B shape (hidden 4096,
32 layers, 32 heads, 8 KV heads, MLP 14336, vocabulary 128256) and random bf16 weights; the
data are random token documents of random length. Both sides train the same LoRA (r 16, alpha
32, dropout 0, every linear layer) on the same documents, padding-free: ours packs whole
documents into blocks with per-document position_ids (finetune_trainer.data.pack + train_step);
HF Trainer uses `DataCollatorWithFlattening` (its padding-free collator), with as many documents
per step as fill the same number of tokens. Each side runs `--warmup` untimed steps, then
`--steps` timed steps; best of `--repeats` runs per side, interleaved.

MFU counts model FLOPs per trained token for LoRA: forward 2N and backward through the frozen
weights 2N (no weight gradients), plus 6 x (LoRA parameters), plus attention 12 x layers x hidden
x (mean causal context of a token in its document); divided by the GPU's dense bf16 peak.
"""

from __future__ import annotations

import argparse
import os
import random
import time
from typing import Any

import torch

SHAPES = {
    "8b": {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256},
    "1b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256},
    "tiny": {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1024},
}
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "H800": 989e12, "A100": 312e12, "L40S": 362e12, "B200": 2250e12}


def build_model(shape: str, device: str, dtype: torch.dtype) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**SHAPES[shape], max_position_embeddings=8192, rope_theta=500000.0, tie_word_embeddings=False, use_cache=False)
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


def lora_config() -> Any:
    from peft import LoraConfig, TaskType

    return LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type=TaskType.CAUSAL_LM)


def documents(n: int, vocab: int, min_len: int, max_len: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[1, *(rng.randrange(2, vocab) for _ in range(rng.randint(min_len, max_len) - 1))] for _ in range(n)]


def model_flops_per_token(model: Any, docs: list[list[int]]) -> float:
    cfg = model.config
    lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    base = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n and "embed_tokens" not in n)
    tokens = sum(len(d) for d in docs)
    mean_context = sum(len(d) * (len(d) + 1) / 2 for d in docs) / tokens
    return 4 * base + 6 * lora + 12 * cfg.num_hidden_layers * cfg.hidden_size * mean_context


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def run_ours(base: Any, docs: list[list[int]], args: argparse.Namespace, dtype: torch.dtype) -> dict[str, float]:
    from finetune_trainer import distributed
    from finetune_trainer.config import parse_config
    from finetune_trainer.data import IGNORE_INDEX, Batches, Example, Position, pack
    from finetune_trainer.engine import TorchEngine
    from finetune_trainer.train import train_step
    from peft import get_peft_model

    model = get_peft_model(base, lora_config())
    precision = {torch.bfloat16: "bf16", torch.float32: "fp32"}[dtype]
    cfg = parse_config({"model": {"uri": "/m"}, "dataset": {"uri": "/d"}, "output": {"uri": "/o"},
                        "hyperparameters": {"batchSize": args.batch, "maxSeqLength": args.seq, "precision": precision, "learningRate": 1e-4}})
    env = distributed.read_env()
    engine = TorchEngine(cfg, model, env, total_steps=args.warmup + args.steps, dtype=dtype)
    blocks = pack([Example(d, [IGNORE_INDEX, *d[1:]]) for d in docs], args.seq)
    batches = Batches(blocks, args.batch, 0, 1, seed=0, pad_id=0).iterate(Position(0, 0))
    model.train()
    tokens = 0
    started = 0.0
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            sync(args.device)
            started = time.perf_counter()
        result = train_step(engine, [next(batches)[1]], env)
        if step >= args.warmup:
            tokens += result.tokens
    sync(args.device)
    elapsed = time.perf_counter() - started
    base_again = model.unload()
    assert base_again is base
    return {"tokens_per_second": tokens / elapsed, "peak_gb": _peak_gb(args.device)}


def run_hf(base: Any, docs: list[list[int]], args: argparse.Namespace, dtype: torch.dtype) -> dict[str, float]:
    from peft import get_peft_model
    from transformers import DataCollatorWithFlattening, Trainer, TrainerCallback, TrainingArguments

    model = get_peft_model(base, lora_config())
    mean_len = sum(len(d) for d in docs) / len(docs)
    per_step = max(1, round(args.batch * args.seq / mean_len))  # documents that fill the same tokens as ours
    counted = {"tokens": 0, "started": 0.0}

    class CountingTrainer(Trainer):  # type: ignore[misc]
        def training_step(self, model: Any, inputs: dict[str, Any], *a: Any, **kw: Any) -> Any:
            if self.state.global_step >= args.warmup:
                counted["tokens"] += int(inputs["input_ids"].numel())  # flattened: every token is real
            return super().training_step(model, inputs, *a, **kw)

    class Clock(TrainerCallback):  # type: ignore[misc]
        def on_step_end(self, a: Any, state: Any, control: Any, **kw: Any) -> None:
            if state.global_step == args.warmup:
                sync(args.device)
                counted["started"] = time.perf_counter()

    data = [{"input_ids": d, "labels": d} for d in docs]
    targs = TrainingArguments(
        output_dir=os.path.join(args.scratch, "hf"), max_steps=args.warmup + args.steps, per_device_train_batch_size=per_step,
        learning_rate=1e-4, lr_scheduler_type="linear", warmup_steps=0, bf16=dtype == torch.bfloat16, save_strategy="no",
        report_to=[], dataloader_num_workers=0, remove_unused_columns=False, use_cpu=args.device == "cpu", logging_steps=10_000,
        max_grad_norm=1.0, seed=0,
    )
    trainer = CountingTrainer(model=model, args=targs, train_dataset=data, data_collator=DataCollatorWithFlattening(), callbacks=[Clock()])
    trainer.train()
    sync(args.device)
    elapsed = time.perf_counter() - counted["started"]
    model.unload()
    return {"tokens_per_second": counted["tokens"] / elapsed, "peak_gb": _peak_gb(args.device), "docs_per_step": per_step}


def _peak_gb(device: str) -> float:
    if device != "cuda":
        return float("nan")
    peak = torch.cuda.max_memory_allocated() / 2**30
    torch.cuda.reset_peak_memory_stats()
    return peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="8b")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seq", type=int, default=2048, help="block length (ours) = maxSeqLength")
    ap.add_argument("--batch", type=int, default=2, help="blocks per step (ours); HF gets as many documents as fill the same tokens")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--scratch", default="/tmp/gpu-lora-bench")
    args = ap.parse_args()

    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    base = build_model(args.shape, args.device, dtype)
    need_tokens = (args.warmup + args.steps) * args.batch * args.seq * 3
    docs = documents(max(64, need_tokens // (args.seq // 2)), base.config.vocab_size, min(64, args.seq // 4), args.seq)
    flops = model_flops_per_token(base, docs) if peak else None
    print(f"device {name}; shape {args.shape}; seq {args.seq} x batch {args.batch}; {len(docs)} documents, "
          f"mean {sum(map(len, docs)) / len(docs):.0f} tokens; load average {os.getloadavg()[0]:.2f}", flush=True)

    results: dict[str, list[dict[str, float]]] = {"ours": [], "hf": []}
    order = ["ours", "hf", "hf", "ours"] * args.repeats
    for side in order[: 2 * args.repeats]:
        r = run_ours(base, docs, args, dtype) if side == "ours" else run_hf(base, docs, args, dtype)
        results[side].append(r)
        mfu = f", MFU {100 * r['tokens_per_second'] * flops / peak:.1f}%" if flops and peak else ""
        print(f"  {side:4s}: {r['tokens_per_second']:,.0f} tokens/s{mfu}, peak {r['peak_gb']:.1f} GiB", flush=True)

    best = {side: max(rs, key=lambda r: r["tokens_per_second"]) for side, rs in results.items()}
    print(f"\n{'':6s}{'tokens/s':>12s}{'MFU':>8s}")
    for side, r in best.items():
        mfu = f"{100 * r['tokens_per_second'] * flops / peak:7.1f}%" if flops and peak else "    n/a"
        print(f"{side:6s}{r['tokens_per_second']:12,.0f}{mfu}")
    ratio = best["ours"]["tokens_per_second"] / best["hf"]["tokens_per_second"]
    print(f"ours/HF Trainer+peft (padding-free): {ratio:.2f}x (target >= 1.3x){'' if ratio >= 1.3 else '  MISSED'}")
    if flops and peak:
        mfu = 100 * best["ours"]["tokens_per_second"] * flops / peak
        print(f"our LoRA MFU: {mfu:.1f}% (target >= 45%){'' if mfu >= 45 else '  MISSED'}")


if __name__ == "__main__":
    main()
