"""LoRA and LIFT Gated Memory: they train, only they train, and their small checkpoints load back."""

from __future__ import annotations

import torch
from test_train import packed_row, tiny_cfg

from train.adapters import GatedMemorySpec, add_gated_memory, gate_values, load_adapter
from train.model import load_model
from train.train import train


def logits(model, ids, pos):
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids, position_ids=pos, use_cache=False).logits


def test_lora_trains_saves_small_and_loads_back(tiny_model_dir, small_dataset, tmp_path, tok):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "lora"
    cfg = tiny_cfg(tiny_model_dir, out, **{"run.steps": 3, "adapter.kind": "lora", "adapter.lora_r": 4,
                                           "run.export": True, "optim.lr": 1e-2})
    res = train([small_dataset], cfg, log=lambda *_: None)
    assert len(res["history"]) == 3
    full = (tiny_model_dir / "model.safetensors").stat().st_size
    adapter = (out / "adapter" / "adapter.safetensors").stat().st_size
    assert adapter < full / 5
    assert (out / "checkpoint" / "model.safetensors").stat().st_size < full / 5
    _, ids, _, pos, _ = packed_row(tok)
    reloaded = load_adapter(tiny_model_dir, out / "adapter")
    merged = AutoModelForCausalLM.from_pretrained(out / "final", dtype=torch.float32)  # plain transformers
    base = load_model(tiny_model_dir)
    a = logits(reloaded, ids[:, :20], pos[:, :20])
    b = logits(merged, ids[:, :20], None)
    assert (a - b).abs().max() < 1e-4
    assert (a - logits(base, ids[:, :20], pos[:, :20])).abs().max() > 1e-3  # LoRA changed the model


def test_gated_memory_starts_near_base_and_packs_exactly(tiny_model_dir, tok):
    _, ids, _, pos, lens = packed_row(tok)
    base = load_model(tiny_model_dir)
    gm = add_gated_memory(load_model(tiny_model_dir), GatedMemorySpec(memory_slots=8), "packed_sdpa")
    assert all(not p.requires_grad for n, p in gm.named_parameters() if ".gm_" not in n)
    assert sum(p.requires_grad for p in gm.parameters()) == 4 * 2  # 4 tensors x 2 layers
    lb, lg = logits(base, ids, pos), logits(gm, ids, pos)
    assert (lb - lg).abs().max() < 0.05  # gate at sigmoid(-6): the base model, almost
    # packing stays exact: the memory path is per token
    alone = logits(gm, ids[:, : lens[0]], pos[:, : lens[0]])
    assert (lg[:, : lens[0]] - alone).abs().max() < 1e-4


def test_gated_memory_trains_only_memory_and_loads_back(tiny_model_dir, small_dataset, tmp_path, tok):
    out = tmp_path / "gm"
    cfg = tiny_cfg(tiny_model_dir, out, **{"run.steps": 3, "adapter.kind": "gated_memory", "adapter.memory_slots": 8,
                                           "run.export": True, "optim.lr": 5e-2})
    res = train([small_dataset], cfg, log=lambda *_: None)
    assert res["final"].endswith("adapter")
    reloaded = load_adapter(tiny_model_dir, out / "adapter")
    base = load_model(tiny_model_dir)
    for (n, p), (_, q) in zip(base.named_parameters(), [(n, p) for n, p in reloaded.named_parameters() if ".gm_" not in n]):
        assert torch.equal(p, q), f"base weight {n} changed"
    g = gate_values(reloaded)
    assert g.shape == (2, 4)
    assert not torch.allclose(g, torch.full_like(g, torch.sigmoid(torch.tensor(-6.0)).item()))  # gates moved
    assert (out / "adapter" / "adapter.safetensors").stat().st_size < 50_000
