"""`precision` and the loading options mean what they say, whatever dtype the checkpoint holds."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest
import torch
from finetune_trainer import distributed
from finetune_trainer.config import parse_config
from finetune_trainer.data import Example, collate
from finetune_trainer.engine import TorchEngine
from finetune_trainer.recipes import Task, recipe_for, weights_dtype
from finetune_trainer.train import train_step


@pytest.fixture(scope="module")
def bf16_llama(tiny_llama: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """The tiny Llama saved in bf16, as most released checkpoints are (transformers 5 keeps it)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dest = tmp_path_factory.mktemp("bf16") / "model"
    AutoModelForCausalLM.from_pretrained(str(tiny_llama), dtype=torch.bfloat16).save_pretrained(str(dest))
    AutoTokenizer.from_pretrained(str(tiny_llama)).save_pretrained(str(dest))
    return dest


def _cfg(model: pathlib.Path, method: dict[str, Any], **hp: Any) -> Any:
    return parse_config({"model": {"uri": str(model)}, "dataset": {"uri": "/d"}, "output": {"uri": "/o"}, "method": method, "hyperparameters": hp})


@pytest.mark.parametrize(
    ("method", "hp", "base", "trainable"),
    [
        ({"type": "full"}, {}, torch.float32, torch.float32),  # fp32 master weights for AdamW
        ({"type": "full"}, {"precision": "bf16"}, torch.float32, torch.float32),  # bf16 is autocast, not the weights
        ({"type": "lora"}, {"precision": "fp32"}, torch.float32, torch.float32),
        ({"type": "lora"}, {"precision": "bf16"}, torch.bfloat16, torch.float32),  # frozen base in bf16, adapters fp32
    ],
)
def test_weights_dtype_follows_precision_not_the_checkpoint(bf16_llama: pathlib.Path, method: dict[str, Any], hp: dict[str, Any], base: torch.dtype, trainable: torch.dtype) -> None:
    cfg = _cfg(bf16_llama, method, **hp)
    env = distributed.read_env()
    model = recipe_for(cfg, env).build(bf16_llama, Task("causal-lm"))
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    trained = {p.dtype for p in model.parameters() if p.requires_grad}
    assert trained == {trainable}
    assert frozen <= {base} and (frozen or method["type"] == "full")
    assert weights_dtype(cfg, env) == base


def test_gradient_checkpointing_gives_the_same_step(tiny_llama: pathlib.Path) -> None:
    env = distributed.read_env()
    ex = [Example([1, 5, 6, 7, 8, 9], [-100, 5, 6, 7, 8, 9]), Example([1, 10, 11, 12], [-100, 10, 11, 12])]
    grads = []
    for gc in (False, True):
        cfg = _cfg(tiny_llama, {"type": "lora", "lora": {"dropout": 0.0}}, gradientCheckpointing=gc, precision="fp32")
        torch.manual_seed(0)
        model = recipe_for(cfg, env).build(tiny_llama, Task("causal-lm"))
        assert model.is_gradient_checkpointing is gc
        engine = TorchEngine(cfg, model, env, total_steps=1, dtype=torch.float32)
        captured: dict[str, torch.Tensor] = {}
        engine.step = lambda m=model, c=captured: c.update({n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None})  # type: ignore[method-assign, misc]
        train_step(engine, [collate(ex, 0)], env)
        grads.append(captured)
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-6)
