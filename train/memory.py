"""Memory at length: options that keep a long row's activations small, beside the chunked loss.

- ``tile_mlps(model, tokens)``: tiled MLP (ALST, Arctic Long Sequence Training). Each decoder
  layer's MLP runs over tiles of ``tokens`` positions, each tile under non-reentrant activation
  checkpointing, so the ``L x intermediate_size`` tensors (gate, up, their product and their
  gradients) exist for one tile at a time, in forward and in backward. An MLP acts on every
  position alone, so tiling changes nothing but the matmul shapes (float32 results agree to
  rounding, see the test).
- ``offload_activations(device)``: the tensors autograd saves for backward outside checkpointed
  regions (with gradient checkpointing: each layer's input, the final hidden states) are moved
  to CPU memory (pinned on CUDA) and back in backward: ``torch.autograd.graph.save_on_cpu``.
  It frees accelerator memory; on a CPU-only run the tensors already live in CPU memory and
  nothing moves (the bench shows no change in RSS there).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The decoder layers of a Hugging Face causal LM (plain, or wrapped by peft)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner = getattr(base, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise ValueError(f"{type(base).__name__}: no `model.layers` (decoder layers) found; the memory options "
                         "(memory.mlp_tile_tokens) support Llama-style causal LMs: set them to 0 for this model")
    return list(layers)


def _tiled(forward: Callable[[torch.Tensor], torch.Tensor], tokens: int, x: torch.Tensor) -> torch.Tensor:
    """``forward`` over tiles of ``tokens`` positions of x (B, L, H); recomputed per tile in backward."""
    if x.shape[-2] <= tokens:
        return forward(x)
    tiles = x.split(tokens, dim=-2)
    if torch.is_grad_enabled():
        return torch.cat([checkpoint(forward, t, use_reentrant=False) for t in tiles], dim=-2)
    return torch.cat([forward(t) for t in tiles], dim=-2)


def tile_mlps(model: torch.nn.Module, tokens: int) -> int:
    """Run every decoder layer's MLP over tiles of ``tokens`` positions; returns how many MLPs.
    Idempotent (a second call re-tiles with the new size); ``tokens=0`` restores the plain MLP."""
    if tokens < 0:
        raise ValueError(f"`memory.mlp_tile_tokens` must be >= 0, got {tokens}")
    n = 0
    for layer in decoder_layers(model):
        mlp = getattr(layer, "mlp", None)
        if mlp is None:
            raise ValueError(f"{type(layer).__name__} has no `mlp`; set memory.mlp_tile_tokens=0 for this model")
        plain = mlp.__dict__.get("_untiled_forward") or mlp.forward
        if tokens:
            mlp._untiled_forward = plain
            mlp.forward = functools.partial(_tiled, plain, tokens)
        else:
            mlp.__dict__.pop("_untiled_forward", None)
            mlp.__dict__.pop("forward", None)
        n += 1
    return n


def offload_activations(enabled: bool, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """Context for the forward pass: saved activations go to CPU memory (pinned when ``device``
    is CUDA) and come back in backward. A no-op context when not ``enabled``."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autograd.graph.save_on_cpu(pin_memory=device.type == "cuda")
