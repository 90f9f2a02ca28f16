"""Chat template rendering and loss masks on the real SmolLM2 tokenizer."""

from __future__ import annotations

import numpy as np
import pytest

from lcdata.chat import ChatTokenizer, TemplateError
from lcdata.schema import IGNORE_INDEX

CHAT = [
    {"role": "user", "content": "First question?"},
    {"role": "assistant", "content": "First answer."},
    {"role": "user", "content": "Second question?"},
    {"role": "assistant", "content": "Second answer."},
]


def trained_text(tok, ids, labels):
    return tok.decode([int(t) for t, l in zip(ids, labels) if l != IGNORE_INDEX])


def test_loss_only_on_assistant_turns(tok):
    (ids, labels), = tok.encode_chats([CHAT], loss_on="all")
    assert trained_text(tok, ids, labels) == "First answer.<|im_end|>Second answer.<|im_end|>"
    assert labels[0] == IGNORE_INDEX
    m = labels != IGNORE_INDEX
    assert np.array_equal(labels[m], ids[m])
    assert tok.decode([int(i) for i in ids]) == tok.render(CHAT)  # tokenization is lossless


def test_loss_on_last_turn(tok):
    (ids, labels), = tok.encode_chats([CHAT], loss_on="last")
    assert trained_text(tok, ids, labels) == "Second answer.<|im_end|>"


def test_ids_match_transformers_apply_chat_template(tok, model_dir):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(model_dir)
    expected = hf.apply_chat_template(CHAT, tokenize=True, return_dict=False)
    if isinstance(expected, dict):
        expected = expected["input_ids"]
    (ids, _), = tok.encode_chats([CHAT])
    assert ids.tolist() == list(expected)


def test_non_prefix_template_is_refused(tmp_path, model_dir):
    import shutil

    d = tmp_path / "m"
    shutil.copytree(model_dir, d)
    # a template that renders the message count first: no prefix property
    (d / "chat_template.jinja").write_text("{{ messages|length }}{% for m in messages %}{{ m['content'] }}{% endfor %}")
    bad = ChatTokenizer(d)
    with pytest.raises(TemplateError, match="prefix"):
        bad.encode_chats([CHAT])
