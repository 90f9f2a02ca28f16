"""Tasks turn Contexts into Samples. Every task kind is one class registered in ``TASKS``
(``lcdata.tasks.base.Task``): programmatic tasks (``programmatic.py``) run together in the
``tasks`` stage; each LLM task (``multihop.py``, ``compare.py``, ``summary.py``, ``lift.py``) is a stage of its own."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from lcdata.chat import ChatTokenizer
from lcdata.schema import Context, Sample
from lcdata.stage import Producer
from lcdata.tasks import compare, lift, multihop, programmatic, summary, synth  # noqa: F401 - defining the classes registers them
from lcdata.tasks.base import TASKS, ProgrammaticTask


class ProgrammaticTasks(Producer[Context, Sample]):
    """Every configured programmatic task on each context, in config order: ``in`` contexts,
    ``out`` samples made (train and eval)."""

    name = "tasks"
    counts_inputs = True  # in: contexts

    def __init__(self, task_cfgs: list[Any], tok: ChatTokenizer, seed: int, short_max_tokens: int) -> None:
        super().__init__()
        self.tasks: list[ProgrammaticTask] = []
        made: dict[str, int] = {}
        for cfg in task_cfgs:
            cls = TASKS[cfg.kind]
            if issubclass(cls, ProgrammaticTask):
                self.tasks.append(cls(cfg, tok, seed, short_max_tokens, first_index=made.get(cfg.kind, 0)))
                made[cfg.kind] = made.get(cfg.kind, 0) + cfg.per_context

    def produce(self, records: Iterable[Context]) -> Iterator[Sample]:
        for ctx in records:
            for t in self.tasks:
                yield from t.plan(ctx)
