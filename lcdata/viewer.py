"""`lcdata inspect` and `lcdata show`: polars summaries of a built dataset, and one packed
row decoded sample by sample with the trained spans marked."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl

from lcdata.schema import IGNORE_INDEX
from lcdata.shards import SHARD_DIR, load_manifest


def _hist(values: pl.Series, edges: list[float]) -> list[tuple[str, int]]:
    out = []
    for a, b in zip(edges, edges[1:], strict=False):
        n = int(((values >= a) & (values < b)).sum()) if len(values) else 0
        out.append((f"[{a:g}, {b:g})" if b != float("inf") else f">= {a:g}", n))
    return out


def summarize(dir_: Path) -> dict[str, Any]:
    dir_ = Path(dir_)
    m = load_manifest(dir_)
    rows = pl.scan_ipc(str(dir_ / SHARD_DIR / "*.arrow"))
    per_row = rows.select(
        pl.col("input_ids").list.len().alias("tokens"),
        pl.col("seq_lens").list.len().alias("samples"),
        (pl.col("labels").list.eval(pl.element() != IGNORE_INDEX).list.sum()).alias("loss_tokens"),
    ).collect()
    seq_lens = rows.select(pl.col("seq_lens").explode()).collect()["seq_lens"]
    samples = pl.concat([pl.scan_ipc(str(dir_ / f)) for f in m["samples_files"]]) if m["samples_files"] else None
    out: dict[str, Any] = {"name": m["name"], "seq_len": m["seq_len"], "totals": m["totals"], "lineage": m["lineage"]}
    out["rows"] = {
        "count": per_row.height,
        "fill_mean": float(per_row["tokens"].mean() / m["seq_len"]) if per_row.height else 0.0,
        "samples_per_row_mean": float(per_row["samples"].mean()) if per_row.height else 0.0,
    }
    out["loss_token_share"] = m["totals"]["loss_tokens"] / max(1, m["totals"]["tokens"])
    top = max(m["seq_len"], 1)
    edges = sorted({0, *[top // 2**k for k in range(6, -1, -1)], top + 1})
    out["sample_length_hist"] = _hist(seq_lens.cast(pl.Float64), edges)
    if samples is not None:
        s = samples.select("task", "split", "context_tokens", "context_chars", "evidence").collect()
        out["tasks"] = dict(s.group_by("task").len().sort("task").iter_rows())
        out["splits"] = dict(s.group_by("split").len().sort("split").iter_rows())
        depths = s.select(pl.col("evidence").explode().struct.field("depth")).drop_nulls()["depth"]
        out["evidence_depth_hist"] = _hist(depths.cast(pl.Float64), [i / 10 for i in range(10)] + [1.0001])
        # distance between the first and the last evidence span, as a fraction of the context
        starts = pl.col("evidence").list.eval(pl.element().struct.field("start"))
        dist = s.filter(pl.col("evidence").list.len() >= 2).select(
            ((starts.list.max() - starts.list.min()) / pl.col("context_chars")).alias("d"))["d"]
        out["evidence_distance_hist"] = _hist(dist.cast(pl.Float64), [i / 10 for i in range(10)] + [1.0001])
        tstarts = pl.col("evidence").list.eval(pl.element().struct.field("token_start"))
        per = s.with_columns(
            pl.col("evidence").list.len().alias("n_ev"),
            pl.when(pl.col("evidence").list.len() >= 2).then(tstarts.list.max() - tstarts.list.min()).alias("dist_tok"),
            pl.col("evidence").list.eval(pl.element().struct.field("depth")).list.mean().alias("depth"),
        )
        tok_edges = sorted({0, *[top // 2**k for k in range(6, -1, -1)]}) + [float("inf")]
        out["evidence_distance_tokens_hist"] = _hist(per["dist_tok"].drop_nulls().cast(pl.Float64), tok_edges)
        # one line per task: how much evidence it records, where, and how far apart
        by_task = per.group_by("task").agg(
            pl.len().alias("samples"),
            (pl.col("n_ev") > 0).mean().alias("with_ev"),
            pl.col("n_ev").mean().alias("spans"),
            pl.col("depth").mean().alias("depth"),
            pl.col("dist_tok").median().alias("dist_tok"),
            pl.col("context_tokens").mean().alias("ctx_tok"),
        ).sort("task")
        out["task_evidence"] = by_task.to_dicts()
    if m["lineage"].get("synthesis"):
        out["synthesis"] = m["lineage"]["synthesis"]
    out["checks"] = checks(m["lineage"]["stages"])
    return out


# (stage, what is checked, note counting the examined, note or drop reason counting the rejected)
CHECKS = [
    ("synthesize.multihop", "atomic question closed-book (the generator knows it)", "atoms_checked",
     "atoms_closed_book"),
    ("synthesize.multihop", "certificate: one local window holds every span", "certificates", "window_holds_all"),
    ("verify", "closed-book answer matches", "checked", "answerable_closed_book"),
    ("verify", "a local window around one span answers", "checked", "answerable_locally"),
    ("verify", "full context fails", "checked", "full_context_fails"),
]


def checks(stages: dict[str, Any]) -> list[dict[str, Any]]:
    """How many samples (or atomic parts) each long-dependency check examined and how many it
    rejected on its own (a sample may fail several; its drop names the first)."""
    out = []
    for stage, what, examined, rejected in CHECKS:
        st = stages.get(stage)
        if st is None:
            continue
        notes = st.get("notes", {})
        n_rej = notes.get(rejected, st.get("dropped", {}).get(rejected, 0))
        out.append({"stage": stage, "check": what, "examined": notes.get(examined, 0), "rejected": n_rej})
    return out


def print_summary(info: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    c = Console(emoji=False)
    t = info["totals"]
    c.print(f"[bold]{info['name']}[/]: {t['rows']:,} rows x seq_len {info['seq_len']:,}, "
            f"{t['samples']:,} samples, {t['tokens']:,} tokens, fill {t['fill']:.2%}, "
            f"loss tokens {info['loss_token_share']:.2%}")

    def table(title: str, items: list[tuple[str, Any]] | dict[str, Any], cols: tuple[str, str]) -> None:
        rows = list(items.items() if isinstance(items, dict) else items)
        top = max((v for _, v in rows), default=0) or 1
        tb = Table(title=title, title_justify="left")
        tb.add_column(cols[0])
        tb.add_column(cols[1], justify="right")
        tb.add_column("")
        for k, v in rows:
            tb.add_row(str(k), f"{v:,}", "#" * round(30 * v / top))
        c.print(tb)

    if "tasks" in info:
        table("task types (samples made for training)", info["tasks"], ("task", "samples"))
        table("splits", info["splits"], ("split", "samples"))
    table("packed sample length (tokens)", info["sample_length_hist"], ("range", "samples"))
    if "evidence_depth_hist" in info:
        table("evidence depth (0 = start of context)", info["evidence_depth_hist"], ("depth", "spans"))
        table("evidence distance, first to last span (fraction of context)", info["evidence_distance_hist"],
              ("distance", "samples"))
        table("evidence distance, first to last span (tokens)", info["evidence_distance_tokens_hist"],
              ("tokens", "samples"))
    if info.get("task_evidence"):
        tb = Table(title="evidence per task (training samples): share with evidence, spans/sample, mean depth, "
                   "median first-to-last distance in tokens, mean context tokens", title_justify="left")
        cols = ["task", "samples", "with_ev", "spans", "depth", "dist_tok", "ctx_tok"]
        for col in cols:
            tb.add_column(col, justify="left" if col == "task" else "right")
        for r in info["task_evidence"]:
            tb.add_row(*[_fmt(r[k]) for k in cols])
        c.print(tb)
    if info.get("synthesis"):
        tb = Table(title="LLM synthesis: planned = made + dropped", title_justify="left")
        for col in ("task", "planned", "made", "dropped by reason"):
            tb.add_column(col)
        for k, v in info["synthesis"].items():
            tb.add_row(k, f"{v['planned']:,}", f"{v['made']:,}",
                       ", ".join(f"{r}={n}" for r, n in v["dropped"].items()) or "-")
        c.print(tb)
    if info.get("checks"):
        tb = Table(title="long-dependency checks: examined, rejected by this check alone", title_justify="left")
        for col in ("stage", "check", "examined", "rejected"):
            tb.add_column(col)
        for r in info["checks"]:
            tb.add_row(r["stage"], r["check"], f"{r['examined']:,}", f"{r['rejected']:,}")
        c.print(tb)
    lin = info["lineage"]
    tb = Table(title="lineage and drop reasons", title_justify="left")
    for col in ("stage", "in", "out", "dropped"):
        tb.add_column(col)
    for name, st in lin["stages"].items():
        tb.add_row(name, f"{st['in']:,}", f"{st['out']:,}", ", ".join(f"{k}={v}" for k, v in st["dropped"].items()) or "-")
    c.print(tb)
    for name, st in lin["stages"].items():
        if st.get("notes"):  # per-check counts (verify: each ablation alone; rebalance: histograms)
            c.print(f"{name}: " + ", ".join(f"{k}={v:,}" for k, v in st["notes"].items()))
    d, s = lin["documents"], lin["samples"]
    c.print(f"documents: read {d['read']:,} = used {d['used']:,} + dropped {sum(d['dropped'].values()):,}; "
            f"samples: made {s['made']:,} = packed {s['packed']:,} + eval {s['eval']:,} + dropped {sum(s['dropped'].values()):,}")


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.2f}" if v < 10 else f"{v:,.0f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def read_row(dir_: Path, row: int) -> dict[str, Any]:
    m = load_manifest(Path(dir_))
    if not 0 <= row < m["totals"]["rows"]:
        raise IndexError(f"row {row} out of range: the dataset has {m['totals']['rows']} rows (0..{m['totals']['rows'] - 1})")
    for s in m["shards"]:
        if row < s["rows"]:
            import pyarrow as pa
            import pyarrow.ipc as ipc

            t = ipc.open_file(pa.memory_map(str(Path(dir_) / SHARD_DIR / s["path"]))).read_all()
            return t.slice(row, 1).to_pylist()[0] | {"shard": s["path"]}
        row -= s["rows"]
    raise IndexError(row)  # pragma: no cover


def render_row(dir_: Path, row: int, max_chars: int = 600, markup: bool = True) -> str:
    """One packed row, sample by sample; trained (loss) spans marked; long untrained spans elided."""
    from lcdata.chat import ChatTokenizer

    m = load_manifest(Path(dir_))
    r = read_row(dir_, row)
    tok = ChatTokenizer(m["tokenizer"]["model"])
    lines = [f"row {row} ({r['shard']}): {len(r['input_ids'])} tokens, {len(r['seq_lens'])} samples"]
    start = 0
    for sid, n in zip(r["sample_ids"], r["seq_lens"], strict=True):
        ids = r["input_ids"][start:start + n]
        labels = r["labels"][start:start + n]
        pos = r["position_ids"][start:start + n]
        n_loss = sum(1 for x in labels if x != IGNORE_INDEX)
        lines.append(f"\n--- sample {sid}: tokens {start}..{start + n - 1}, position_ids {pos[0]}..{pos[-1]}, loss tokens {n_loss}")
        # group consecutive tokens by trained / not trained
        segs: list[tuple[bool, list[int]]] = []
        for t, lab in zip(ids, labels, strict=True):
            trained = lab != IGNORE_INDEX
            if segs and segs[-1][0] == trained:
                segs[-1][1].append(t)
            else:
                segs.append((trained, [t]))
        for trained, toks in segs:
            text = tok.decode(toks)
            if trained:
                lines.append(f"[bold green]⟦{_esc(text, markup)}⟧[/]" if markup else f"⟦{text}⟧")
            else:
                if len(text) > max_chars:
                    h = max_chars // 2
                    text = f"{text[:h]} … [{len(text) - 2 * h:,} chars] … {text[-h:]}"
                lines.append(f"[dim]{_esc(text, markup)}[/]" if markup else text)
        start += n
    return "\n".join(lines)


def find_sample(dir_: Path, sample_id: str | None = None, task: str | None = None, index: int = 0) -> dict[str, Any]:
    """A Sample row from the dataset's samples (training) or eval files, by id or by task."""
    dir_ = Path(dir_)
    m = load_manifest(dir_)
    files = [str(dir_ / f) for f in m["samples_files"] + m["eval_files"]]
    if not files:
        raise ValueError(f"{dir_}: the manifest lists no samples files")
    lf = pl.concat([pl.scan_ipc(f) for f in files])
    if sample_id is not None:
        lf = lf.filter(pl.col("id") == sample_id)
    elif task is not None:
        lf = lf.filter(pl.col("task") == task)
    rows = lf.slice(index, 1).collect().to_dicts()
    if not rows:
        tasks = sorted(pl.concat([pl.scan_ipc(f) for f in files]).select("task").unique().collect()["task"].to_list())
        what = f"id {sample_id!r}" if sample_id is not None else f"task {task!r} index {index}"
        raise ValueError(f"{dir_}: no sample with {what}; tasks present: {', '.join(tasks)}")
    return rows[0]


def render_sample(row: dict[str, Any], max_chars: int = 300, markup: bool = True) -> str:
    """One Sample record: its facts, then its messages with the evidence marked «like this» and
    the context between evidence spans elided."""
    ev = sorted(row["evidence"], key=lambda e: e["start"])
    meta = json.loads(row["meta"] or "{}")
    lines = [f"sample {row['id']}  task={row['task']} split={row['split']} purpose={row['purpose']} "
             f"context={row['context_id']} ({row['context_tokens']:,} tokens)"]
    for e in ev:
        lines.append(f"  evidence chars {e['start']:,}..{e['end']:,} tokens {e['token_start']:,}..{e['token_end']:,} "
                     f"depth {e['depth']:.2f}: {e['text'][:80]!r}")
    if "distance_tokens" in meta:
        lines.append(f"  distance first..last span: {meta['distance_tokens']:,} tokens ({meta['distance_frac']:.0%} of the context)")
    shown = {k: v for k, v in meta.items() if k not in ("distance_tokens", "distance_frac", "section_summaries")}
    lines.append(f"  meta {json.dumps(shown)[:300]}")

    def elide(t: str) -> str:
        if len(t) > max_chars:
            h = max_chars // 2
            t = f"{t[:h]} … [{len(t) - 2 * h:,} chars] … {t[-h:]}"
        return _esc(t, markup)

    for i, msg in enumerate(row["messages"]):
        lines.append(f"\n[{msg['role']}]" if not markup else f"\n[bold]\\[{msg['role']}][/]")
        c = msg["content"]
        if i != row["context_message"]:
            lines.append(elide(c))
            continue
        a, b = row["context_offset"], row["context_offset"] + row["context_chars"]
        out, pos = [elide(c[:a])], a
        for e in ev:
            s, t = a + e["start"], a + e["end"]
            if s < pos:
                continue
            out.append(elide(c[pos:s]))
            span = _esc(c[s:t], markup)
            out.append(f"[bold green]«{span}»[/]" if markup else f"«{span}»")
            pos = t
        out.append(elide(c[pos:b]))
        out.append(elide(c[b:]))
        lines.append("".join(out))
    return "\n".join(lines)


def _esc(text: str, markup: bool) -> str:
    if not markup:
        return text
    from rich.markup import escape

    return escape(text)


def export_qa(dir_: Path, out: Path, tasks: list[str] | None = None, split: str = "all") -> dict[str, int]:
    """A built dataset's samples as a long-QA file for ``lcdata eval --qa``: one JSON line per
    sample that carries its context (``question``, ``answer``, ``context``, plus its evidence
    depths and first-to-last distance in tokens, and a composed sample's ``parts``: its atoms'
    answers), so a build over held-out documents becomes an evaluation suite. Samples the
    whole-build filters dropped (``rejects/_build.arrow``: near-duplicate questions, depth
    rebalancing) are left out, as the build left them out. Returns the count per task."""
    from lcdata.arrowio import write_text
    from lcdata.schema import Sample

    dir_ = Path(dir_)
    m = load_manifest(dir_)
    if split not in ("all", "train", "eval"):
        raise ValueError(f"`--split` must be all, train or eval, got {split!r}")
    names = (m["samples_files"] if split in ("all", "train") else []) + (m["eval_files"] if split in ("all", "eval") else [])
    files = [str(dir_ / f) for f in names]
    if not files:
        raise ValueError(f"{dir_}: the manifest lists no {split} samples files")
    lf = pl.concat([pl.scan_ipc(f) for f in files])
    dropped = dir_ / "rejects" / "_build.arrow"
    if dropped.is_file():
        lf = lf.filter(~pl.col("id").is_in(pl.read_ipc(dropped, columns=["record_id"])["record_id"].to_list()))
    if tasks:
        present = set(lf.select("task").unique().collect()["task"].to_list())
        missing = [t for t in tasks if t not in present]
        if missing:
            raise ValueError(f"{dir_}: no samples of task {', '.join(missing)}; tasks present: {', '.join(sorted(present))}")
        lf = lf.filter(pl.col("task").is_in(tasks))
    lines, counts = [], {}
    for row in lf.sort("id").collect().iter_rows(named=True):
        s = Sample.from_row(row)
        if s.context_message < 0 or not s.question or not s.answer:
            continue  # closed-book samples (LIFT memorisation, closed-book QA) carry no context
        ev = sorted(s.evidence, key=lambda e: e.token_start)
        rec = {"id": s.id, "task": s.task, "question": s.question, "answer": s.answer, "context": s.context_text(),
               "context_tokens": s.context_tokens, "evidence_depths": [round(e.depth, 4) for e in s.evidence],
               "evidence_distance_tokens": ev[-1].token_end - ev[0].token_start if ev else None}
        if s.meta.get("atoms"):  # a composed answer's parts, scored one by one (`user_qa`'s `parts`)
            rec["parts"] = [a["answer"] for a in s.meta["atoms"]]
        lines.append(json.dumps(rec, ensure_ascii=False) + "\n")
        counts[s.task] = counts.get(s.task, 0) + 1
    if not lines:
        raise ValueError(f"{dir_}: no sample with a context, a question and an answer to export")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(out, "".join(lines))
    return counts
