"""Compare two built dataset directories (e.g. one built before a refactor and one after):
packed shard contents (schema metadata aside), the manifest without version, shard sha256 and
bytes, lineage totals and per-stage counts, and the samples/eval/contexts rows (columns that
only one side has are left out, e.g. fields a schema bump added).

    .venv/bin/python bench/compare_builds.py OLD_DIR NEW_DIR

Exit status 0 when everything compared is equal. The redesign (issue #13) was checked this
way: see bench/RESULTS.md "Redesign: same outputs".
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pyarrow.ipc as ipc


def rows(p: Path) -> list[dict[str, Any]]:
    return ipc.open_file(str(p)).read_all().to_pylist()


def manifest(d: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    m = json.loads((d / "manifest.json").read_text())
    m.pop("schema_version")
    m.pop("lcdata_version", None)
    for s in m["shards"]:
        s.pop("sha256")
        s.pop("bytes")
    lin = m.pop("lineage")
    return m, lin, lin.pop("stages")


def main(a: Path, b: Path) -> bool:
    ok = True
    sa, sb = sorted((a / "shards").glob("*.arrow")), sorted((b / "shards").glob("*.arrow"))
    ok &= [p.name for p in sa] == [p.name for p in sb]
    for x, y in zip(sa, sb, strict=False):
        same = ipc.open_file(str(x)).read_all().equals(ipc.open_file(str(y)).read_all())
        print(f"{x.name}: contents equal {same}")
        ok &= same
    (ma, la, sta), (mb, lb, stb) = manifest(a), manifest(b)
    for what, u, v in (("manifest", ma, mb), ("lineage totals", la, lb), ("stage counts", sta, stb)):
        print(f"{what}: equal {u == v}")
        ok &= u == v
    print(f"stage order: equal {list(sta) == list(stb)} (not required)")
    for sub in ("samples", "eval", "contexts"):
        for x in sorted((a / sub).glob("*.arrow")):
            ra, rb = rows(x), rows(b / sub / x.name)
            common = set(ra[0]) & set(rb[0]) if ra and rb else set()
            same = [{k: r[k] for k in common} for r in ra] == [{k: r[k] for k in common} for r in rb]
            print(f"{sub}/{x.name}: {len(ra)} rows, equal {same}")
            ok &= same
    print("ALL EQUAL" if ok else "DIFFERENCES")
    return ok


if __name__ == "__main__":
    sys.exit(0 if main(Path(sys.argv[1]), Path(sys.argv[2])) else 1)
