"""One optimizer step of the real training loop; writes its loss and the gradients it applied.

    python -m tests.trainer.grad_probe MODEL DATA.jsonl OUT.pt --batch-size B --accum A [--pack]
    torchrun --nproc-per-node 2 -m tests.trainer.grad_probe ...      (gloo, 2 ranks)

Used by test_loss_weighting.py to compare batch shapes and world sizes. Full fine-tuning in fp32
on CPU, so the gradients of every weight are compared. The gradients are read just before the
optimizer applies them (DDP has averaged them across ranks by then).
"""

from __future__ import annotations

import argparse
import pathlib

import torch
from finetune_trainer import distributed
from finetune_trainer.config import parse_config
from finetune_trainer.data import Batches, Position, pack, read_rows, tokenize
from finetune_trainer.engine import TorchEngine
from finetune_trainer.train import train_step
from transformers import AutoModelForCausalLM, AutoTokenizer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("data")
    ap.add_argument("out")
    ap.add_argument("--batch-size", type=int, required=True)
    ap.add_argument("--accum", type=int, required=True)
    ap.add_argument("--pack", action="store_true")
    args = ap.parse_args()

    env = distributed.init()
    torch.manual_seed(0)
    cfg = parse_config({
        "model": {"uri": args.model}, "dataset": {"uri": args.data, "format": "chat", "validationSplit": 0},
        "method": {"type": "full"}, "output": {"uri": "/tmp/unused"},
        "hyperparameters": {"batchSize": args.batch_size, "gradientAccumulationSteps": args.accum or 1, "maxSeqLength": 256,
                            "precision": "fp32", "learningRate": 1e-3},
    })
    tok = AutoTokenizer.from_pretrained(args.model)
    examples, _ = tokenize(read_rows([pathlib.Path(args.data)], "chat"), "chat", tok, 256)
    if args.pack:
        examples = pack(examples, 128)
        assert len(examples) > 1, "the packed probe wants several blocks"
        args.accum = args.accum or len(examples)  # 0: every block once, one per micro-batch
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    engine = TorchEngine(cfg, model, env, total_steps=1, dtype=torch.float32)
    grads: dict[str, torch.Tensor] = {}
    apply = engine.step

    def capture_then_step() -> None:
        for name, p in model.named_parameters():
            if p.grad is not None:
                grads[name] = p.grad.detach().clone()
        apply()

    engine.step = capture_then_step  # type: ignore[method-assign]
    batches = Batches(examples, args.batch_size, env.rank, env.world_size, seed=0, pad_id=tok.pad_token_id)
    it = batches.iterate(Position(0, 0))
    micro = [next(it)[1] for _ in range(args.accum)]
    result = train_step(engine, micro, env)
    if env.is_main:
        torch.save({"loss": result.loss, "targets": result.targets, "grads": grads}, args.out)
    distributed.cleanup()


if __name__ == "__main__":
    main()
