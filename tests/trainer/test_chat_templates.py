"""Chat masks with real-format templates, and truncation that keeps the answer.

Offline, so the tokenizers are MiniLM's with the special tokens of each format added; `\\n` is an
added (non-special) token, as in real byte-level tokenizers, so a trained newline would show.
"""

from __future__ import annotations

import pathlib
from typing import Any

import pytest
from finetune_trainer import data
from finetune_trainer.data import IGNORE_INDEX, Row
from finetune_trainer.errors import DataError
from tokenizers import AddedToken
from transformers import AutoTokenizer

from .helpers import minilm_path, write_jsonl

CHATML = (
    "{%- for m in messages %}"
    "{{- '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

LLAMA3 = (
    "{{- bos_token }}"
    "{%- for m in messages %}"
    "{{- '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + m['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)

# Qwen3: assistant turns before the last user message lose their <think> reasoning; later ones keep it.
QWEN3 = (
    "{%- set ns = namespace(last_user=-1) %}"
    "{%- for m in messages %}{%- if m['role'] == 'user' %}{%- set ns.last_user = loop.index0 %}{%- endif %}{%- endfor %}"
    "{%- for m in messages %}"
    "{%- if m['role'] == 'assistant' %}"
    "{%- set content = m['content'] %}{%- set reasoning = '' %}"
    "{%- if '</think>' in content %}"
    "{%- set reasoning = content.split('</think>')[0].split('<think>')[-1].strip('\\n') %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') %}"
    "{%- endif %}"
    "{%- if loop.index0 > ns.last_user and reasoning %}"
    "{{- '<|im_start|>assistant\\n<think>\\n' + reasoning + '\\n</think>\\n\\n' + content + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>assistant\\n' + content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- else %}"
    "{{- '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

CHATML_GENERATION = (
    "{%- for m in messages %}"
    "{%- if m['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}{% generation %}{{- m['content'] + '<|im_end|>' }}{% endgeneration %}{{- '\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
)

# A generation block around text the template rewrote (the fallback cannot find it).
SHOUTING_GENERATION = CHATML_GENERATION.replace("m['content'] + '<|im_end|>'", "m['content'] | upper + '<|im_end|>'")
SHOUTING = SHOUTING_GENERATION.replace("{% generation %}", "").replace("{% endgeneration %}", "")


def chat_tokenizer(template: str, specials: list[str], *, eos: str, bos: str | None = None, plain: tuple[str, ...] = ()) -> Any:
    tok = AutoTokenizer.from_pretrained(str(minilm_path()))
    tok.add_special_tokens({"additional_special_tokens": specials})
    tok.add_tokens([AddedToken("\n", normalized=False, special=False), *plain])
    tok.bos_token, tok.eos_token = bos, eos
    tok.chat_template = template
    return tok


def chatml() -> Any:
    return chat_tokenizer(CHATML, ["<|im_start|>", "<|im_end|>"], eos="<|im_end|>")


def conversation(answer1: str, answer2: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "You are a bot."},
        {"role": "user", "content": "pick a or b"},
        {"role": "assistant", "content": answer1},
        {"role": "user", "content": "and now explain why"},
        {"role": "assistant", "content": answer2},
    ]


def one(tok: Any, messages: list[dict[str, str]], max_len: int = 512) -> data.Example:
    examples, _ = data.tokenize([Row("c.jsonl:1", {"messages": messages})], "chat", tok, max_len)
    return examples[0]


def trained(ex: data.Example) -> list[int]:
    assert isinstance(ex.labels, list)
    return [lab for lab in ex.labels if lab != IGNORE_INDEX]


def assert_exact(tok: Any, messages: list[dict[str, str]], expected_text: str) -> None:
    """Trained ids are exactly those of `expected_text`, and the ids are the template's, nothing added."""
    ex = one(tok, messages)
    assert trained(ex) == tok.encode(expected_text, add_special_tokens=False)
    assert ex.input_ids == tok(tok.apply_chat_template(messages, tokenize=False), add_special_tokens=False)["input_ids"]
    assert isinstance(ex.labels, list)
    assert all(lab in (IGNORE_INDEX, t) for t, lab in zip(ex.input_ids, ex.labels, strict=True))


def test_chatml_trains_answers_and_im_end_not_header_or_newline() -> None:
    tok = chatml()
    msgs = conversation("a", "Because a is the first letter.")
    assert_exact(tok, msgs, "a<|im_end|>Because a is the first letter.<|im_end|>")
    ex = one(tok, msgs)
    assert isinstance(ex.labels, list)
    newline = tok.convert_tokens_to_ids("\n")
    assert ex.input_ids[-2:] == [tok.eos_token_id, newline] and ex.labels[-1] == IGNORE_INDEX  # no extra EOS


def test_llama3_trains_trimmed_answers_and_eot() -> None:
    tok = chat_tokenizer(LLAMA3, ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"], eos="<|eot_id|>", bos="<|begin_of_text|>")
    tok.pad_token = tok.eos_token  # Llama-3 ships no pad token; load_tokenizer pads with EOS
    msgs = conversation(" b \n", "Paris is in France.")
    assert_exact(tok, msgs, "b<|eot_id|>Paris is in France.<|eot_id|>")
    ex = one(tok, msgs)
    assert ex.input_ids.count(tok.bos_token_id) == 1 and ex.input_ids[0] == tok.bos_token_id


def test_qwen3_template_that_rerenders_history() -> None:
    tok = chat_tokenizer(QWEN3, ["<|im_start|>", "<|im_end|>"], eos="<|im_end|>", plain=("<think>", "</think>"))
    msgs = conversation("<think>\nthe user wants a letter\n</think>\n\nb", "<think>\nexplain\n</think>\n\nb comes second.")
    full = tok.apply_chat_template(msgs, tokenize=False)
    assert "the user wants a letter" not in full  # history lost its reasoning: prefixes are not prefixes
    assert_exact(tok, msgs, "b<|im_end|><think>\nexplain\n</think>\n\nb comes second.<|im_end|>")


def test_generation_block_marks_the_trained_tokens() -> None:
    tok = chat_tokenizer(CHATML_GENERATION, ["<|im_start|>", "<|im_end|>"], eos="<|im_end|>")
    msgs = conversation("a", "Because a is the first letter.")
    assert_exact(tok, msgs, "a<|im_end|>Because a is the first letter.<|im_end|>")


def test_generation_block_is_trusted_where_the_fallback_cannot_find_the_text() -> None:
    msgs = conversation("a", "Because a is the first letter.")
    tok = chat_tokenizer(SHOUTING_GENERATION, ["<|im_start|>", "<|im_end|>"], eos="<|im_end|>")
    assert_exact(tok, msgs, "A<|im_end|>BECAUSE A IS THE FIRST LETTER.<|im_end|>")
    tok = chat_tokenizer(SHOUTING, ["<|im_start|>", "<|im_end|>"], eos="<|im_end|>")
    with pytest.raises(DataError, match=r"c\.jsonl:1: messages\[4\]: the chat template changed the assistant's text"):
        one(tok, msgs)


def test_chat_without_end_of_turn_token_gets_a_trained_eos(tiny_llama: pathlib.Path) -> None:
    tok = AutoTokenizer.from_pretrained(str(tiny_llama))  # helpers.CHAT_TEMPLATE: "<role> content\n"
    ex = one(tok, conversation("a", "because"))
    assert trained(ex) == [*tok.encode("a because", add_special_tokens=False), tok.eos_token_id]
    assert ex.input_ids[-1] == tok.eos_token_id and ex.input_ids.count(tok.eos_token_id) == 1


def test_truncation_keeps_the_answer_and_counts_dropped_rows(tmp_path: pathlib.Path) -> None:
    tok = chatml()
    long_question = "why " * 40
    rows = [
        {"messages": [{"role": "user", "content": long_question}, {"role": "assistant", "content": "because it is"}]},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}, {"role": "user", "content": long_question}]},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
    ]
    parsed = data.read_rows([write_jsonl(tmp_path / "c.jsonl", rows)], "chat")
    examples, stats = data.tokenize(parsed, "chat", tok, 16)
    assert [ex.source for ex in examples] == ["c.jsonl:1", "c.jsonl:3"]  # row 2's answer was cut away
    assert (stats.longer_than_max, stats.rows_dropped) == (2, 1)
    assert stats.as_dict()["rowsDroppedNoTrainedTokens"] == 1 and stats.as_dict()["rowsLongerThanMaxSeqLength"] == 2
    assert "(from the left, keeping the answer), 1 rows dropped" in stats.truncation_summary(16)
    ex = examples[0]
    assert len(ex.input_ids) == 16
    assert trained(ex) == tok.encode("because it is<|im_end|>", add_special_tokens=False)
    assert tok.decode(ex.input_ids).startswith("why why")  # the question's start was cut, not the answer


def test_text_is_still_cut_from_the_right(tiny_llama: pathlib.Path) -> None:
    tok = AutoTokenizer.from_pretrained(str(tiny_llama))
    examples, stats = data.tokenize([Row("t.jsonl:1", {"text": "one two three " * 20})], "text", tok, 8)
    assert examples[0].input_ids == [tok.bos_token_id, *tok.encode("one two three one two three one", add_special_tokens=False)]
    assert stats.truncated_from == "right" and stats.rows_dropped == 0
