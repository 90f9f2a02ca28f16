"""Tasks turn Contexts into Samples: programmatic long-range tasks here; LLM synthesis plugs
in beside them with the same Stage interface."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from lcdata.schema import Context, Sample
from lcdata.stage import Stage
from lcdata.tasks.lift import LiftStage, ShortQAStage
from lcdata.tasks.programmatic import run_tasks
from lcdata.tasks.synth import CompareStage, LLMStage, MultihopStage, SummaryStage
from lcdata.tokenize import ChatTokenizer

# LLM task kind -> its stage (each needs the engine; lineage under ``synthesize.<kind>``)
LLM_STAGES: dict[str, type[LLMStage]] = {
    "multihop": MultihopStage, "compare": CompareStage, "summary": SummaryStage,
    "lift": LiftStage, "short_qa": ShortQAStage,
}


class TaskStage(Stage[Context, Sample]):
    """``in`` contexts, ``out`` samples made (train and eval), drops by reason."""

    name = "tasks"

    def __init__(self, task_cfgs: list[Any], tok: ChatTokenizer, seed: int, short_max_tokens: int) -> None:
        super().__init__()
        self.task_cfgs = task_cfgs
        self.tok = tok
        self.seed = seed
        self.short_max = short_max_tokens

    def run(self, records: Iterable[Context]) -> Iterator[Sample]:
        for ctx in records:
            self.stats.in_ += 1
            for s in run_tasks(self.task_cfgs, ctx, self.seed, self.tok, self.short_max):
                self.stats.out += 1
                yield s
