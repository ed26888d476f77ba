"""The training objective: the mean loss over every trained token of an optimizer step.

However the step's examples are split into micro-batches, ranks or packed blocks, the loss and
the gradients must be the same, and equal to the reference math (transformers' own causal-LM
loss of each conversation alone, weighted by its trained tokens). The data has answers of very
uneven length, where a mean of per-micro-batch means gives short answers far more weight.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys
from typing import Any

import pytest
import torch

from tests.support.ports import free_port

from .helpers import REPO, trainer_env, write_jsonl

LONG = "the sky is blue and the grass is green and the snow is white and the coal is black " * 2


def _rows() -> list[dict[str, Any]]:
    rows = []
    for i in range(8):
        answer = "red" if i % 2 == 0 else f"{LONG} number {i}"
        rows.append({"messages": [{"role": "user", "content": f"question {i}: what color?"}, {"role": "assistant", "content": answer}]})
    return rows


@pytest.fixture(scope="module")
def chat_file(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return write_jsonl(tmp_path_factory.mktemp("lw") / "uneven.jsonl", _rows())


def _probe(model: pathlib.Path, data: pathlib.Path, out: pathlib.Path, batch: int, accum: int, *, ranks: int = 1, pack: bool = False) -> dict[str, Any]:
    env = trainer_env(threads=1)
    env["PYTHONPATH"] = f"{REPO}:{env['PYTHONPATH']}"
    args = [str(model), str(data), str(out), "--batch-size", str(batch), "--accum", str(accum), *(["--pack"] if pack else [])]
    if ranks == 1:
        cmd = [sys.executable, "-m", "tests.trainer.grad_probe", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={ranks}", f"--master-port={free_port()}",
               "--master-addr=127.0.0.1", "-m", "tests.trainer.grad_probe", *args]
    proc = subprocess.run(cmd, env=env, cwd=str(REPO), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return dict(torch.load(out, weights_only=True))


def _reference_loss(model_dir: pathlib.Path, data: pathlib.Path) -> tuple[float, int]:
    """transformers' own loss per conversation (a mean over its targets), weighted by its targets."""
    from finetune_trainer.data import read_rows, tokenize
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    examples, _ = tokenize(read_rows([data], "chat"), "chat", tok, 256)
    total, count = 0.0, 0
    with torch.no_grad():
        for ex in examples:
            labels = torch.tensor([ex.labels])
            n = int((labels[:, 1:] != -100).sum())
            total += float(model(input_ids=torch.tensor([ex.input_ids]), labels=labels).loss) * n
            count += n
    return total / count, count


def _assert_same_grads(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], what: str) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], rtol=1e-4, atol=1e-7), f"{what}: gradient of {name} differs (max {float((a[name] - b[name]).abs().max()):.3g})"


def test_micro_batches_ranks_and_packing_train_the_same_objective(tiny_llama: pathlib.Path, chat_file: pathlib.Path, tmp_path: pathlib.Path) -> None:
    ref_loss, ref_targets = _reference_loss(tiny_llama, chat_file)
    one_batch = _probe(tiny_llama, chat_file, tmp_path / "b8a1.pt", 8, 1)
    assert one_batch["targets"] == ref_targets
    assert one_batch["loss"] == pytest.approx(ref_loss, rel=1e-5)

    runs = {
        "batchSize 1 x accumulation 8": _probe(tiny_llama, chat_file, tmp_path / "b1a8.pt", 1, 8),
        "batchSize 2 x accumulation 4": _probe(tiny_llama, chat_file, tmp_path / "b2a4.pt", 2, 4),
        "2 ranks x batchSize 1 x accumulation 4": _probe(tiny_llama, chat_file, tmp_path / "r2b1a4.pt", 1, 4, ranks=2),
        "packed, one block per micro-batch": _probe(tiny_llama, chat_file, tmp_path / "packed.pt", 1, 0, pack=True),
    }
    for what, run in runs.items():
        assert run["targets"] == ref_targets, what
        assert run["loss"] == pytest.approx(ref_loss, rel=1e-5), what
        _assert_same_grads(one_batch["grads"], run["grads"], what)


def test_a_step_without_targets_logs_null_and_changes_nothing(tiny_llama: pathlib.Path) -> None:
    from finetune_trainer import distributed
    from finetune_trainer.config import parse_config
    from finetune_trainer.data import Example, collate
    from finetune_trainer.engine import TorchEngine
    from finetune_trainer.train import train_step
    from transformers import AutoModelForCausalLM

    cfg = parse_config({"model": {"uri": str(tiny_llama)}, "dataset": {"uri": "/d"}, "output": {"uri": "/o"},
                        "method": {"type": "full"}, "hyperparameters": {"precision": "fp32", "weightDecay": 0.0}})
    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama), dtype=torch.float32)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    env = distributed.read_env()
    engine = TorchEngine(cfg, model, env, total_steps=2, dtype=torch.float32)
    untrained = Example([1, 5, 6, 7], [-100, -100, -100, -100])
    result = train_step(engine, [collate([untrained], 0)], env)
    assert result.loss is None and result.targets == 0 and result.tokens == 4
    for name, p in model.named_parameters():
        assert torch.isfinite(p).all() and torch.equal(p, before[name]), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_loss_sum_matches_torch_cross_entropy_and_its_gradient(dtype: torch.dtype) -> None:
    from finetune_trainer.engine import LOSS_CHUNK_TOKENS, loss_sum

    torch.manual_seed(0)
    rows = LOSS_CHUNK_TOKENS // 64 + 3  # 2 rows x 67 positions: more than one chunk
    logits = torch.randn(2, rows * 32, 257, dtype=dtype, requires_grad=True)
    labels = torch.randint(0, 257, (2, rows * 32))
    labels[0, :7] = -100
    labels[1, 40:90] = -100
    ref = torch.nn.functional.cross_entropy(logits.float()[:, :-1].reshape(-1, 257), labels[:, 1:].reshape(-1), ignore_index=-100, reduction="sum")
    ours = loss_sum(logits, labels)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-3)
    (g_ref,) = torch.autograd.grad(ref * 0.37, logits)
    (g_ours,) = torch.autograd.grad(ours * 0.37, logits)
    assert g_ours.dtype == dtype
    torch.testing.assert_close(g_ours.float(), g_ref.float(), rtol=0, atol=1e-6 if dtype == torch.float32 else 4e-3)
