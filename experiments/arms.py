"""The four-arm experiment of issue #18: does lcdata's long data, and its verification, teach
long context, against short-only SFT (the null hypothesis) and the same data unfiltered?

    .venv/bin/python experiments/arms.py                # after `make setup model data`
    .venv/bin/python experiments/arms.py --seeds 0 --steps 12   # a smaller run

From one base (SmolLM2-135M-Instruct), the same token budget, schedule and seeds:

- ``verified``: composed multi-hop + needles + kv tracking + LIFT + short QA, with the
  evidence-distance and verify (closed-book / local-window ablation) filters on, packed with
  a 30 % short-token share;
- ``unfiltered``: the same generation (the engine's request cache is copied, so the same
  samples) with the distance and verify filters off;
- ``short``: short-window QA only (<= 1K-token windows of the same documents);
- ``base``: no training.

Held out of every training build: a seeded group of plays and stdlib packages. A multi-hop
build over them (verified the same way) is exported with ``lcdata export-qa`` and evaluated as
the ``user_qa`` suite; the training builds list that file in ``decontaminate.files``, so any
shared 13-gram would be dropped (and counted). Evaluation: NIAH, HotpotQA in a haystack at
distance, SQuAD retention, the counterfactual context-vs-memory probe, the held-out multi-hop;
each metric with a bootstrap 95 % interval over items (seeds averaged per item), and paired
intervals for the differences between arms.

Every step runs in its own directory under ``--out`` and is skipped on a rerun once done
(``.done/<step>``); wall times go to ``times.json``; the results to ``results.md``,
``results.json`` and ``plots/``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / ".venv" / "bin"
MODEL = "models/smollm2-135m-instruct"
# stdlib packages of 25-220K chars (code and docstrings) to split from: big enough for 4K
# contexts, small enough that synthesis fits the budget
PACKAGES = ["json", "http", "logging", "importlib", "urllib", "concurrent", "html", "wsgiref", "xmlrpc",
            "collections", "re", "ctypes", "zoneinfo", "tomllib"]
ARMS = ("verified", "unfiltered", "short")


# ------------------------------------------------------------------ the split
def split(seed: int, heldout_plays: int, train_plays: int, heldout_pkgs: int, train_pkgs: int) -> dict[str, Any]:
    """Plays and packages drawn by a seeded shuffle: the first go to evaluation only, the next to
    training; the rest are unused (the budget)."""
    sys.path.insert(0, str(ROOT))
    from lcdata.read.corpora import shakespeare_root

    plays = sorted(str(p.relative_to(shakespeare_root())) for p in shakespeare_root().rglob("*.md"))
    if heldout_plays + train_plays > len(plays) or heldout_pkgs + train_pkgs > len(PACKAGES) \
            or min(heldout_plays, train_plays, heldout_pkgs, train_pkgs) < 0 \
            or heldout_plays + heldout_pkgs == 0 or train_plays + train_pkgs == 0:
        sys.exit(f"--plays {heldout_plays},{train_plays} --packages {heldout_pkgs},{train_pkgs}: at most "
                 f"{len(plays)} plays and {len(PACKAGES)} packages in all, and at least one document on each side")
    rng = random.Random(f"arms-split/{seed}")
    rng.shuffle(plays)
    pkgs = list(PACKAGES)
    rng.shuffle(pkgs)
    return {"seed": seed,
            "heldout": {"plays": sorted(plays[:heldout_plays]), "packages": sorted(pkgs[:heldout_pkgs])},
            "train": {"plays": sorted(plays[heldout_plays:heldout_plays + train_plays]),
                      "packages": sorted(pkgs[heldout_pkgs:heldout_pkgs + train_pkgs])}}


def sources(part: dict[str, list[str]]) -> list[dict[str, Any]]:
    # a side with no plays (or packages) has no such source: an empty `include` means "all"
    out = []
    if part["plays"]:
        out.append({"name": "shakespeare", "kind": "shakespeare", "include": part["plays"], "docs_per_shard": 5})
    if part["packages"]:
        out.append({"name": "stdlib", "kind": "python_stdlib", "include": [f"{p}/*" for p in part["packages"]],
                    "docs_per_shard": 40})
    return out


# ------------------------------------------------------------------ the build configs
MULTIHOP = {"kind": "multihop", "min_context_tokens": 2048, "chunk_chars": 800, "candidates": 3}


class Scale:
    """What a bigger rerun changes: the base model, the row length (= the long bucket and the
    longest eval prompt) and the engine's KV cache. The defaults are the 2-CPU-core run."""

    def __init__(self, model: str = MODEL, seq_len: int = 4096, kv_cache_gib: float = 2,
                 require_full: bool = False) -> None:
        self.model, self.seq_len = model, seq_len
        # a verifier that answers most of its own questions can demand the full context answer
        # them; the 135M model cannot (it fails ~80 %), so by default only the ablations count
        self.verify = {"enabled": True, "require_full": require_full}
        self.engine = {"model": model, "max_model_len": max(8192, seq_len), "kv_cache_gib": kv_cache_gib,
                       "max_tokens": 384}


def heldout_config(sp: dict[str, Any], sc: Scale) -> dict[str, Any]:
    """Composed multi-hop over the held-out documents only, checked like the training data."""
    return {
        "name": "arms-heldout", "seed": 1, "model": sc.model, "sources": sources(sp["heldout"]),
        "assemble": {"buckets": [sc.seq_len], "reserve_tokens": 256},
        "tasks": [{**MULTIHOP, "context_fraction": 1.0}],
        "filters": {"coherence": {"enabled": True}, "dedup": {"documents": True, "questions": True},
                    "decontaminate": {"enabled": True}, "evidence": {"min_distance_tokens": 512},
                    "verify": sc.verify},
        "engine": sc.engine, "pack": {"seq_len": sc.seq_len}, "shard": {"max_tokens": 1_000_000},
    }


def train_config(sp: dict[str, Any], arm: str, heldout_qa: Path, sc: Scale) -> dict[str, Any]:
    long_tasks = [
        {"kind": "needles", "n_needles": 4, "n_queried": 2},
        {"kind": "kv_tracking", "chain_len": 4},
        {**MULTIHOP, "context_fraction": 1.0},
        {"kind": "lift", "sources": ["shakespeare"], "context_fraction": 0.1, "segment_tokens": 512,
         "stride_tokens": 384, "max_qa_segments": 2},
    ]
    short_qa = {"kind": "short_qa", "context_fraction": 1.0, "per_context": 1, "window_tokens": 1024}
    filters: dict[str, Any] = {"coherence": {"enabled": True}, "dedup": {"documents": True, "questions": True},
                               # the held-out contexts count as evaluation texts (not the questions: they
                               # share their templates with every multihop sample, see README Filters)
                               "decontaminate": {"enabled": True, "files": [str(heldout_qa)], "fields": ["context"]}}
    if arm == "verified":
        filters |= {"evidence": {"min_distance_tokens": 256}, "verify": sc.verify}
    pack: dict[str, Any] = {"seq_len": sc.seq_len, "order": "shuffle"}
    # every arm assembles the same contexts, so `short`'s QA windows are the other arms' too
    buckets = {"buckets": [1024, sc.seq_len], "bucket_weights": [1, 2], "reserve_tokens": 256}
    if arm == "short":
        tasks = [short_qa]
    else:
        tasks = [*long_tasks, short_qa]
        pack["short_token_ratio"] = 0.3
    return {"name": f"arms-{arm}", "seed": 0, "model": sc.model, "sources": sources(sp["train"]),
            "assemble": buckets, "tasks": tasks, "filters": filters, "engine": sc.engine, "pack": pack,
            "shard": {"max_tokens": 1_000_000}}


def eval_config(heldout_qa: Path, sc: Scale) -> dict[str, Any]:
    lengths = [n for n in (1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072) if n <= sc.seq_len]
    return {"size": "full", "suite": {
        "suites": ["niah", "multihop", "squad", "counterfactual", "user_qa"],
        "niah": {"lengths": lengths, "repeats": 2},
        "multihop": {"length": sc.seq_len, "per_distance": 12},
        "squad": {"n": 50}, "counterfactual": {"n": 40},
        # the questions as the training samples ask them (no appended instruction)
        "user_qa": {"path": str(heldout_qa), "id_field": "id", "instruction": "", "too_long": "refuse"},
    }}


# ------------------------------------------------------------------ running steps
class Steps:
    """Each step once: skipped when ``.done/<name>`` exists; its wall time in ``times.json``."""

    def __init__(self, out: Path) -> None:
        self.out = out
        (out / ".done").mkdir(parents=True, exist_ok=True)
        self.times_file = out / "times.json"
        self.times = json.loads(self.times_file.read_text()) if self.times_file.is_file() else {}

    def run(self, name: str, cmd: list[str]) -> None:
        marker = self.out / ".done" / name
        if marker.exists():
            print(f"== {name}: done ({self.times.get(name, {}).get('seconds', '?')} s)", flush=True)
            return
        print(f"== {name}: {' '.join(cmd)}", flush=True)
        t0 = time.time()
        with (self.out / "logs" / f"{name}.log").open("w") as log:
            rc = subprocess.call(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        dt = round(time.time() - t0, 1)
        if rc != 0:
            tail = (self.out / "logs" / f"{name}.log").read_text()[-2000:]
            sys.exit(f"step {name} failed (exit {rc}) after {dt} s; the end of {self.out}/logs/{name}.log:\n{tail}\n"
                     "fix it and rerun: finished steps are skipped")
        self.times[name] = {"seconds": dt, "command": " ".join(cmd)}
        self.times_file.write_text(json.dumps(self.times, indent=2) + "\n")
        marker.touch()
        print(f"   {dt} s", flush=True)


def write_yaml(path: Path, cfg: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


# ------------------------------------------------------------------ statistics
def bootstrap(values: list[float], n: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean and a percentile bootstrap 95 % interval over items."""
    if not values:
        return (math.nan, math.nan, math.nan)
    rng = random.Random(seed)
    k = len(values)
    means = sorted(sum(values[rng.randrange(k)] for _ in range(k)) / k for _ in range(n))
    return (sum(values) / k, means[int(0.025 * n)], means[int(0.975 * n) - 1])


def item_metrics(suite: str, rec: dict[str, Any]) -> list[tuple[str, float]]:
    """The per-item scores behind each suite's headline metrics."""
    s = rec["score"]
    if suite == "niah":
        return [("accuracy", s["accuracy"])]
    if suite == "multihop":
        return [("contains", float(s["contains"]))]
    if suite == "user_qa":  # the composed answer verbatim, and the fraction of its parts found
        return [("contains", float(s["contains"])), ("parts", float(s["parts"]))]
    if suite == "squad":
        return [("f1", float(s["f1"]))]
    if suite == "counterfactual":
        if rec["meta"]["mode"] == "closed":
            return [("closed_book", float(s["memory"]))]
        # over all facts (the suite's `follows_context_all`): the suite's `follows_context` counts
        # only the facts each model knows closed-book, a different item set per model, not pairable
        return [("follows_context_all", float(s["class"] == "context"))]
    return []


def arm_items(eval_dir: Path, labels: list[str]) -> dict[tuple[str, str], dict[str, float]]:
    """(suite, metric) -> item id -> score averaged over the labels (an arm's seeds)."""
    acc: dict[tuple[str, str], dict[str, list[float]]] = {}
    for label in labels:
        for line in (eval_dir / label / "scored.jsonl").read_text().splitlines():
            rec = json.loads(line)
            for name, v in item_metrics(rec["suite"], rec):
                acc.setdefault((rec["suite"], name), {}).setdefault(rec["id"], []).append(v)
    return {k: {i: sum(v) / len(v) for i, v in d.items()} for k, d in acc.items()}


def paired(a: dict[str, float], b: dict[str, float], n: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    ids = sorted(set(a) & set(b))
    return bootstrap([a[i] - b[i] for i in ids], n, seed)


def sign_test(a: dict[str, float], b: dict[str, float]) -> tuple[int, int, float]:
    """Items where ``a`` beats ``b``, where it loses, and the two-sided exact sign test p (ties
    left out): with few non-zero items a percentile bootstrap is too optimistic."""
    ids = set(a) & set(b)
    better = sum(a[i] > b[i] for i in ids)
    worse = sum(a[i] < b[i] for i in ids)
    n = better + worse
    if n == 0:
        return 0, 0, 1.0
    tail = sum(math.comb(n, k) for k in range(min(better, worse) + 1)) / 2 ** n
    return better, worse, min(1.0, 2 * tail)


def fmt(t: tuple[float, float, float]) -> str:
    m, lo, hi = t
    return "n/a" if math.isnan(m) else f"{m:.3f} [{lo:.3f}, {hi:.3f}]"


def report(out: Path, arms: dict[str, list[str]]) -> str:
    """results.md / results.json / plots from the eval's scored items."""
    ev = out / "eval"
    data = {arm: arm_items(ev, labels) for arm, labels in arms.items()}
    keys = sorted({k for d in data.values() for k in d})
    res: dict[str, Any] = {"arms": arms, "metrics": {}}
    lines = ["| suite | metric (items) | " + " | ".join(arms) + " |", "|---|---|" + "---|" * len(arms)]
    for k in keys:
        n = len(next(iter(data.values())).get(k, {}))
        row = {arm: bootstrap(list(d.get(k, {}).values())) for arm, d in data.items()}
        res["metrics"]["/".join(k)] = {arm: list(v) for arm, v in row.items()}
        lines.append(f"| {k[0]} | {k[1]} ({n}) | " + " | ".join(fmt(v) for v in row.values()) + " |")
    pairs = [("verified", "base"), ("unfiltered", "base"), ("short", "base"), ("verified", "unfiltered"),
             ("verified", "short"), ("unfiltered", "short")]
    pairs = [p for p in pairs if p[0] in data and p[1] in data]
    res["differences"], res["sign_tests"] = {}, {}
    diffs, signs = [], []
    for k in keys:
        dc, sc = [], []
        for a, b in pairs:
            t = paired(data[a].get(k, {}), data[b].get(k, {}))
            res["differences"].setdefault("/".join(k), {})[f"{a}-{b}"] = list(t)
            star = "*" if not math.isnan(t[0]) and (t[1] > 0 or t[2] < 0) else ""
            dc.append(f"{t[0]:+.3f} [{t[1]:+.3f}, {t[2]:+.3f}]{star}" if not math.isnan(t[0]) else "n/a")
            bt, wt, pv = sign_test(data[a].get(k, {}), data[b].get(k, {}))
            res["sign_tests"].setdefault("/".join(k), {})[f"{a}-{b}"] = [bt, wt, pv]
            sc.append(f"{bt} / {wt}, p={pv:.3g}")
        diffs.append(f"| {k[0]} | {k[1]} | " + " | ".join(dc) + " |")
        signs.append(f"| {k[0]} | {k[1]} | " + " | ".join(sc) + " |")
    head = "|---|---|" + "---|" * len(pairs)
    lines += ["", "Paired differences (same items; bootstrap 95 % interval; * = excludes 0):", "",
              "| suite | metric | " + " | ".join(f"{a} - {b}" for a, b in pairs) + " |", head, *diffs,
              "", "Items better / worse and the exact two-sided sign test p (ties left out):", "",
              "| suite | metric | " + " | ".join(f"{a} vs {b}" for a, b in pairs) + " |", head, *signs]
    lines += ["", *heldout_breakdown(out, data)]
    (out / "results.json").write_text(json.dumps(res, indent=2) + "\n")
    plot(out, data, arms)
    text = "\n".join(lines) + "\n"
    (out / "results.md").write_text(text)
    return text


def heldout_breakdown(out: Path, data: dict[str, Any]) -> list[str]:
    """Held-out multi-hop accuracy by evidence distance (tokens) and mean evidence depth."""
    recs = {f"user_qa/{r['id']}": r for r in map(json.loads, (out / "heldout_qa.jsonl").read_text().splitlines())}
    bins = {"distance < 1K tokens": lambda r: r["evidence_distance_tokens"] < 1024,
            "distance 1K-2K": lambda r: 1024 <= r["evidence_distance_tokens"] < 2048,
            "distance >= 2K": lambda r: r["evidence_distance_tokens"] >= 2048,
            "mean depth < 0.33": lambda r: sum(r["evidence_depths"]) / len(r["evidence_depths"]) < 1 / 3,
            "mean depth 0.33-0.67": lambda r: 1 / 3 <= sum(r["evidence_depths"]) / len(r["evidence_depths"]) < 2 / 3,
            "mean depth >= 0.67": lambda r: sum(r["evidence_depths"]) / len(r["evidence_depths"]) >= 2 / 3}
    lines = ["Held-out multi-hop (`user_qa`, parts found) by evidence distance and depth:", "",
             "| slice | items | " + " | ".join(data) + " |", "|---|---|" + "---|" * len(data)]
    for name, pred in bins.items():
        ids = [i for i, r in recs.items() if pred(r)]
        cells = [fmt(bootstrap([d.get(("user_qa", "parts"), {})[i] for i in ids
                                if i in d.get(("user_qa", "parts"), {})])) for d in data.values()]
        lines.append(f"| {name} | {len(ids)} | " + " | ".join(cells) + " |")
    return lines


def plot(out: Path, data: dict[str, Any], arms: dict[str, list[str]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (out / "plots").mkdir(exist_ok=True)
    by_suite: dict[str, list[tuple[str, str]]] = {}
    for k in sorted({k for d in data.values() for k in d}):
        by_suite.setdefault(k[0], []).append(k)
    colors = {"base": "#9b9b9b", "verified": "#2f7ed8", "unfiltered": "#e8a14c", "short": "#6bb36b"}
    for suite, ks in by_suite.items():
        fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(ks) * len(arms) / 4, 3.2))
        w = 0.8 / len(arms)
        for j, arm in enumerate(arms):
            ts = [bootstrap(list(data[arm].get(k, {}).values())) for k in ks]
            xs = [i + (j - (len(arms) - 1) / 2) * w for i in range(len(ks))]
            ax.bar(xs, [t[0] for t in ts], w, color=colors.get(arm), label=arm,
                   yerr=[[t[0] - t[1] for t in ts], [t[2] - t[0] for t in ts]], capsize=3)
        ax.set_xticks(range(len(ks)), [k[1] for k in ks])
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{suite} (bootstrap 95 % intervals)", fontsize=10)
        ax.legend(fontsize=7, ncol=len(arms), loc="upper center", bbox_to_anchor=(0.5, -0.12))
        fig.tight_layout()
        fig.savefig(out / "plots" / f"{suite}.png", dpi=110)
        plt.close(fig)


# ------------------------------------------------------------------ main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "arms")
    ap.add_argument("--seeds", default="0,1", help="training seeds per trained arm, comma-separated")
    ap.add_argument("--steps", type=int, default=24, help="optimizer steps per run")
    ap.add_argument("--model", default=MODEL, help="the base model directory (prepared Hugging Face format)")
    ap.add_argument("--seq-len", type=int, default=4096, help="row length = the long bucket and longest eval prompt")
    ap.add_argument("--tokens-per-step", type=int, default=0, help="tokens per optimizer step (default: --seq-len)")
    ap.add_argument("--kv-cache-gib", type=float, default=2, help="the engine's KV cache (GPU: tens of GiB)")
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--adapter", default="none", choices=["none", "lora"], help="full fine-tuning or LoRA")
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--plays", default="3,4", help="plays held out, plays for training (of 38)")
    ap.add_argument("--packages", default="3,4", help=f"stdlib packages held out, for training (of {len(PACKAGES)})")
    ap.add_argument("--verify-full", action="store_true",
                    help="verify also requires the full context to answer (for a generator that can)")
    ap.add_argument("--arms", default=",".join(ARMS), help="trained arms to run (base is always evaluated)")
    ap.add_argument("--report-only", action="store_true", help="only rewrite results.md from a finished eval")
    a = ap.parse_args()
    out = a.out.resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in a.seeds.split(",")]
    arms = [x for x in a.arms.split(",") if x]
    for x in arms:
        if x not in ARMS:
            sys.exit(f"--arms: unknown arm {x!r}; the arms are {', '.join(ARMS)}")
    arms = [x for x in ARMS if x in arms]
    labels = {"base": ["base"]} | {arm: [f"{arm}_s{s}" for s in seeds] for arm in arms}
    if a.report_only:
        print(report(out, labels))
        return
    lc = str(BIN / "lcdata")
    sc = Scale(a.model, a.seq_len, a.kv_cache_gib, a.verify_full)
    steps = Steps(out)
    # what the finished steps were made with: a rerun must match it (more seeds or arms may be added)
    settings = {k: getattr(a, k) for k in ("model", "seq_len", "tokens_per_step", "lr", "steps", "adapter", "verify_full")}
    st_file = out / "settings.json"
    if not st_file.is_file():
        st_file.write_text(json.dumps(settings, indent=2) + "\n")
    done = json.loads(st_file.read_text())
    diff = {k: (done.get(k), v) for k, v in settings.items() if done.get(k) != v}
    if diff:
        sys.exit(f"{st_file}: this run was made with other settings ("
                 + ", ".join(f"--{k.replace('_', '-')} {old} here, {new} now" for k, (old, new) in diff.items())
                 + "); rerun with the recorded ones, or give another --out")

    try:
        (hp, tp), (hk, tk) = ([int(x) for x in v.split(",")] for v in (a.plays, a.packages))
    except ValueError:
        sys.exit(f"--plays and --packages take two counts, held out and training, e.g. 3,4; got {a.plays!r}, {a.packages!r}")
    want = split(a.split_seed, hp, tp, hk, tk)
    sp_file = out / "split.json"
    if not sp_file.is_file():
        sp_file.write_text(json.dumps(want, indent=2) + "\n")
    sp = json.loads(sp_file.read_text())
    if sp != want:  # the builds in OUT were made from the recorded split
        sys.exit(f"{sp_file} records another split (seed {sp['seed']}, held out {sp['heldout']}); rerun with its "
                 "--split-seed/--plays/--packages, or give another --out")
    print(f"held out: {sp['heldout']}\ntraining: {sp['train']}", flush=True)

    # 1. held-out multi-hop, exported as a long-QA file (the eval's user_qa suite)
    cfgs = out / "configs"
    heldout_qa = out / "heldout_qa.jsonl"
    steps.run("build_heldout", [lc, "build", str(write_yaml(cfgs / "heldout.yaml", heldout_config(sp, sc))),
                                "--out", str(out / "builds" / "heldout")])
    steps.run("export_heldout", [lc, "export-qa", str(out / "builds" / "heldout"), "--out", str(heldout_qa),
                                 "--task", "multihop"])

    # 2. training builds; `unfiltered` and `short` start from `verified`'s request cache: the same
    # generations, so the arms differ only in what is kept
    for arm in arms:  # in ARMS order: verified first, its cache is the others' start
        dest = out / "builds" / arm
        if arm != "verified" and not (out / ".done" / f"build_{arm}").exists():
            if (out / ".done" / "build_verified").exists():
                shutil.rmtree(dest, ignore_errors=True)
                shutil.copytree(out / "builds" / "verified" / "cache", dest / "cache")
            else:
                print(f"note: no finished `verified` build in {out}: `{arm}` generates its own samples, "
                      "not the same ones (run verified first for the paired design)", flush=True)
        steps.run(f"build_{arm}", [lc, "build", str(write_yaml(cfgs / f"{arm}.yaml", train_config(sp, arm, heldout_qa, sc))),
                                   "--out", str(dest)])
        steps.run(f"inspect_{arm}", [lc, "inspect", str(dest)])

    # 3. training: same budget, schedule and seeds for every arm
    for s in seeds:  # seed by seed: a run cut short by the budget has every arm of its first seeds
        for arm in arms:
            steps.run(f"train_{arm}_s{s}", [
                lc, "train", str(out / "builds" / arm), f"--run.out={out / 'train' / f'{arm}_s{s}'}",
                f"--run.steps={a.steps}", f"--batch.tokens_per_step={a.tokens_per_step or a.seq_len}", f"--optim.lr={a.lr}",
                "--optim.warmup_steps=3", f"--run.seed={s}", f"--data.seed={s}", f"--adapter.kind={a.adapter}"])

    # 4. one eval over every model: the suite is generated once, each model in its own process
    models = [f"base={sc.model}"] + [f"{lab}={out / 'train' / lab / 'final'}" for arm in arms for lab in labels[arm]]
    # named by its models: a rerun with more seeds or arms evaluates again (finished models are cached)
    steps.run("eval_" + "-".join(lab for arm in arms for lab in labels[arm]), [lc, "eval", *models, "--config", str(write_yaml(cfgs / "eval.yaml", eval_config(heldout_qa, sc))),
                       "--out", str(out / "eval")])
    text = report(out, labels)
    total = sum(v["seconds"] for v in steps.times.values())
    print(text + f"\nwall time of all steps: {total / 60:.1f} min; per step in {out / 'times.json'}")


if __name__ == "__main__":
    main()
