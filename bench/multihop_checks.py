"""What a built dataset's multi-hop samples prove: per task, how many samples verification
examined and how many each ablation alone found answerable (closed-book, one local window,
the full context), from the kept samples' ``meta.verify`` and the verify rejects; the
certificates of the kept multi-hop samples; and the synthesis counts and engine seconds.

    .venv/bin/python bench/multihop_checks.py out/demo
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from pathlib import Path

import pyarrow.ipc as ipc
import yaml


def rows(paths: list[Path]) -> list[dict]:
    return [r for p in paths for r in ipc.open_file(str(p)).read_all().to_pylist()]


def main(out: Path) -> None:
    m = json.loads((out / "manifest.json").read_text())
    samples = rows([out / f for f in m["samples_files"]])
    rejects = rows(sorted((out / "rejects").glob("*.arrow")))
    vcfg = (yaml.safe_load((out / "config.yaml").read_text()).get("filters") or {}).get("verify") or {}
    closed_max, local_max, full_min = (vcfg.get(k, 0.5) for k in ("closed_max", "local_max", "full_min"))
    examined = [(s["task"], json.loads(s["meta"]).get("verify")) for s in samples]
    for r in rejects:  # the record is cut at a size limit: the scores are in the message
        if r["stage"] == "verify":
            got = re.match(r"closed ([\d.]+), local ([\d.]+), full ([\d.]+)", r["message"])
            if got:
                task = r["record_id"].split(":", 1)[0]
                examined.append((task, dict(zip(("closed", "local", "full"), map(float, got.groups()), strict=True))))
    by_task: dict[str, Counter] = {}
    for task, v in examined:  # each ablation counted alone, as verify's notes do
        if not v or "closed" not in v:
            continue
        c = by_task.setdefault(task, Counter())
        c["examined"] += 1
        c["answerable_closed_book"] += v["closed"] >= closed_max
        c["answerable_locally"] += v["local"] >= local_max
        c["full_context_fails"] += v["full"] < full_min
    stats = [json.loads(p.read_text()) for p in sorted((out / "work").glob("*/stats.json"))]
    engine_s: Counter = Counter()
    for st in stats:
        engine_s.update(st.get("engine_seconds", {}))
    mh = [json.loads(s["meta"]) for s in samples if s["task"] == "multihop"]
    certs = [x["certificate"] for x in mh]
    syn = m["lineage"]["synthesis"].get("multihop", {})
    made = syn.get("made", 0)
    print(json.dumps({
        "synthesis_multihop": syn,
        "engine_seconds": {k: round(v, 1) for k, v in sorted(engine_s.items())},
        "engine_s_per_made_multihop": round(engine_s["synthesize.multihop"] / made, 1) if made else None,
        "verify_by_task": {k: dict(v) for k, v in sorted(by_task.items())},
        "multihop_in_dataset": len(mh),
        "forms": dict(Counter(x["form"] for x in mh)),
        "atom_writers": dict(Counter(a["writer"] for x in mh for a in x.get("atoms", []))),
        "min_distance_frac": min((c["distance_frac"] for c in certs), default=None),
        "min_chunks": min((c["chunks"] for c in certs), default=None),
        "any_window_holds_all": any(c["window_holds_all"] for c in certs),
    }, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
