"""The trainer's config: one dataclass of sections, defaults on fields, ``--section.key=value``
overrides, unknown keys are errors. Batch sizes are counted in tokens."""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ModelCfg:
    path: str = "models/smollm2-135m-instruct"  # a local Hugging Face causal-LM directory
    # auto: varlen (else flex) on CUDA, packed_sdpa elsewhere | packed_sdpa: causal SDPA per sample |
    # masked_sdpa: one SDPA with a 4D block mask (reference) | varlen: one flash varlen kernel per layer
    # (CUDA, bf16) | flex: FlexAttention with a document block mask. Boundaries come from seq_lens.
    attention: str = "auto"
    # Context extension, written into OUT/final/config.json (`rope_parameters`). rope_theta: a new
    # RoPE base (e.g. 1e6); rope_scaling: {"type": linear|dynamic|yarn|llama3, "factor": F, ...extra
    # transformers keys}, as JSON on the command line; max_position_embeddings: the new window when
    # extending by rope_theta alone (with rope_scaling the window is original x factor)
    rope_theta: float | None = None
    rope_scaling: dict[str, Any] | None = None
    max_position_embeddings: int | None = None
    # bf16 autocast for matmuls (weights and optimizer stay float32); None = auto: on where bf16
    # matmuls are fast (CUDA with bf16, CPUs with AVX512-BF16 or AMX), off elsewhere (on an AVX2
    # CPU torch's bf16 matmul is ~60x slower than float32)
    autocast_bf16: bool | None = None
    gradient_checkpointing: bool = True


@dataclass
class DataCfg:
    order: str = "shuffle"  # shuffle (seeded, per epoch) | sequential | curriculum (shortest rows first)
    seed: int = 0
    short_ratio: float = -1.0  # >= 0: share of tokens from short rows (long:short mix); -1: off
    short_max_tokens: int = 2048  # a row is short when all its samples are at most this long


@dataclass
class BatchCfg:
    tokens_per_step: int = 8192  # nominal: rows per step = ceil(tokens_per_step / seq_len)


@dataclass
class OptimCfg:
    lr: float = 2e-5
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 2
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0


@dataclass
class LossCfg:
    weighting: str = "token"  # token: mean over loss tokens of the step | sequence: LongAlign-style
    chunk_tokens: int = 1024  # lm_head + cross-entropy in checkpointed chunks of target positions


@dataclass
class RunCfg:
    steps: int = 10
    out: str = "runs/train"
    log_every: int = 1
    save_every: int = 0  # 0: only at the end
    seed: int = 0
    resume: bool = True  # continue from OUT/checkpoint if it exists
    export: bool = True  # write a Hugging Face directory at the end (OUT/final)
    stop_at: int = 0  # stop (with a checkpoint) after this step, as if interrupted; 0: run to `steps`


@dataclass
class AdapterCfg:
    kind: str = "none"  # none (full fine-tuning) | lora | gated_memory (LIFT)
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    memory_slots: int = 16  # gated memory: learned key/value slots per KV head and layer
    gate_init: float = -6.0  # gated memory: initial gate bias (sigmoid(-6) = 0.25 % memory)


# ---- memory at length and the multi-process mode (issue 15, items 4-5) ----
@dataclass
class MemoryCfg:
    # > 0: each decoder layer's MLP runs over tiles of this many positions, recomputed per tile
    # in backward (ALST tiled MLP); 0: off
    mlp_tile_tokens: int = 0
    # activations saved for backward go to CPU memory (pinned on CUDA); frees accelerator memory,
    # changes nothing on a CPU-only run
    offload_activations: bool = False


@dataclass
class ParallelCfg:
    # ddp: every process holds the whole model, gradients summed after the step's backward passes;
    # fsdp: FSDP2 (fully_shard per decoder layer): weights, gradients and AdamW state sharded
    mode: str = "ddp"


def validate_memory_parallel(cfg: TrainConfig) -> None:
    if cfg.parallel.mode not in ("ddp", "fsdp"):
        raise ConfigError(f"`parallel.mode` must be one of ddp, fsdp, got {cfg.parallel.mode!r}")
    if cfg.memory.mlp_tile_tokens < 0:
        raise ConfigError(f"`memory.mlp_tile_tokens` must be >= 0 (0: off), got {cfg.memory.mlp_tile_tokens}")
    if cfg.parallel.mode == "fsdp" and cfg.adapter.kind != "none":
        raise ConfigError(f"`parallel.mode=fsdp` shards full fine-tuning; adapter `{cfg.adapter.kind}` trains a "
                          "few weights: use --parallel.mode=ddp with adapters")
# ---- end of the memory / parallel block ----


@dataclass
class TrainConfig:
    model: ModelCfg = field(default_factory=ModelCfg)
    data: DataCfg = field(default_factory=DataCfg)
    batch: BatchCfg = field(default_factory=BatchCfg)
    optim: OptimCfg = field(default_factory=OptimCfg)
    loss: LossCfg = field(default_factory=LossCfg)
    run: RunCfg = field(default_factory=RunCfg)
    adapter: AdapterCfg = field(default_factory=AdapterCfg)
    memory: MemoryCfg = field(default_factory=MemoryCfg)
    parallel: ParallelCfg = field(default_factory=ParallelCfg)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        choices = {
            "model.attention": (self.model.attention, ("auto", "packed_sdpa", "masked_sdpa", "varlen", "flex")),
            "data.order": (self.data.order, ("shuffle", "sequential", "curriculum")),
            "loss.weighting": (self.loss.weighting, ("token", "sequence")),
            "adapter.kind": (self.adapter.kind, ("none", "lora", "gated_memory")),
        }
        for key, (v, ok) in choices.items():
            if v not in ok:
                raise ConfigError(f"`{key}` must be one of {', '.join(ok)}, got {v!r}")
        for key, v in (("batch.tokens_per_step", self.batch.tokens_per_step), ("run.steps", self.run.steps),
                       ("loss.chunk_tokens", self.loss.chunk_tokens)):
            if v < 1:
                raise ConfigError(f"`{key}` must be >= 1, got {v}")
        self._validate_rope()
        validate_memory_parallel(self)

    def _validate_rope(self) -> None:
        m = self.model
        if m.rope_theta is not None and m.rope_theta <= 0:
            raise ConfigError(f"`model.rope_theta` must be > 0, got {m.rope_theta}")
        if m.max_position_embeddings is not None and (m.rope_scaling is not None or m.rope_theta is None):
            raise ConfigError("`model.max_position_embeddings` sets the window of a rope_theta-only extension: "
                              "set `model.rope_theta` with it, and drop it when `model.rope_scaling` is set "
                              "(the window is then original x factor)")
        s = m.rope_scaling
        if s is None:
            return
        example = '{"type": "yarn", "factor": 4}'
        kind = s.get("type", s.get("rope_type")) if isinstance(s, dict) else None
        if kind not in ROPE_TYPES:
            raise ConfigError(f"`model.rope_scaling` needs a type in {', '.join(ROPE_TYPES)} (e.g. {example}), "
                              f"got {s!r}")
        factor = s.get("factor")
        if isinstance(factor, bool) or not isinstance(factor, int | float) or factor <= 1:
            raise ConfigError(f"`model.rope_scaling` needs a factor > 1 (new window / old), got {factor!r}; "
                              f"e.g. {example}")


class ConfigError(ValueError):
    pass


ROPE_TYPES = ("linear", "dynamic", "yarn", "llama3")


def _coerce(raw: str, typ: Any, key: str) -> Any:
    typ = {"int": int, "float": float, "str": str, "bool": bool}.get(typ, typ) if isinstance(typ, str) else typ
    args = typing.get_args(typ)
    if type(None) in args:  # X | None: "none" / "auto" is None
        if raw.lower() in ("none", "auto", "null"):
            return None
        typ = next(a for a in args if a is not type(None))
    if typing.get_origin(typ) is dict:
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = None
        if not isinstance(value, dict):
            raise ConfigError(f"`{key}`: cannot read {raw!r} as a JSON object, e.g. "
                              f"--{key}='{{\"type\": \"yarn\", \"factor\": 4}}'") from None
        return value
    try:
        if typ is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        return typ(raw)
    except ValueError:
        raise ConfigError(f"`{key}`: cannot read {raw!r} as {getattr(typ, '__name__', typ)}") from None


def apply_overrides(cfg: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    """Set ``section.key`` values; strings are converted to the field's type."""
    for key, value in overrides.items():
        if "." not in key:
            raise ConfigError(f"unknown key `{key}`: overrides look like --section.key=value")
        section, name = key.split(".", 1)
        sec = getattr(cfg, section, None)
        if sec is None or not dataclasses.is_dataclass(sec):
            raise ConfigError(f"unknown key `{key}`: no section `{section}` "
                              f"(sections: {', '.join(f.name for f in dataclasses.fields(cfg))})")
        hints = typing.get_type_hints(type(sec))
        if name not in hints:
            raise ConfigError(f"unknown key `{key}` (keys of `{section}`: {', '.join(hints)})")
        setattr(sec, name, _coerce(value, hints[name], key) if isinstance(value, str) else value)
    cfg.validate()
    return cfg


def parse_cli_overrides(args: list[str]) -> dict[str, str]:
    out = {}
    for a in args:
        if not a.startswith("--") or "=" not in a:
            raise ConfigError(f"cannot read argument {a!r}: overrides look like --section.key=value")
        k, v = a[2:].split("=", 1)
        out[k] = v
    return out
