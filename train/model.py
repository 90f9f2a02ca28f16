"""Model helpers: exact packed attention backends, model loading with context extension, the
masked chunked loss.

Packed attention. A packed row holds several samples; a sample must never attend to
another. transformers builds a block-diagonal mask from restarting ``position_ids`` only
in some modes (it silently stops with a KV cache or a 2D mask, see ../shared/PLATFORM.md),
so we do not rely on it. Sample boundaries come from the shard's ``seq_lens``, passed to the
model as ``cu_seq_lens_q`` (cumulative lengths, int32, on the model's device; the kwargs
transformers' own varlen path uses), never from position ids: a linear-attention model
ignores position ids. A plain ``model(input_ids, position_ids=...)`` call without them
(evaluation, generation) falls back to the restarts of ``position_ids``. Backends:

- ``packed_sdpa``: causal SDPA run per sample; exact, and cost grows with each sample's
  length, not the row's (no L x L mask). The CPU default;
- ``masked_sdpa``: one SDPA call with an explicit block-diagonal causal bool mask (the
  reference implementation the tests compare against; L x L memory);
- ``varlen``: one variable-length flash kernel per layer over the whole row: flash-attn's
  ``flash_attn_varlen_func`` when installed, else torch's ``varlen_attn`` (torch >= 2.10).
  CUDA and bf16/fp16 only (torch has no CPU varlen kernel). The CUDA default;
- ``flex``: FlexAttention with a block-causal document mask, compiled on CUDA. On CPU torch
  runs it forward only (no backward) and eager (L x L scores): evaluation and checks, not
  training. The CUDA default when varlen is unavailable.

All are registered as transformers attention functions with a mask function that returns
``None``, so transformers never materialises a mask of its own. ``auto`` picks by device.

Context extension. ``model.rope_theta`` / ``model.rope_scaling`` rewrite the config's
``rope_parameters`` (transformers 5's key; it replaced ``rope_theta`` + ``rope_scaling``)
before the weights load, so training, the checkpoint and the exported ``config.json`` agree.
``max_position_embeddings`` follows vLLM's reading of the window: linear and dynamic keep
the original (vLLM multiplies it by ``factor``; transformers' dynamic NTK needs it), yarn and
llama3 store ``original_max_position_embeddings`` and set the window to original x factor.
"""

from __future__ import annotations

import importlib.util
import inspect
import math
from collections.abc import Callable
from functools import cache
from itertools import accumulate
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from lcdata.schema import IGNORE_INDEX
from train.config import ConfigError, ModelCfg

BACKENDS = ("packed_sdpa", "masked_sdpa", "varlen", "flex")


# --- sample boundaries ---------------------------------------------------------------------

def packing_kwargs(seq_lens: list[int], device: torch.device) -> dict[str, Any]:
    """The model kwargs that carry a packed row's sample boundaries to the attention backends."""
    cu = torch.tensor([0, *accumulate(seq_lens)], dtype=torch.int32, device=device)
    m = max(seq_lens)
    return {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": m, "max_length_k": m}


def _segments(position_ids: torch.Tensor) -> list[tuple[int, int]]:
    starts = (position_ids[0] == 0).nonzero().flatten().tolist()
    if not starts or starts[0] != 0:
        starts = [0, *starts]
    ends = [*starts[1:], position_ids.shape[-1]]
    return list(zip(starts, ends, strict=True))


def _spans(length: int, position_ids: torch.Tensor | None, kwargs: dict[str, Any]) -> list[tuple[int, int]]:
    """(start, end) of every sample: from ``cu_seq_lens_q`` when given, else from position ids."""
    cu = kwargs.get("cu_seq_lens_q")
    if cu is not None:
        b = cu.tolist()
        if b[0] != 0 or b[-1] != length:
            raise ValueError(f"cu_seq_lens_q spans 0..{b[-1]} from {b[0]}, but the row has {length} tokens")
        return list(zip(b[:-1], b[1:], strict=True))
    if position_ids is None:
        raise ValueError("packed attention needs cu_seq_lens_q (from the shard's seq_lens) or position_ids")
    return _segments(position_ids)


def _cu_seqlens(length: int, position_ids: torch.Tensor | None, kwargs: dict[str, Any],
                device: torch.device) -> tuple[torch.Tensor, int]:
    if kwargs.get("cu_seq_lens_q") is not None:
        cu = kwargs["cu_seq_lens_q"].to(device=device, dtype=torch.int32)
        m = kwargs.get("max_length_q") or int((cu[1:] - cu[:-1]).max())
        return cu, int(m)
    spans = _spans(length, position_ids, kwargs)
    return packing_kwargs([b - a for a, b in spans], device)["cu_seq_lens_q"], max(b - a for a, b in spans)


def _one_row(query: torch.Tensor) -> None:
    if query.shape[0] != 1:
        raise ValueError("packed attention takes one packed row per micro-batch (batch dimension 1)")


# --- backends: (B=1, H, L, D) tensors -> ((1, L, H, D), None) ----------------------------

def packed_sdpa(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                position_ids: torch.Tensor | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """Causal SDPA per sample."""
    _one_row(query)
    gqa = query.shape[1] != key.shape[1]
    outs = [
        F.scaled_dot_product_attention(query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], is_causal=True,
                                       scale=scaling, dropout_p=dropout, enable_gqa=gqa)
        for a, b in _spans(query.shape[2], position_ids, kwargs)
    ]
    return torch.cat(outs, dim=2).transpose(1, 2).contiguous(), None


def block_causal_mask(spans: list[tuple[int, int]], length: int, device: torch.device) -> torch.Tensor:
    """(1, 1, L, L) bool: True where query i may attend to key j (same sample, j <= i)."""
    seg = torch.zeros(length, dtype=torch.long, device=device)
    for k, (a, b) in enumerate(spans):
        seg[a:b] = k
    same = seg[:, None] == seg[None, :]
    causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    return (same & causal)[None, None]


def masked_sdpa(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                position_ids: torch.Tensor | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """One SDPA call with an explicit block-diagonal causal mask (the reference)."""
    _one_row(query)
    L = query.shape[2]
    mask = block_causal_mask(_spans(L, position_ids, kwargs), L, query.device)
    gqa = query.shape[1] != key.shape[1]
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scaling, dropout_p=dropout,
                                         enable_gqa=gqa)
    return out.transpose(1, 2).contiguous(), None


VarlenKernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int, float], torch.Tensor]


@cache
def _varlen_kernel() -> VarlenKernel | None:
    """(T, H, D) q/k/v, cu_seqlens, max_len, scale -> causal (T, H, D); None when neither
    flash-attn nor torch's varlen attention is installed."""
    try:
        from flash_attn import flash_attn_varlen_func

        return lambda q, k, v, cu, m, s: flash_attn_varlen_func(q, k, v, cu, cu, m, m, softmax_scale=s, causal=True)
    except ImportError:
        pass
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    params = inspect.signature(varlen_attn).parameters  # torch 2.10: is_causal; 2.11+: window_size, scale; 2.12+: gqa

    def kernel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor, m: int, s: float) -> torch.Tensor:
        kw: dict[str, Any] = {"window_size": (-1, 0)} if "window_size" in params else {"is_causal": True}
        if q.shape[1] != k.shape[1]:
            if "enable_gqa" in params:
                kw["enable_gqa"] = True
            else:
                rep = q.shape[1] // k.shape[1]
                k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        if "scale" in params:
            kw["scale"] = s
        else:
            q = q * (s * q.shape[-1] ** 0.5)  # the kernel applies 1/sqrt(D)
        return varlen_attn(q, k, v, cu, cu, m, m, **kw)

    return kernel


def varlen(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
           attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
           position_ids: torch.Tensor | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """One variable-length flash kernel over the whole row (``cu_seqlens`` from ``seq_lens``)."""
    _one_row(query)
    if dropout:
        raise ValueError("varlen attention has no dropout: use model.attention=packed_sdpa with attention_dropout")
    kernel = _varlen_kernel()
    if kernel is None:
        raise RuntimeError("varlen attention needs flash-attn or torch >= 2.10; use model.attention=flex")
    dtype = value.dtype  # under autocast RoPE leaves q, k in float32 while v is bf16
    if dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"varlen attention runs in bf16/fp16, got {dtype}: set model.autocast_bf16=true")
    L, D = query.shape[2], query.shape[-1]
    cu, m = _cu_seqlens(L, position_ids, kwargs, query.device)
    q, k, v = (t[0].transpose(0, 1).to(dtype).contiguous() for t in (query, key, value))  # (L, H, D)
    out = kernel(q, k, v, cu, m, scaling if scaling is not None else D ** -0.5)
    return out[None].contiguous(), None


_BLOCK_MASK: dict[Any, Any] = {}  # the last row's mask: every layer of one forward reuses it


def document_block_mask(cu: torch.Tensor, length: int) -> Any:
    """FlexAttention BlockMask: query i sees key j when both are in the same sample and j <= i."""
    from torch.nn.attention.flex_attention import create_block_mask

    key = (str(cu.device), length, tuple(cu.tolist()))
    if key not in _BLOCK_MASK:
        doc = torch.searchsorted(cu[1:], torch.arange(length, device=cu.device), right=True)

        def same_doc_causal(b: Any, h: Any, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
            return (doc[q] == doc[kv]) & (q >= kv)

        _BLOCK_MASK.clear()
        _BLOCK_MASK[key] = create_block_mask(same_doc_causal, None, None, length, length, device=cu.device,
                                             _compile=cu.device.type == "cuda")
    return _BLOCK_MASK[key]


@cache
def _flex_fn(device_type: str) -> Callable[..., torch.Tensor]:
    from torch.nn.attention.flex_attention import flex_attention

    # rows differ in length: torch.compile marks the length dynamic after the second one it sees
    return torch.compile(flex_attention) if device_type == "cuda" else flex_attention


def flex(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
         attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
         position_ids: torch.Tensor | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """FlexAttention with a block-causal document mask over the whole row."""
    _one_row(query)
    if dropout:
        raise ValueError("flex attention has no dropout: use model.attention=packed_sdpa with attention_dropout")
    L = query.shape[2]
    cu, _ = _cu_seqlens(L, position_ids, kwargs, query.device)
    dtype = value.dtype
    out = _flex_fn(query.device.type)(query.to(dtype), key.to(dtype), value, block_mask=document_block_mask(cu, L),
                                      scale=scaling, enable_gqa=query.shape[1] != key.shape[1])
    return out.transpose(1, 2).contiguous(), None


ATTENTION = {"packed_sdpa": packed_sdpa, "masked_sdpa": masked_sdpa, "varlen": varlen, "flex": flex}


def _no_mask(*args: Any, **kwargs: Any) -> None:
    return None


def register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    for name, fn in ATTENTION.items():
        AttentionInterface.register(name, fn)
        AttentionMaskInterface.register(name, _no_mask)


def backend_unavailable(name: str, device: torch.device, half: bool, training: bool = True) -> str | None:
    """Why backend ``name`` cannot run on ``device`` (``half``: bf16/fp16 compute; ``training``:
    with a backward pass), or None."""
    if name == "varlen":
        if device.type != "cuda":
            return f"it needs CUDA (torch has no varlen kernel for {device.type})"
        if not half:
            return "its flash kernels take bf16/fp16: set model.autocast_bf16=true"
        if _varlen_kernel() is None:
            return "it needs flash-attn or torch >= 2.10"
        if torch.cuda.get_device_capability(device)[0] < 8:
            return "this GPU has no flash attention (needs compute capability >= 8.0)"
    if name == "flex":
        if importlib.util.find_spec("torch.nn.attention.flex_attention") is None:
            return "it needs torch >= 2.5"
        if training and device.type != "cuda":
            return f"FlexAttention has no backward on {device.type} (forward only: evaluation)"
    return None


def resolve_attention(name: str, device: torch.device, half: bool) -> str:
    """``auto``: varlen, else flex on CUDA; packed_sdpa elsewhere. A named backend is checked."""
    if name == "auto":
        if device.type == "cuda":
            for b in ("varlen", "flex"):
                if backend_unavailable(b, device, half) is None:
                    return b
        return "packed_sdpa"
    if name not in ATTENTION:
        raise ConfigError(f"`model.attention` must be auto or one of {', '.join(ATTENTION)}, got {name!r}")
    why = backend_unavailable(name, device, half)
    if why:
        raise ConfigError(f"`model.attention: {name}` cannot run on {device}: {why}; "
                          "or set model.attention=auto")
    return name


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


# --- context extension ----------------------------------------------------------------------

def model_window(config: Any) -> int | None:
    """The longest sample the model serves, read as vLLM reads it; None without a position limit."""
    mpe = getattr(config, "max_position_embeddings", None)
    if mpe is None:
        return None
    rope = getattr(config, "rope_parameters", None) or {}
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind in ("linear", "dynamic"):
        return int(mpe * rope["factor"])
    if kind == "yarn":
        return int(rope.get("original_max_position_embeddings", mpe) * rope["factor"])
    return int(mpe)


def extend_context(config: Any, m: ModelCfg) -> Any:
    """Apply ``model.rope_theta`` / ``model.rope_scaling`` / ``model.max_position_embeddings``
    to a transformers config (in place) and return it."""
    if m.rope_theta is None and m.rope_scaling is None and m.max_position_embeddings is None:
        return config
    rope = dict(getattr(config, "rope_parameters", None) or {})
    if not rope:
        raise ConfigError(f"{m.path}: the model has no RoPE (`rope_parameters` in config.json), so "
                          "`model.rope_theta` / `model.rope_scaling` cannot extend it; remove them")
    if m.rope_theta is not None:
        rope["rope_theta"] = float(m.rope_theta)
    if m.rope_scaling is not None:
        present = rope.get("rope_type", rope.get("type", "default"))
        if present != "default":
            raise ConfigError(f"{m.path} already scales RoPE ({present}); `model.rope_scaling` would stack on it: "
                              "remove it, or start from a model without rope scaling")
        s = dict(m.rope_scaling)
        kind = s.pop("type", None) or s.pop("rope_type")
        original = int(config.max_position_embeddings)
        rope.update({"rope_type": kind, **{k: v for k, v in s.items() if k != "factor"}, "factor": float(s["factor"])})
        if kind in ("yarn", "llama3"):
            rope.setdefault("original_max_position_embeddings", original)
            config.max_position_embeddings = int(original * s["factor"])
        if kind == "llama3":  # Llama 3.1's values
            rope.setdefault("low_freq_factor", 1.0)
            rope.setdefault("high_freq_factor", 4.0)
    if m.max_position_embeddings is not None:
        config.max_position_embeddings = int(m.max_position_embeddings)
    config.rope_parameters = rope
    config.validate_rope()
    return config


def model_config(m: ModelCfg) -> Any:
    """The model's transformers config with the context extension of ``m`` applied."""
    from transformers import AutoConfig

    path = Path(m.path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: no config.json; run `lcdata model prepare` or pass --model DIR")
    return extend_context(AutoConfig.from_pretrained(path, trust_remote_code=False), m)


def check_window(config: Any, longest: int, m: ModelCfg) -> None:
    """Refuse samples longer than the model's (extended) window, naming the setting that fixes it."""
    window = model_window(config)
    if window is None or longest <= window:
        return
    rope = getattr(config, "rope_parameters", None) or {}
    base = window / float(rope.get("factor", 1.0) if m.rope_scaling else 1.0)
    factor = 2 ** math.ceil(math.log2(longest / base))
    fix = f"--model.rope_scaling='{{\"type\": \"yarn\", \"factor\": {factor}}}'"
    if m.rope_scaling is None:
        raise ConfigError(f"`model.rope_scaling` needed: the dataset has samples of {longest:,} tokens, the model's "
                          f"window is {window:,} ({m.path}); set {fix}")
    raise ConfigError(f"the dataset has samples of {longest:,} tokens, longer than the extended window {window:,} "
                      f"(model.rope_scaling {m.rope_scaling}); raise the factor: {fix}")


def load_model(path: str | Path, attention: str = "packed_sdpa", dtype: torch.dtype = torch.float32,
               config: Any = None) -> torch.nn.Module:
    """A causal LM with our attention registered; ``config``: one from ``model_config`` (extended)."""
    from transformers import AutoModelForCausalLM

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: no config.json; run `lcdata model prepare` or pass --model DIR")
    register_attention()
    extra = {"config": config} if config is not None else {}
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attention,
                                                 trust_remote_code=False, **extra)
    model.config.use_cache = False  # a cache would also switch transformers' own packing detection off
    return model


# --- the loss -------------------------------------------------------------------------------

def _ce_sum(h: torch.Tensor, w: torch.Tensor, t: torch.Tensor, tw: torch.Tensor) -> torch.Tensor:
    logits = (h @ w.t()).float()
    return (F.cross_entropy(logits, t, reduction="none") * tw).sum()


def packed_loss(model: torch.nn.Module, row_input_ids: torch.Tensor, position_ids: torch.Tensor,
                labels: torch.Tensor, seq_lens: list[int], weighting: str, chunk: int) -> tuple[torch.Tensor, int]:
    """Sum of weighted token losses of one packed row, and its number of loss tokens.

    Labels are shifted here (targets[t] = labels[t+1]); the first token of every sample has
    no label, so no target crosses a sample boundary. Only target positions go through
    ``lm_head`` (in checkpointed chunks), so the ``L x vocab`` logits never exist. Every
    tensor is made on (or moved to) the device of ``lm_head``; sample boundaries come from
    ``seq_lens``.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    w = base.lm_head.weight
    dev = w.device
    if sum(seq_lens) != row_input_ids.shape[-1]:
        raise ValueError(f"seq_lens sum to {sum(seq_lens)}, but the row has {row_input_ids.shape[-1]} tokens")
    row_input_ids, position_ids, labels = row_input_ids.to(dev), position_ids.to(dev), labels.to(dev)
    hidden = base.model(input_ids=row_input_ids, position_ids=position_ids, use_cache=False,
                        **packing_kwargs(seq_lens, dev)).last_hidden_state
    targets = torch.full_like(labels, IGNORE_INDEX)
    targets[:, :-1] = labels[:, 1:]
    idx = (targets[0] != IGNORE_INDEX).nonzero().flatten()
    if idx.numel() == 0:
        return hidden.sum() * 0.0, 0
    if weighting == "sequence":
        # LongAlign: every sample weighs the same, whatever its number of loss tokens
        n = len(seq_lens)
        seg = torch.repeat_interleave(torch.arange(n, device=dev), torch.tensor(seq_lens, device=dev))
        per_sample = torch.bincount(seg[idx], minlength=n).float()
        tw_all = 1.0 / per_sample[seg[idx]]
    else:
        tw_all = torch.ones(idx.numel(), dtype=torch.float32, device=dev)
    total = hidden.new_zeros((), dtype=torch.float32)
    for a in range(0, idx.numel(), chunk):
        sel = idx[a:a + chunk]
        total = total + checkpoint(_ce_sum, hidden[0, sel], w, targets[0, sel], tw_all[a:a + chunk],
                                   use_reentrant=False)
    return total, int(idx.numel())
