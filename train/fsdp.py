"""FSDP2 (``parallel.mode=fsdp``): the multi-GPU mode for models whose full fine-tune does not fit
one device (AdamW needs ~16 bytes a parameter: 112 GB for 7B).

``torch.distributed.fsdp.fully_shard`` is applied to every decoder layer, then to a thin root
module whose forward *is* the packed loss (``LossRoot``): the root's all-gather of the weights
outside the layers (embeddings, final norm, a tied ``lm_head``) happens before
``packed_loss`` reads them, and they stay gathered until backward (FSDP2 does not reshard the
root after forward). Mixed precision: bf16 parameters for compute where bf16 is fast, float32
sharded master weights and AdamW state, float32 gradient reduction. Gradients are
reduce-*summed* (divide factor 1; every micro-batch's loss is already divided by the step's
global denominator), so a step computes what one process computes.

State dicts for checkpoints and the export are gathered in full on rank 0 (CPU) with
``torch.distributed.checkpoint.state_dict`` and broadcast back from rank 0 at resume.
"""

from __future__ import annotations

from typing import Any

import torch

from train.memory import decoder_layers
from train.model import packed_loss

FULL = {"full_state_dict": True, "cpu_offload": True}


class LossRoot(torch.nn.Module):
    """The FSDP root: ``forward`` is ``packed_loss(model, ...)``."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, labels: torch.Tensor,
                seq_lens: list[int], weighting: str, chunk: int) -> tuple[torch.Tensor, int]:
        return packed_loss(self.model, input_ids, position_ids, labels, seq_lens, weighting, chunk)


def shard_model(model: torch.nn.Module, device: torch.device, world: int, bf16: bool) -> LossRoot:
    """fully_shard each decoder layer, then the loss root; each module's weights move to ``device``
    as they are sharded (the whole model never sits on one accelerator)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (world,))
    mp = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16
          else MixedPrecisionPolicy(param_dtype=None, reduce_dtype=torch.float32))
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh, mp_policy=mp)
    root = LossRoot(model)
    fully_shard(root, mesh=mesh, mp_policy=mp)
    for m in root.modules():
        if isinstance(m, FSDPModule):
            m.set_gradient_divide_factor(1.0)  # sum, not mean, over processes
            m.set_force_sum_reduction_for_comms(True)  # a plain SUM (gloo has no PREMUL_SUM)
    return root


def norm_value(norm: torch.Tensor) -> float:
    """clip_grad_norm_ over sharded (DTensor) gradients returns a DTensor: its full value."""
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)


def tied_aliases(model: torch.nn.Module) -> dict[str, str]:
    """{alias: canonical name} for parameters reachable under two names (tied embeddings)."""
    canonical = {id(p): n for n, p in model.named_parameters()}
    return {n: canonical[id(p)] for n, p in model.named_parameters(remove_duplicate=False)
            if canonical[id(p)] != n}


def full_model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Collective: the full (unsharded) weights on rank 0's CPU, without tied aliases; {} elsewhere."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    sd = get_model_state_dict(model, options=StateDictOptions(**FULL))
    for alias in tied_aliases(model):
        sd.pop(alias, None)
    return sd


def load_full_model_state(model: torch.nn.Module, sd: dict[str, torch.Tensor]) -> None:
    """Collective: rank 0 passes the full weights (tied aliases may be absent), the others {}."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    if sd:
        sd = dict(sd)
        for alias, name in tied_aliases(model).items():
            sd.setdefault(alias, sd[name])
    set_model_state_dict(model, sd, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))


def full_optim_state(root: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
    """Collective: AdamW state keyed by parameter name, in full on rank 0's CPU; {} elsewhere."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(root, opt, options=StateDictOptions(**FULL))


def load_full_optim_state(root: torch.nn.Module, opt: torch.optim.Optimizer, osd: dict[str, Any]) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(root, opt, osd, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))


def unsharded_copy(model: torch.nn.Module, sd: dict[str, torch.Tensor]) -> torch.nn.Module:
    """A plain CPU model of ``model``'s class and config holding the full weights ``sd`` (rank 0),
    for the Hugging Face export. Built on the meta device: no second random init."""
    with torch.device("meta"):
        copy = type(model)(model.config)
    sd = dict(sd)
    for alias, name in tied_aliases(copy).items():
        sd.setdefault(alias, sd[name])
    copy.load_state_dict(sd, strict=True, assign=True)
    copy.tie_weights()
    for name, buf in list(copy.named_buffers()):  # non-persistent buffers (rotary inv_freq): from the model
        if buf.is_meta:
            owner, _, leaf = name.rpartition(".")
            src = dict(model.named_buffers())[name]
            copy.get_submodule(owner)._buffers[leaf] = src.detach().to("cpu").clone()
    return copy
