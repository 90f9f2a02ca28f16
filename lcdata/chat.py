"""Chat rendering with loss masks, on the real tokenizer (``tokenizer.json`` + chat template).

Loss spans are found without template-specific code: for assistant turn ``i`` the rendered
prefix ``render(messages[:i], add_generation_prompt=True)`` must be a prefix of the full
rendering, and the turn's span runs from there to the end of ``render(messages[:i+1])``
(right-stripped, so the end-of-turn token is trained and the newline after it is not).
Tokens whose first character falls in a span carry labels; everything else is -100.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

from lcdata.schema import IGNORE_INDEX, Sample
from lcdata.stage import Producer


class TemplateError(ValueError):
    pass


@dataclass
class TokenizedSample:
    sample_id: str
    task: str
    split: str
    input_ids: np.ndarray  # int32
    labels: np.ndarray  # int32, IGNORE_INDEX where no loss


class ChatTokenizer:
    """A ``tokenizers.Tokenizer`` plus the model's Jinja chat template."""

    def __init__(self, model_dir: str | Path) -> None:
        model_dir = Path(model_dir)
        tj = model_dir / "tokenizer.json"
        if not tj.is_file():
            raise FileNotFoundError(
                f"{tj} not found; run `lcdata model prepare` (or `make model`) to write the model directory"
            )
        self.model_dir = model_dir
        self.tokenizer = Tokenizer.from_file(str(tj))
        cfg: dict[str, Any] = {}
        if (model_dir / "tokenizer_config.json").is_file():
            cfg = json.loads((model_dir / "tokenizer_config.json").read_text())
        tpl_file = model_dir / "chat_template.jinja"
        template = tpl_file.read_text() if tpl_file.is_file() else cfg.get("chat_template")
        if not template:
            raise TemplateError(f"{model_dir}: no chat template (chat_template.jinja or tokenizer_config.json)")
        self.template_text: str = template
        where = tpl_file if tpl_file.is_file() else model_dir / "tokenizer_config.json"
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        self.special = {k: cfg.get(k) for k in ("bos_token", "eos_token", "pad_token")}
        self._off_cache: tuple[str | None, np.ndarray] = (None, np.zeros((0, 2), np.int64))
        # compiled and tried once here, so a broken or hostile template (blocked by the
        # sandbox) stops the build before any work, with one message naming the file
        try:
            self._template = env.from_string(template)
            self.render([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}])
        except (jinja2.TemplateError, TypeError, ValueError, AttributeError, KeyError, IndexError) as e:
            raise TemplateError(f"{where}: the chat template cannot be used ({type(e).__name__}: {e}); restore "
                                "the model's own template (`lcdata model prepare` rewrites it)") from None

    def render(self, messages: Sequence[dict[str, str]], add_generation_prompt: bool = False) -> str:
        return self._template.render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                                     **{k: v for k, v in self.special.items() if v})

    def count(self, texts: list[str]) -> list[int]:
        """Token counts of plain texts (no special tokens), batched in Rust."""
        if not texts:
            return []
        return [len(e.ids) for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]

    def token_spans(self, text: str, spans: Sequence[tuple[int, int]]) -> tuple[int, list[tuple[int, int]]]:
        """The token count of ``text`` and, per char span, the tokens it touches ``[first, end)``:
        the first token ending after the span's start, up to the first starting at or after its end."""
        off = self.offsets(text)
        out = [(int(np.searchsorted(off[:, 1], a, "right")), int(np.searchsorted(off[:, 0], b, "left")))
               for a, b in spans]
        return len(off), out

    def offsets(self, text: str) -> np.ndarray:
        """``(n_tokens, 2)`` char offsets of the tokens of ``text``; the last text's are kept, since
        tasks ask about one context many times in a row."""
        cached = self._off_cache  # one read: build threads share this tokenizer
        if cached[0] is text or cached[0] == text:
            return cached[1]
        enc = self.tokenizer.encode(text, add_special_tokens=False)
        arr = np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2)
        self._off_cache = (text, arr)
        return arr

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def loss_spans(self, messages: Sequence[dict[str, str]], loss_on: str) -> tuple[str, list[tuple[int, int]]]:
        """The rendered text and the char spans of the assistant turns that carry loss."""
        full = self.render(messages)
        turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        if loss_on == "last":
            turns = turns[-1:]
        spans = []
        for i in turns:
            prefix = self.render(messages[:i], add_generation_prompt=True)
            upto = self.render(messages[: i + 1]).rstrip()
            if not (full.startswith(prefix) and full.startswith(upto) and len(upto) > len(prefix)):
                raise TemplateError(
                    "the chat template does not render conversations prefix-wise, so loss spans "
                    "cannot be located; use a template whose rendering of a shorter conversation "
                    "is a prefix of the longer one"
                )
            spans.append((len(prefix), len(upto)))
        return full, spans

    def encode_chats(self, chats: list[Sequence[dict[str, str]]], loss_on: str = "all") -> list[tuple[np.ndarray, np.ndarray]]:
        rendered = [self.loss_spans(m, loss_on) for m in chats]
        encs = self.tokenizer.encode_batch([r[0] for r in rendered], add_special_tokens=False)
        out = []
        for (text, spans), enc in zip(rendered, encs, strict=True):
            ids = np.asarray(enc.ids, dtype=np.int32)
            labels = np.full(len(ids), IGNORE_INDEX, dtype=np.int32)
            for a, b in spans:
                t0 = _token_at_or_after(enc, a, len(text))
                t1 = _token_at_or_after(enc, b, len(text))  # first token starting at/after the span end
                labels[t0:t1] = ids[t0:t1]
            if len(labels):
                labels[0] = IGNORE_INDEX  # the first token of a sample is never a target
            out.append((ids, labels))
        return out


def _token_at_or_after(enc: Any, char: int, n_chars: int) -> int:
    """Index of the first token whose first character is at or after ``char``."""
    while char < n_chars:
        t = enc.char_to_token(char)
        if t is not None:
            start = enc.token_to_chars(t)[0]
            return t if start >= char else t + 1
        char += 1
    return len(enc.ids)


class TokenizeStage(Producer[Sample, TokenizedSample]):
    name = "tokenize"
    counts_inputs = True  # in: samples

    def __init__(self, tok: ChatTokenizer, loss_on: str = "all", batch_size: int = 64) -> None:
        super().__init__()
        self.tok = tok
        self.loss_on = loss_on
        self.batch_size = batch_size

    def produce(self, records: Iterable[Sample]) -> Iterator[TokenizedSample]:
        batch: list[Sample] = []
        for s in records:
            batch.append(s)
            if len(batch) >= self.batch_size:
                yield from self._flush(batch)
                batch = []
        if batch:
            yield from self._flush(batch)

    def _flush(self, batch: list[Sample]) -> Iterator[TokenizedSample]:
        ok: list[Sample] = []
        for s in batch:
            if not any(m["role"] == "assistant" for m in s.messages):
                self.drop(s.id, "no_assistant_turn", f"sample {s.id}: no assistant message to train on", s.to_row())
            else:
                ok.append(s)
        for s, (ids, labels) in zip(ok, self.tok.encode_chats([s.messages for s in ok], self.loss_on), strict=True):
            if not (labels != IGNORE_INDEX).any():
                self.drop(s.id, "no_loss_tokens", f"sample {s.id}: assistant turns are empty after tokenization", s.to_row())
                continue
            yield TokenizedSample(s.id, s.task, s.split, ids, labels)
