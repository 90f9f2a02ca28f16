"""`lcdata eval`: one suite, several models (base vs trained), the same vLLM engine as synthesis.

Layout of ``OUT``::

    config.json            the resolved eval config
    suite/                 a copy of the cached suite (suite.json with its version and sha256s)
    <label>/predictions.jsonl   one line per item: prediction and score
    <label>/engine.log     the generation process's output
    results.json           per model and suite: metrics and breakdowns
    summary.md             the comparison table
    niah.png, multihop.png, counterfactual.png, summary.png

Each model is generated in its own process (one vLLM engine at a time, its memory and
threads gone when it ends). Generation is greedy; predictions are cached per model content
(a retrained model in the same directory is generated again).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from lcdata.engine import Backend, EngineConfig, Request
from lcdata.engine import model_window as engine_window
from lcdata.evals.score import aggregate, score_item
from lcdata.evals.suites import (
    SUITE_VERSION,
    SUITES,
    SuiteConfigBase,
    generate_suite,
    load_items,
    suite_config_model,
    tokenizer_fingerprint,
)

ANSWER_TOKENS = 64  # the longest answer an item asks for: prompts are at most window - this


class EvalEngine(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dtype: str = "bfloat16"
    kv_cache_gib: float = 2.0
    batch_size: int = Field(32, ge=1)
    enforce_eager: bool = True
    max_model_len: int | None = Field(None, description="A cap on each model's window. Default: each model's "
                                      "own (max_position_embeddings with its RoPE scaling, as vLLM derives it).")


class EvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    size: str = Field("full", description="`full` or `small` (the demo's): the suite defaults.")
    suite: dict[str, Any] = Field(default_factory=dict, description="Overrides of the suite config (SuiteConfig).")
    engine: EvalEngine = EvalEngine()

    def suite_config(self) -> SuiteConfigBase:
        # the model of the suites registered now, so a suite defined outside suites.py is known
        return suite_config_model().preset(self.size, **self.suite)


class EvalError(ValueError):
    pass


def load_eval_config(path: Path | None, **overrides: Any) -> EvalConfig:
    raw: dict[str, Any] = {}
    if path:
        if not path.is_file():
            raise EvalError(f"eval config {path} not found")
        raw = yaml.safe_load(path.read_text()) or {}
        if not isinstance(raw, dict):
            raise EvalError(f"{path}: expected a mapping with `size`, `suite`, `engine`")
    for k, v in overrides.items():
        if v is not None:
            if k == "suites":
                raw.setdefault("suite", {})["suites"] = v
            elif k == "qa":  # `lcdata eval --qa FILE`: the user_qa suite's file
                raw.setdefault("suite", {}).setdefault("user_qa", {})["path"] = v
            else:
                raw[k] = v
    try:
        cfg = EvalConfig(**raw)
        cfg.suite_config()  # validate the overrides now, with a clear message
    except Exception as e:
        raise EvalError(f"{path or 'eval config'}: {e}") from None
    return cfg


def parse_models(specs: list[str]) -> list[tuple[str, Path]]:
    """``label=DIR`` or ``DIR`` (label = the directory's name, made unique)."""
    out: list[tuple[str, Path]] = []
    for s in specs:
        label, _, path = s.rpartition("=") if "=" in s else ("", "", s)
        p = Path(path)
        if not (p / "config.json").is_file():
            raise EvalError(f"model {p} has no config.json; pass a Hugging Face model directory "
                            "(`lcdata model prepare`, or a trainer run's final/)")
        label = label or p.name
        while label in {x for x, _ in out}:
            label += "_"
        out.append((label, p))
    return out


def model_fingerprint(model_dir: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(model_dir.iterdir()):
        if p.is_file() and (p.suffix in (".json", ".safetensors", ".bin") or p.name == "chat_template.jinja"):
            h.update(p.name.encode())
            with p.open("rb") as f:
                while chunk := f.read(1 << 24):
                    h.update(chunk)
    return h.hexdigest()[:16]


def model_window(model_dir: Path, cfg: EvalEngine) -> int:
    """The evaluated model's own window (a context-extended model's extended one), capped by
    ``engine.max_model_len`` when set."""
    own = engine_window(model_dir)
    return min(own, cfg.max_model_len or own)


# --------------------------------------------------------------- generation (child process)
def generate_predictions(model: Path, suite_dir: Path, out: Path, engine: EvalEngine, max_model_len: int,
                         backend: Backend | None = None) -> None:
    """Greedy answers for every item of ``suite_dir`` (run in a child process) whose prompt fits
    ``max_model_len``, this model's window; a longer item (the suite goes up to the longest window
    of the models compared) gets no prediction (``null``, ``"skipped": "prompt_too_long"``).
    ``backend``: a test's scripted one."""
    from lcdata.engine import Engine

    items = load_items(suite_dir)
    fp = model_fingerprint(model)
    cfg = EngineConfig(model=str(model), dtype=engine.dtype, max_model_len=max_model_len, temperature=0.0,
                       kv_cache_gib=engine.kv_cache_gib, batch_size=engine.batch_size,
                       enforce_eager=engine.enforce_eager, max_tokens=ANSWER_TOKENS)
    eng = Engine(cfg, out.parent / "cache", backend=backend)
    reqs = [Request(messages=it.messages, max_tokens=it.max_tokens, temperature=0.0,
                    template_version=f"eval.v{SUITE_VERSION}.{fp}") for it in items]
    preds, _ = eng.generate_fitting(reqs)
    tmp = out.with_name(f".{out.name}.tmp")
    with tmp.open("w") as f:
        for it, pred in zip(items, preds, strict=True):
            rec = {"id": it.id, "suite": it.suite, "prediction": None, "skipped": "prompt_too_long"} if pred is None \
                else {"id": it.id, "suite": it.suite, "prediction": pred}
            f.write(json.dumps(rec) + "\n")
    os.replace(tmp, out)
    (out.parent / "model.json").write_text(json.dumps({"path": str(model), "fingerprint": fp, "window": max_model_len,
                                                        "engine_calls": eng.calls}) + "\n")


def _child(argv: list[str]) -> int:
    model, suite_dir, out, engine_json, mml = argv
    generate_predictions(Path(model), Path(suite_dir), Path(out), EvalEngine(**json.loads(engine_json)), int(mml))
    return 0


# --------------------------------------------------------------- the command
def evaluate(models: list[str], out: Path, cfg: EvalConfig, log: Any = print) -> dict[str, Any]:
    pairs = parse_models(models)
    if not pairs:
        raise EvalError("give at least one model directory")
    tok_fps = {tokenizer_fingerprint(p) for _, p in pairs}
    if len(tok_fps) > 1:
        raise EvalError("the models have different tokenizers; a suite's prompt lengths are counted with one: "
                        "evaluate them separately")
    # each model is asked in its own window; the suite reaches the longest (a context-extended
    # model past its base's), and a model answers the items that fit its window
    windows = {label: model_window(p, cfg.engine) for label, p in pairs}
    window = max(windows.values())
    scfg = cfg.suite_config()
    suite_dir = generate_suite(scfg, pairs[0][1], window - ANSWER_TOKENS)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps({"models": {k: str(v) for k, v in pairs}, "eval": cfg.model_dump(mode="json"),
                                                 "suite": scfg.model_dump(mode="json")}, indent=2) + "\n")
    if (out / "suite").exists():
        shutil.rmtree(out / "suite")
    shutil.copytree(suite_dir, out / "suite")
    suite_meta = json.loads((suite_dir / "suite.json").read_text())
    items = {it.id: it for it in load_items(suite_dir)}
    log(f"suite v{SUITE_VERSION} {suite_meta['key']}: {len(items)} items "
        f"({', '.join(f'{k} {sum(1 for i in items.values() if i.suite == k)}' for k in scfg.suites)}), cached in {suite_dir}")
    results: dict[str, Any] = {"suite_version": SUITE_VERSION, "suite_key": suite_meta["key"], "window": window,
                               "models": {}}
    for label, path in pairs:
        d = out / label
        d.mkdir(exist_ok=True)
        pred_file = d / "predictions.jsonl"
        fp = model_fingerprint(path)
        done = d / "model.json"
        fresh = pred_file.is_file() and done.is_file() \
            and {k: json.loads(done.read_text()).get(k) for k in ("fingerprint", "window")} == \
            {"fingerprint": fp, "window": windows[label]} \
            and {json.loads(x)["id"] for x in pred_file.read_text().splitlines()} == set(items)
        if not fresh:
            log(f"[{label}] generating {len(items)} answers with vLLM ({path}) ...")
            cmd = [sys.executable, "-m", "lcdata.evals.run", str(path), str(out / "suite"), str(pred_file),
                   cfg.engine.model_dump_json(), str(windows[label])]
            with (d / "engine.log").open("w") as logf:
                rc = subprocess.call(cmd, stdout=logf, stderr=subprocess.STDOUT)
            if rc != 0:
                tail = (d / "engine.log").read_text()[-3000:]
                raise EvalError(f"[{label}] generation failed (exit {rc}); the end of {d / 'engine.log'}:\n{tail}")
        scored = []
        skipped = 0
        with (d / ".scored.tmp").open("w") as f:
            for line in pred_file.read_text().splitlines():
                p = json.loads(line)
                if p.get("skipped"):
                    skipped += 1  # longer than this model's window: not asked, not scored
                    continue
                it = items[p["id"]]
                s = score_item(it, p["prediction"])
                rec = {"id": it.id, "suite": it.suite, "meta": it.meta, "answers": it.answers,
                       "prediction": p["prediction"], "score": s}
                scored.append(rec)
                f.write(json.dumps(rec) + "\n")
        os.replace(d / ".scored.tmp", d / "scored.jsonl")
        results["models"][label] = {"path": str(path), "fingerprint": fp, "window": windows[label],
                                    "beyond_window": skipped, "suites": aggregate(scored)}
        log(f"[{label}] " + ", ".join(f"{k} {v['primary']} {v['value']:.3f}" for k, v in results["models"][label]["suites"].items()))
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "summary.md").write_text(summary_table(results) + "\n")
    from lcdata.evals.plots import plot_results

    plot_results(results, out)
    return results


def summary_table(results: dict[str, Any]) -> str:
    labels = list(results["models"])
    lines = ["| suite | metric | " + " | ".join(labels) + " |", "|---|---|" + "---|" * len(labels)]
    rows: list[tuple[str, str]] = []
    for name, suite in SUITES.items():
        present = [results["models"][m]["suites"].get(name) for m in labels]
        if not any(present):
            continue
        first = next(p for p in present if p)
        rows += [(name, k) for k in suite.summary or (suite.primary,) if k in first]
    for suite, k in rows:
        vals = []
        for m in labels:
            v = results["models"][m]["suites"].get(suite, {}).get(k)
            vals.append("-" if v is None else f"{v:.3f}")
        lines.append(f"| {suite} | {k} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))
