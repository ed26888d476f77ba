"""Packing keeps documents apart: whole examples per block, positions and attention per document."""

from __future__ import annotations

import itertools
import pathlib

import pytest
import torch
from finetune_trainer import data
from finetune_trainer.config import parse_config
from finetune_trainer.data import IGNORE_INDEX, Example
from finetune_trainer.errors import SetupError
from finetune_trainer.train import decide_packing
from transformers import AutoModelForCausalLM, OPTConfig, OPTForCausalLM


def _docs(lengths: list[int], vocab: int = 500, seed: int = 0) -> list[Example]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        ids = [1, *torch.randint(5, vocab, (n - 1,), generator=gen).tolist()]
        out.append(Example(ids, [IGNORE_INDEX, *ids[1:]], f"doc{n}"))
    return out


def _segments(block: Example) -> list[tuple[int, int]]:
    assert block.position_ids is not None
    starts = [i for i, p in enumerate(block.position_ids) if p == 0] + [len(block.input_ids)]
    return list(itertools.pairwise(starts))


def test_pack_keeps_whole_documents_with_their_own_positions() -> None:
    docs = _docs([9, 3, 7, 5, 2, 8, 4])
    blocks = data.pack(docs, 12)
    assert all(len(b.input_ids) <= 12 for b in blocks)
    assert len(blocks) == 4  # 38 tokens: best-fit decreasing needs ceil(38/12) = 4 blocks here
    seen = []
    for block in blocks:
        for a, b in _segments(block):
            piece = block.input_ids[a:b]
            assert block.position_ids[a:b] == list(range(b - a))  # type: ignore[index]
            assert block.labels[a] == IGNORE_INDEX  # type: ignore[index]  # nothing predicted across a boundary
            seen.append(piece)
    assert sorted(map(tuple, seen)) == sorted(tuple(d.input_ids) for d in docs)  # never split, none lost


def test_pack_leaves_out_documents_without_a_target() -> None:
    untrained = Example([1, 7, 8], [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX])
    first_only = Example([9, 7], [9, IGNORE_INDEX])  # the first position is never a target
    blocks = data.pack([*_docs([4]), untrained, first_only], 16)
    assert len(blocks) == 1 and len(blocks[0].input_ids) == 4


def test_packed_batch_gives_each_document_its_logits_alone(tiny_llama: pathlib.Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama), dtype=torch.float32).eval()
    docs = _docs([11, 6, 9, 4, 13, 5], vocab=model.config.vocab_size)
    blocks = data.pack(docs, 24)
    batch = data.collate(blocks, pad_id=0)  # rows of different fill: the padded tail is one more document
    assert "attention_mask" not in batch and batch["token_mask"].sum() == sum(len(d.input_ids) for d in docs)
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        checked = 0
        for row, block in enumerate(blocks):
            for a, b in _segments(block):
                alone = model(input_ids=torch.tensor([block.input_ids[a:b]]), use_cache=False).logits
                torch.testing.assert_close(packed[row, a:b], alone[0], atol=1e-5, rtol=1e-4)
                checked += 1
    assert checked == len(docs)


def _cfg(packing: bool | None) -> object:
    hp = {} if packing is None else {"packing": packing}
    return parse_config({"model": {"uri": "/m"}, "dataset": {"uri": "/d"}, "output": {"uri": "/o"}, "hyperparameters": hp})


def test_packing_is_on_only_where_documents_stay_apart(tiny_llama: pathlib.Path) -> None:
    llama = AutoModelForCausalLM.from_pretrained(str(tiny_llama), dtype=torch.float32)
    assert decide_packing(_cfg(None), llama, None) is True  # type: ignore[arg-type]
    assert decide_packing(_cfg(False), llama, None) is False  # type: ignore[arg-type]
    # OPT builds its mask from attention_mask only: packed documents would see each other.
    opt = OPTForCausalLM(OPTConfig(num_hidden_layers=1, hidden_size=32, ffn_dim=64, num_attention_heads=2, vocab_size=100, word_embed_proj_dim=32))
    assert data.packing_isolated(opt, 100) is False
    assert decide_packing(_cfg(None), opt, None) is False  # type: ignore[arg-type]
    with pytest.raises(SetupError, match=r"hyperparameters.packing: .*'opt'.*set packing: false"):
        decide_packing(_cfg(True), opt, None)  # type: ignore[arg-type]
