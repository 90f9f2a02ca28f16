"""The extension point of `lcdata eval`: one `EvalSuite` subclass per suite, registered by name.

A suite owns everything about itself: its config, its items, how one prediction is scored,
how its scores aggregate, its plot and the texts it registers for decontamination. The rest
of ``lcdata.evals`` looks suites up in `SUITES` (the built-in ones are defined, and so
registered, in ``lcdata.evals.suites``), so adding a suite is one class plus its test.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, create_model

from lcdata.filters.scoring import exact_match, normalize, token_f1

if TYPE_CHECKING:
    from lcdata.chat import ChatTokenizer


@dataclass
class EvalItem:
    id: str
    suite: str
    messages: list[dict[str, str]]
    answers: list[str]  # references; niah: the needle values, counterfactual: [memory, context]
    max_tokens: int = 64
    meta: dict[str, Any] = field(default_factory=dict)


# name -> suite class, in definition order (the order of `SuiteConfig`'s fields and of reports)
SUITES: dict[str, type[EvalSuite]] = {}
_RESERVED = {"seed", "suites"}  # SuiteConfig's own fields


class EvalSuite:
    """One eval suite. A subclass sets `name`, `primary` and `Config` and implements `items`
    and `score`; defining it registers it in `SUITES` (a shared intermediate base leaves
    `name` empty and is not registered). Everything is a classmethod: a suite holds no state,
    its config arrives as an argument."""

    name: ClassVar[str] = ""
    primary: ClassVar[str]  # the headline metric: a key of `aggregate`'s result
    summary: ClassVar[tuple[str, ...]] = ()  # the metrics summary.md shows (default: the primary)
    Config: ClassVar[type[BaseModel]]  # its `SuiteConfig` field; extra="forbid", every field defaulted
    small: ClassVar[dict[str, Any]] = {}  # Config overrides of `--size small` (the demo's suite)

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if not cls.name:
            return
        if not re.fullmatch(r"[a-z][a-z0-9_]*", cls.name) or cls.name in _RESERVED:
            raise TypeError(f"eval suite {cls.__qualname__}: name `{cls.name}` must be lower_snake_case "
                            f"(it names a config field and a file) and not one of {sorted(_RESERVED)}")
        for attr in ("primary", "Config"):
            if not hasattr(cls, attr):
                raise TypeError(f"eval suite {cls.__qualname__} must set `{attr}`")
        prev = SUITES.get(cls.name)
        # the same class defined again (a module reloaded) replaces itself; another one is a clash
        if prev is not None and (prev.__module__, prev.__qualname__) != (cls.__module__, cls.__qualname__):
            raise TypeError(f"eval suite `{cls.name}` is already registered by {prev.__module__}."
                            f"{prev.__qualname__}; give {cls.__qualname__} another `name`")
        SUITES[cls.name] = cls

    @classmethod
    def items(cls, cfg: Any, tok: ChatTokenizer, seed: int, window: int) -> Iterator[EvalItem]:
        """The suite's items for ``cfg`` (an instance of `Config`), deterministic in ``seed``;
        no prompt may exceed ``window`` tokens (raise a ValueError naming the setting to lower)."""
        raise NotImplementedError(f"eval suite {cls.__qualname__} must implement `items`")

    @classmethod
    def fingerprint(cls, cfg: Any) -> str:
        """The content of the suite's inputs outside lcdata (a user's file), for the cache key."""
        return ""

    @classmethod
    def files(cls, cfg: Any, tok: ChatTokenizer, seed: int) -> dict[str, str]:
        """Extra files (name -> text) written beside ``<name>.jsonl`` in the suite directory."""
        return {}

    @classmethod
    def score(cls, item: EvalItem, pred: str) -> dict[str, Any]:
        """The metrics of one prediction (JSON-serialisable: it is stored in scored.jsonl)."""
        raise NotImplementedError(f"eval suite {cls.__qualname__} must implement `score`")

    @classmethod
    def aggregate(cls, items: list[dict[str, Any]]) -> dict[str, Any]:
        """Metrics over scored records (``suite``, ``meta``, ``score``; at least one). Default:
        the count and the mean of every numeric score."""
        keys = [k for k, v in items[0]["score"].items() if isinstance(v, int | float)]
        return {"n": len(items)} | {k: mean([it["score"][k] for it in items]) for k in keys}

    @classmethod
    def plot(cls, by_model: dict[str, dict[str, Any]], out: Path) -> Path | None:
        """A PNG in ``out`` from each model's `aggregate` result (label -> metrics), or None."""
        return None

    @classmethod
    def registered_texts(cls) -> Iterator[str]:
        """Texts of this suite that the `decontaminate` filter's `lcdata_eval` source matches
        whole in training data (only the ones the shipped eval sets do not hold already)."""
        return iter(())


def suite_class(name: str) -> type[EvalSuite]:
    try:
        return SUITES[name]
    except KeyError:
        raise KeyError(f"unknown eval suite `{name}` (registered: {', '.join(SUITES)}); define an "
                       f"EvalSuite subclass with name = {name!r} and import its module first") from None


# ------------------------------------------------------------------ the config of all suites
class SuiteConfigBase(BaseModel):
    """What `lcdata eval` generates: `seed`, `suites` (which ones) and one field per registered
    suite (its Config), added by `suite_config_model`; `size` picks defaults, fields override them."""

    model_config = ConfigDict(extra="forbid")
    seed: int = 0

    def suite(self, name: str) -> Any:
        """The Config of suite ``name``."""
        return getattr(self, name)

    @classmethod
    def preset(cls, size: str, **kw: Any) -> SuiteConfigBase:
        if size == "full":
            return cls(**kw)
        if size == "small":  # `make demo` and the tests: about a minute per model on 2 CPU cores
            # an override replaces a suite's whole block (its unset fields take the full defaults)
            base = {n: s.Config(**s.small) for n, s in SUITES.items() if n in cls.model_fields}
            return cls(**{**base, **kw})
        raise ValueError(f"unknown suite size `{size}`; use `small` or `full`")


def suite_config_model() -> type[SuiteConfigBase]:
    """The SuiteConfig model of the suites registered now (one model per registry state)."""
    return _config_model(tuple(SUITES.items()))


@cache
def _config_model(suites: tuple[tuple[str, type[EvalSuite]], ...]) -> type[SuiteConfigBase]:
    names = tuple(n for n, _ in suites)
    fields: dict[str, Any] = {"suites": (list[Literal[names]], list(names))}  # type: ignore[valid-type]
    fields |= {n: (s.Config, s.Config()) for n, s in suites}
    return create_model("SuiteConfig", __base__=SuiteConfigBase, __module__=__name__, **fields)


# ------------------------------------------------------------------ shared scorers
def contains(pred: str, ref: str) -> float:
    """The normalised reference appears, as whole words, in the normalised prediction (small
    models answer in sentences, so exact match alone would read as zero)."""
    r = normalize(ref)
    return float(bool(r) and re.search(rf"(?<!\w){re.escape(r)}(?!\w)", normalize(pred)) is not None)


def qa_scores(pred: str, refs: list[str]) -> dict[str, float]:
    """SQuAD's exact match and token F1, and `contains`, each on the best reference."""
    return {"em": max(exact_match(pred, r) for r in refs), "f1": max(token_f1(pred, r) for r in refs),
            "contains": max(contains(pred, r) for r in refs)}


def mean(xs: list[float]) -> float:
    return round(sum(xs) / len(xs), 4) if xs else float("nan")
