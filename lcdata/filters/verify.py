"""Per-sample checks with the generation engine.

``VerifyStage`` proves long dependency: each eligible sample's question is answered three
ways, greedily: (a) closed-book, (b) with only a window of ``window_tokens`` around one
evidence span (tried for up to ``max_windows`` spans; the best counts), (c) with the full
context. Scores against the reference answer (``lcdata.filters.scoring``) are stored in
``meta.verify``; a sample stays when (c) succeeds and (a) and (b) fail. Drop reasons, in
this order: ``answerable_closed_book``, ``answerable_locally``, ``full_context_fails``; a sample whose
full-context prompt does not fit the engine's window is dropped unasked (``prompt_too_long``). The
stage's ``notes`` count every ablation independently (how many each one alone rejected).

``JudgeStage`` asks the engine for a 1-10 quality score with a reason (structured output)
and drops ``low_judge_score`` below ``min_score``.
"""

from __future__ import annotations

import json

from lcdata.chat import ChatTokenizer
from lcdata.config import JudgeFilter, VerifyFilter
from lcdata.engine import Engine, Request
from lcdata.filters.scoring import score
from lcdata.schema import PURPOSE_TRAIN, Sample
from lcdata.stage import KEEP, Filter, Verdict, reject
from lcdata.tasks.base import DOC_CLOSE, DOC_OPEN
from lcdata.tasks.synth import template

VERIFY_VERSION = "verify.v1"
BRIEF = "\n\nAnswer briefly."


def local_windows(s: Sample, tok: ChatTokenizer, window_tokens: int, max_windows: int) -> list[str]:
    """Text windows of ``window_tokens`` centred on evidence spans (first, last, then middle ones)."""
    text = s.context_text()
    off = tok.offsets(text)
    ev = sorted(s.evidence, key=lambda e: e.start)
    order = [ev[0], ev[-1], *ev[1:-1]] if len(ev) > 1 else ev
    out: list[str] = []
    for e in order[:max_windows]:
        mid = (e.token_start + e.token_end) // 2
        a = max(0, min(mid - window_tokens // 2, len(off) - window_tokens))
        b = min(len(off), a + window_tokens)
        if b > a:
            win = text[int(off[a][0]):int(off[b - 1][1])]
            if win not in out:
                out.append(win)
    return out


MATCH_VERSION = "answer_match.v1"
MATCH_SCHEMA = {"type": "object", "properties": {"correct": {"type": "boolean"}}, "required": ["correct"],
                "additionalProperties": False}


class VerifyStage(Filter[Sample]):
    name = "verify"
    batch_size = None  # one engine call for the whole shard's samples

    def _score(self, plan: list[tuple[Sample, int, int]], outs: list[str]) -> list[float]:
        """One score per answer, in request order: a metric against the reference, or (``llm``)
        the engine's yes/no on whether the answer matches it."""
        refs: list[tuple[Sample, str]] = []
        for s, _, n in plan:
            refs.extend([(s, s.answer)] * (n + 2))
        if self.cfg.metric != "llm":
            return [score(o, ref, self.cfg.metric) for o, (_, ref) in zip(outs, refs, strict=True)]
        tpl = template(MATCH_VERSION)
        reqs = [Request([{"role": "user", "content": tpl.format(question=s.question.strip()[:600],
                                                                reference=ref[:400], candidate=o[:400])}],
                        MATCH_SCHEMA, MATCH_VERSION, 16, temperature=0.0)
                for o, (s, ref) in zip(outs, refs, strict=True)]
        texts, _ = self.engine.generate_fitting(reqs, who=self.name) if reqs else ([], [])
        out = []
        for text in texts:
            if text is None:  # a question and two answers, capped: only a tiny window refuses one
                self.note("match_prompt_too_long")
                out.append(0.0)
                continue
            try:
                out.append(1.0 if json.loads(text)["correct"] is True else 0.0)
            except (json.JSONDecodeError, KeyError, TypeError):
                self.note("match_unparsable")
                out.append(0.0)
        return out

    def __init__(self, cfg: VerifyFilter, engine: Engine, tok: ChatTokenizer) -> None:
        super().__init__()
        self.cfg, self.engine, self.tok = cfg, engine, tok

    def examines(self, s: Sample) -> bool:
        """Training samples of ``tasks`` asked over their context, with evidence to window around."""
        return s.task in self.cfg.tasks and s.purpose == PURPOSE_TRAIN and s.context_message >= 0 and bool(s.evidence)

    def _req(self, content: str, kind: str) -> Request:
        return Request([{"role": "user", "content": content}], None, f"{VERIFY_VERSION}:{kind}", self.cfg.max_tokens,
                       temperature=0.0)

    def keep_batch(self, samples: list[Sample]) -> list[Verdict]:
        verdict: dict[str, Verdict] = {}
        asked: list[tuple[Sample, list[Request]]] = []
        for s in samples:
            q = s.question + BRIEF
            wins = local_windows(s, self.tok, self.cfg.window_tokens, self.cfg.max_windows)
            asked.append((s, [self._req(q, "closed"), *(self._req(DOC_OPEN + w + DOC_CLOSE + q, "local") for w in wins),
                              self._req(DOC_OPEN + s.context_text() + DOC_CLOSE + q, "full")]))
        why = iter(self.engine.too_long([r for _, rs in asked for r in rs]))
        plan: list[tuple[Sample, int, int]] = []  # sample, first request, number of windows
        reqs: list[Request] = []
        for s, rs in asked:
            long = [w for w in (next(why) for _ in rs) if w]
            if long:  # the full-context prompt: every other one is shorter
                verdict[s.id] = reject("prompt_too_long", f"{s.id} (context {s.context_id}): the full-context "
                                       f"answer's {long[-1]}; raise engine.max_model_len or lower assemble.buckets")
                continue
            plan.append((s, len(reqs), len(rs) - 2))
            reqs.extend(rs)
        outs = self.engine.generate(reqs, who=self.name) if reqs else []
        scores = self._score(plan, outs)
        for s, i, n in plan:
            closed = scores[i]
            local = max(scores[i + 1:i + 1 + n], default=0.0)
            full = scores[i + 1 + n]
            s.meta["verify"] = {"metric": self.cfg.metric, "closed": round(closed, 4), "local": round(local, 4),
                                "full": round(full, 4), "answers": {"closed": outs[i][:200],
                                                                    "full": outs[i + 1 + n][:200]}}
            self.note("checked")
            fails = {"answerable_closed_book": closed >= self.cfg.closed_max,
                     "answerable_locally": local >= self.cfg.local_max,
                     "full_context_fails": self.cfg.require_full and full < self.cfg.full_min}
            for k, v in fails.items():
                self.note(k, int(v))
            reason = next((k for k, v in fails.items() if v), None)
            if reason:
                verdict[s.id] = reject(reason, f"closed {closed:.2f}, local {local:.2f}, full {full:.2f} "
                                               f"({self.cfg.metric})")
        return [verdict.get(s.id, KEEP) for s in samples]


JUDGE_VERSION = "judge.v1"
JUDGE_SCHEMA = {
    "type": "object",
    "properties": {"score": {"type": "integer", "minimum": 1, "maximum": 10},
                   "reason": {"type": "string", "maxLength": 200}},
    "required": ["score", "reason"],
    "additionalProperties": False,
}


class JudgeStage(Filter[Sample]):
    name = "judge"
    batch_size = None  # one engine call for the whole shard's samples

    def __init__(self, cfg: JudgeFilter, engine: Engine) -> None:
        super().__init__()
        self.cfg, self.engine = cfg, engine

    def examines(self, s: Sample) -> bool:
        return s.task in self.cfg.tasks and s.purpose == PURPOSE_TRAIN

    def keep_batch(self, samples: list[Sample]) -> list[Verdict]:
        todo = samples
        tpl = template(JUDGE_VERSION)
        reqs = [Request([{"role": "user", "content": tpl.format(
            question=s.question.strip()[:600], answer=s.answer[:600],
            evidence="\n".join(f"- {e.text[:300]}" for e in s.evidence[:6]) or "(none recorded)")}],
            JUDGE_SCHEMA, JUDGE_VERSION, 128, temperature=0.0) for s in todo]
        texts, whys = self.engine.generate_fitting(reqs, who=self.name) if reqs else ([], [])
        done = {s.id: (t, w) for s, t, w in zip(todo, texts, whys, strict=True)}
        out = []
        for s in samples:
            text, why = done.get(s.id, (None, None))
            if why:
                out.append(reject("prompt_too_long", f"{s.id}: the judge's {why}; raise engine.max_model_len"))
            else:
                out.append(self._verdict(s, text) if text is not None else KEEP)
        return out

    def _verdict(self, s: Sample, out: str) -> Verdict:
        try:
            obj = json.loads(out)
            sc, why = int(obj["score"]), str(obj["reason"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            self.note("unparsable_kept")  # a judge failure is not the sample's fault
            s.meta["judge"] = None
            return KEEP
        s.meta["judge"] = {"score": sc, "reason": why}
        self.note(f"score_{sc:02d}")
        if sc < self.cfg.min_score:
            return reject("low_judge_score", f"judge score {sc} < {self.cfg.min_score}: {why}")
        return KEEP
