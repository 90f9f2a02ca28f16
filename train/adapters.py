"""Adapters: LoRA (peft) and LIFT's Gated Memory.

Gated Memory (LIFT, seed paper 002). Every attention layer gets an extra attention path
over ``memory_slots`` learned key/value slots per KV head ("out-of-context" memory that
training on a long input fills), and a gate per head that reads the query and decides how
much of the output comes from memory vs from ordinary in-context attention:

    g   = sigmoid(q . w_h + b_h)                      per head h and token
    mem = softmax(q K_mem^T * scale) V_mem            attention over the memory slots
    out = (1 - g) * attn(q, K, V) + g * mem

Only the memory slots and the gates train; every base weight is frozen. The gate bias
starts at ``gate_init`` (sigmoid(-6) = 0.25 %) so the model starts as the base model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from train.model import ATTENTION

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class GatedMemorySpec:
    memory_slots: int = 16
    gate_init: float = -6.0


def _gated(base_fn: Any) -> Any:
    def attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                  **kwargs: Any) -> tuple[torch.Tensor, None]:
        base, _ = base_fn(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
        H, D = query.shape[1], query.shape[-1]
        rep = H // module.gm_key.shape[0]
        mk = module.gm_key.repeat_interleave(rep, dim=0).to(query.dtype)  # (H, M, D)
        mv = module.gm_value.repeat_interleave(rep, dim=0).to(query.dtype)
        scale = scaling if scaling is not None else D ** -0.5
        mem = torch.softmax((query @ mk.transpose(-1, -2)) * scale, dim=-1) @ mv  # (1, H, L, D)
        gate = torch.sigmoid((query * module.gm_gate_w.to(query.dtype)[None, :, None, :]).sum(-1, keepdim=True)
                             + module.gm_gate_b.to(query.dtype)[None, :, None, None])  # (1, H, L, 1)
        mixed = (1 - gate) * base.transpose(1, 2) + gate * mem
        return mixed.transpose(1, 2).contiguous(), None

    return attention


def register_gated_memory() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    for name, fn in ATTENTION.items():
        AttentionInterface.register(f"gm_{name}", _gated(fn))
        AttentionMaskInterface.register(f"gm_{name}", lambda *a, **k: None)


def attention_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for n, m in model.named_modules() if n.endswith("self_attn")]


def add_gated_memory(model: torch.nn.Module, spec: GatedMemorySpec, base_attention: str) -> torch.nn.Module:
    """Freeze the model, add memory slots and gates to every attention layer, switch attention."""
    register_gated_memory()
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    g = torch.Generator().manual_seed(0)
    for p in model.parameters():
        p.requires_grad_(False)
    for attn in attention_layers(model):
        attn.gm_key = torch.nn.Parameter(torch.randn(cfg.num_key_value_heads, spec.memory_slots, head_dim, generator=g) * 0.02)
        attn.gm_value = torch.nn.Parameter(torch.randn(cfg.num_key_value_heads, spec.memory_slots, head_dim, generator=g) * 0.02)
        attn.gm_gate_w = torch.nn.Parameter(torch.zeros(cfg.num_attention_heads, head_dim))
        attn.gm_gate_b = torch.nn.Parameter(torch.full((cfg.num_attention_heads,), spec.gate_init))
    model.set_attn_implementation(f"gm_{base_attention}")
    model.config.gated_memory = {"memory_slots": spec.memory_slots, "gate_init": spec.gate_init}
    return model


def add_lora(model: torch.nn.Module, r: int, alpha: int, dropout: float) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=LORA_TARGETS, task_type="CAUSAL_LM")
    return get_peft_model(model, cfg)


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def save_adapter(model: torch.nn.Module, out: Path, kind: str, meta: dict[str, Any]) -> Path:
    """Adapter-only files: ``adapter.safetensors`` (trainable weights) + ``adapter_config.json``."""
    out.mkdir(parents=True, exist_ok=True)
    save_file(trainable_state(model), str(out / "adapter.safetensors"))
    (out / "adapter_config.json").write_text(json.dumps({"kind": kind, **meta}, indent=2) + "\n")
    return out


def load_adapter(base_dir: str | Path, adapter_dir: Path, attention: str = "packed_sdpa") -> torch.nn.Module:
    """Base model + adapter, as trained (for evaluation or to continue)."""
    from train.model import load_model

    meta = json.loads((adapter_dir / "adapter_config.json").read_text())
    model = load_model(base_dir, attention)
    if meta["kind"] == "gated_memory":
        model = add_gated_memory(model, GatedMemorySpec(meta["memory_slots"], meta["gate_init"]), attention)
    elif meta["kind"] == "lora":
        model = add_lora(model, meta["r"], meta["alpha"], meta["dropout"])
    else:
        raise ValueError(f"{adapter_dir}: unknown adapter kind {meta['kind']!r}")
    state = load_file(str(adapter_dir / "adapter.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected:
        raise ValueError(f"{adapter_dir}: adapter weights the model does not have: {unexpected[:3]}")
    absent = [k for k in trainable_state(model) if k not in state]
    if absent:
        raise ValueError(f"{adapter_dir}: adapter file lacks {absent[:3]}")
    return model


def gate_values(model: torch.nn.Module) -> torch.Tensor:
    """Gate bias per layer and head, as probabilities (how much memory each head uses at q=0)."""
    return torch.stack([torch.sigmoid(a.gm_gate_b.detach()) for a in attention_layers(model)])
