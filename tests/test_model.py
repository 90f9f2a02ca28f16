"""`lcdata model prepare` wrote a real Hugging Face checkpoint directory."""

from __future__ import annotations

import json


def test_prepared_directory_loads_with_transformers(model_dir):
    import torch
    from transformers import AutoModelForCausalLM

    for f in ("config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja", ".lcdata-prepared.json"):
        assert (model_dir / f).is_file(), f
    cfg = json.loads((model_dir / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["vocab_size"] == 49152
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ids = torch.tensor([[1, 9690, 198, 19556]])
    with torch.no_grad():
        logits = model(input_ids=ids, use_cache=False).logits
    assert logits.shape == (1, 4, 49152) and torch.isfinite(logits).all()


def test_prepare_is_idempotent(model_dir):
    from lcdata.model import prepare

    before = (model_dir / "model.safetensors").stat().st_mtime_ns
    assert prepare(model_dir) == model_dir
    assert (model_dir / "model.safetensors").stat().st_mtime_ns == before
