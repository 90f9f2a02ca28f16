"""Model helpers: exact packed attention, model loading, the masked chunked loss.

Packed attention. A packed row holds several samples; a sample must never attend to
another. transformers builds a block-diagonal mask from restarting ``position_ids`` only
in some modes (it silently stops with a KV cache or a 2D mask, see ../shared/PLATFORM.md),
so we do not rely on it. We register our own attention:

- ``packed_sdpa``: causal SDPA run per sample (boundaries from ``position_ids``); exact,
  and cost grows with each sample's length, not the row's (no L x L mask);
- ``masked_sdpa``: one SDPA call with an explicit block-diagonal causal bool mask (the
  reference implementation the test compares against).

Both are registered as transformers attention functions with a mask function that returns
``None``, so transformers never materialises a mask of its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from lcdata.schema import IGNORE_INDEX


def _segments(position_ids: torch.Tensor) -> list[tuple[int, int]]:
    starts = (position_ids[0] == 0).nonzero().flatten().tolist()
    if not starts or starts[0] != 0:
        starts = [0, *starts]
    ends = [*starts[1:], position_ids.shape[-1]]
    return list(zip(starts, ends, strict=True))


def packed_sdpa(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                position_ids: torch.Tensor | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """(B=1, H, L, D) tensors -> (1, L, H, D), causal inside each sample only."""
    if position_ids is None:
        raise ValueError("packed attention needs position_ids (they mark where samples start)")
    if query.shape[0] != 1:
        raise ValueError("packed attention takes one packed row per micro-batch (batch dimension 1)")
    gqa = query.shape[1] != key.shape[1]
    outs = [
        F.scaled_dot_product_attention(query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], is_causal=True,
                                       scale=scaling, dropout_p=dropout, enable_gqa=gqa)
        for a, b in _segments(position_ids)
    ]
    return torch.cat(outs, dim=2).transpose(1, 2).contiguous(), None


def block_causal_mask(position_ids: torch.Tensor) -> torch.Tensor:
    """(1, 1, L, L) bool: True where query i may attend to key j (same sample, j <= i)."""
    L = position_ids.shape[-1]
    seg = torch.zeros(L, dtype=torch.long, device=position_ids.device)
    for k, (a, b) in enumerate(_segments(position_ids)):
        seg[a:b] = k
    same = seg[:, None] == seg[None, :]
    causal = torch.ones(L, L, dtype=torch.bool, device=position_ids.device).tril()
    return (same & causal)[None, None]


def masked_sdpa(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                position_ids: torch.Tensor | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    if position_ids is None:
        raise ValueError("masked attention needs position_ids (they mark where samples start)")
    mask = block_causal_mask(position_ids)
    gqa = query.shape[1] != key.shape[1]
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scaling, dropout_p=dropout,
                                         enable_gqa=gqa)
    return out.transpose(1, 2).contiguous(), None


def _no_mask(*args: Any, **kwargs: Any) -> None:
    return None


def register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    for name, fn in (("packed_sdpa", packed_sdpa), ("masked_sdpa", masked_sdpa)):
        AttentionInterface.register(name, fn)
        AttentionMaskInterface.register(name, _no_mask)


def fast_bf16(device: torch.device) -> bool:
    """Whether bf16 matmuls are fast on ``device``: CUDA with bf16 support, or a CPU with
    AVX512-BF16 / AMX (torch's CPU fallback for bf16 gemm is far slower than float32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            flags = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
        return "avx512_bf16" in flags or "amx_bf16" in flags
    return False


def load_model(path: str | Path, attention: str = "packed_sdpa", dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: no config.json; run `lcdata model prepare` or pass --model DIR")
    register_attention()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attention,
                                                 trust_remote_code=False)
    model.config.use_cache = False  # a cache would also switch transformers' own packing detection off
    return model


def _ce_sum(h: torch.Tensor, w: torch.Tensor, t: torch.Tensor, tw: torch.Tensor) -> torch.Tensor:
    logits = (h @ w.t()).float()
    return (F.cross_entropy(logits, t, reduction="none") * tw).sum()


def packed_loss(model: torch.nn.Module, row_input_ids: torch.Tensor, position_ids: torch.Tensor,
                labels: torch.Tensor, seq_lens: list[int], weighting: str, chunk: int) -> tuple[torch.Tensor, int]:
    """Sum of weighted token losses of one packed row, and its number of loss tokens.

    Labels are shifted here (targets[t] = labels[t+1]); the first token of every sample has
    no label, so no target crosses a sample boundary. Only target positions go through
    ``lm_head`` (in checkpointed chunks), so the ``L x vocab`` logits never exist.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = base.model(input_ids=row_input_ids, position_ids=position_ids, use_cache=False).last_hidden_state
    targets = torch.full_like(labels, IGNORE_INDEX)
    targets[:, :-1] = labels[:, 1:]
    idx = (targets[0] != IGNORE_INDEX).nonzero().flatten()
    if idx.numel() == 0:
        return hidden.sum() * 0.0, 0
    if weighting == "sequence":
        # LongAlign: every sample weighs the same, whatever its number of loss tokens
        seg = torch.repeat_interleave(torch.arange(len(seq_lens)), torch.tensor(seq_lens))
        per_sample = torch.bincount(seg[idx], minlength=len(seq_lens)).float()
        tw_all = 1.0 / per_sample[seg[idx]]
    else:
        tw_all = torch.ones(idx.numel())
    w = base.lm_head.weight
    total = hidden.new_zeros((), dtype=torch.float32)
    for a in range(0, idx.numel(), chunk):
        sel = idx[a:a + chunk]
        total = total + checkpoint(_ce_sum, hidden[0, sel], w, targets[0, sel], tw_all[a:a + chunk],
                                   use_reentrant=False)
    return total, int(idx.numel())
