"""Generation metrics for seq2seq: greedy decoding of a validation sample, exact match and ROUGE-L.

The token loss says how well the model predicts the target under teacher forcing; what a user of
a summariser or rewriter wants to know is what it writes. At every evaluation the first
`GENERATION_SAMPLE` validation examples (a fixed, seeded sample: the validation split) are
decoded greedily, up to the longest target of the sample in new tokens, and compared with their
targets, both decoded with the tokenizer's `skip_special_tokens`:

- `exactMatch`: the fraction whose output equals the target (surrounding whitespace ignored);
- `rougeL`: the mean ROUGE-L F-measure (longest common subsequence of tokens; precision and
  recall weighted equally), with the tokenization of Google's `rouge-score` package: lower case,
  every run of characters other than a-z and 0-9 a separator, no stemming. The tests check these
  figures against that package. It is not a dependency of the trainer image: the formula is the
  twenty lines below, and the package would bring nltk and absl with it.

Ranks share the sample (rank r takes every world_size-th example). Every rank runs the same
number of `generate` calls, and with ZeRO-3 each call is synced across ranks (`synced_gpus`),
because each forward pass gathers the partitioned weights collectively.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from . import distributed
from .data import IGNORE_INDEX, Example, collate

if TYPE_CHECKING:
    from .distributed import DistEnv
    from .engine import Engine

#: Validation examples decoded at each evaluation (fewer when the split is smaller).
GENERATION_SAMPLE = 32

_NON_ALNUM = re.compile(r"[^a-z0-9]+")


def rouge_tokens(text: str) -> list[str]:
    """`rouge-score`'s default tokens: lower case, split on every non-alphanumeric run."""
    return [t for t in _NON_ALNUM.split(text.lower()) if t]


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token lists (O(len(a) x len(b)))."""
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(reference: str, prediction: str) -> float:
    """ROUGE-L F-measure of `prediction` against `reference` (0 when either has no token)."""
    ref, pred = rouge_tokens(reference), rouge_tokens(prediction)
    lcs = lcs_length(ref, pred)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def target_ids(ex: Example) -> list[int]:
    labels = ex.labels
    assert isinstance(labels, list), "generation scores need token targets (seq2seq)"
    return [t for t in labels if t != IGNORE_INDEX]


def generation_scores(
    engine: Engine,
    val_set: Sequence[Example],
    batch_size: int,
    env: DistEnv,
    pad_id: int,
    decode: Callable[[list[int]], str],
    max_new_tokens: int,
) -> tuple[float, float, int]:
    """(exact match, mean ROUGE-L, examples scored) over the first GENERATION_SAMPLE examples."""
    sample = list(val_set[:GENERATION_SAMPLE])
    if not sample:
        return 0.0, 0.0, 0
    longest = max(len(target_ids(ex)) for ex in sample)
    new_tokens = max(1, min(longest, max_new_tokens))
    mine = sample[env.rank :: env.world_size]
    chunks = [mine[i : i + batch_size] for i in range(0, len(mine), batch_size)]
    rounds = int(distributed.all_reduce_max(float(len(chunks))))
    exact = rouge = 0.0
    scored = 0
    for i in range(rounds):
        chunk = chunks[min(i, len(chunks) - 1)] if chunks else sample[:1]
        batch = collate(chunk, pad_id)
        out = engine.generate(batch, max_new_tokens=new_tokens)
        if not chunks or i >= len(chunks):
            continue  # took part in the collective forward passes only
        for ex, ids in zip(chunk, out.tolist(), strict=True):
            prediction, reference = decode(ids).strip(), decode(target_ids(ex)).strip()
            exact += float(prediction == reference)
            rouge += rouge_l(reference, prediction)
            scored += 1
    total_exact, total_rouge, total = distributed.all_reduce_sum([exact, rouge, float(scored)])
    if not total:
        return 0.0, 0.0, 0
    return total_exact / total, total_rouge / total, int(total)
