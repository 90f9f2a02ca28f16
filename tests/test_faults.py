"""Fault injection (issue #17): two builds into one OUT, a stale lock, damaged outputs,
symlinks out of a source's root, a source name with `../`, unreadable input files, a full or
read-only disk (tmpfs, when the test runs as root), SIGINT, a hostile chat template, a bad
model directory, config mistakes. Each asserts the message, the exit code, and that nothing
already built was lost or corrupted. Builds are programmatic (no engine): seconds each."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from lcdata.arrowio import ArrowWriter, open_ipc
from lcdata.schema import CONTEXT_SCHEMA

BIN = Path(sys.executable).parent
TIMEOUT = 600


def lcdata(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "lcdata"), *args], capture_output=True, text=True, timeout=TIMEOUT,
                          env={**os.environ, **(env or {})})


def cfg_file(tmp: Path, model_dir: Path, name: str = "c.yaml", **over) -> Path:
    cfg = {"name": "faults", "model": str(model_dir),
           "sources": [{"name": "sh", "kind": "shakespeare", "include": ["comedies/the-comedy-of-errors.md"]},
                       {"name": "std", "kind": "python_stdlib", "include": ["json/*"]}],
           "assemble": {"buckets": [1024, 2048]}, "tasks": [{"kind": "needles"}, {"kind": "kv_tracking"}],
           "pack": {"seq_len": 2048}}
    cfg.update(over)
    path = tmp / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def temps(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if p.name.startswith(".") and ".tmp" in p.name]


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def built(model_dir, tmp_path_factory):
    """A finished programmatic build and its config."""
    tmp = tmp_path_factory.mktemp("faults")
    cfg = cfg_file(tmp, model_dir)
    r = lcdata("build", str(cfg), "--out", str(tmp / "ref"), "--local")
    assert r.returncode == 0, r.stderr
    return cfg, tmp / "ref"


def copy_build(built, dst: Path) -> Path:
    shutil.copytree(built[1], dst)
    return dst


# ------------------------------------------------------------------ one writer per OUT
HOLD = """
import sys
from lcdata.lock import OutputLock
OutputLock(sys.argv[1]).acquire()
print("held", flush=True)
sys.stdin.read()
"""


def hold_lock(out: Path) -> subprocess.Popen[str]:
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "held"
    return p


def test_second_build_is_refused_naming_the_holder_then_a_stale_lock_is_taken_over(built, tmp_path):
    out = copy_build(built, tmp_path / "out")
    before = (out / "manifest.json").read_bytes()
    holder = hold_lock(out)
    try:
        r = lcdata("build", str(built[0]), "--out", str(out), "--local")
        assert r.returncode == 3, r.stderr
        (err,) = error_lines(r.stderr)
        assert f"is being written by another build: pid {holder.pid} on " in err
        assert "started 20" in err and "build into another --out" in err
        assert (out / "manifest.json").read_bytes() == before  # the refused build touched nothing
    finally:
        holder.kill()  # SIGKILL: the holder never releases; its lock file stays behind
        holder.wait()
    assert json.loads((out / ".lcdata.lock").read_text())["pid"] == holder.pid
    r = lcdata("build", str(built[0]), "--out", str(out), "--local")
    assert r.returncode == 0, r.stderr
    assert f"took over the lock of a build that ended without releasing it (pid {holder.pid}" in r.stderr
    assert not (out / ".lcdata.lock").exists()  # released on the way out
    assert (out / "manifest.json").read_bytes() == before
    assert lcdata("verify", str(out)).returncode == 0


def test_two_builds_started_together_never_corrupt_the_output(model_dir, tmp_path):
    """Different seeds into one OUT at the same moment: one is refused (exit 3) or they ran one
    after the other; either way the directory verifies, and a rerun of the survivor's
    config reproduces it byte for byte."""
    cfgs = [cfg_file(tmp_path, model_dir, name=f"s{seed}.yaml", seed=seed) for seed in (1, 2)]
    out = tmp_path / "out"
    procs = [subprocess.Popen([str(BIN / "lcdata"), "build", str(c), "--out", str(out), "--local"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in cfgs]
    results = [(p.wait(TIMEOUT), p.stderr.read() if p.stderr else "") for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes in ([0, 0], [0, 3]), results
    for rc, err in results:
        if rc == 3:
            assert "is being written by another build" in err
    assert lcdata("verify", str(out)).returncode == 0
    assert not temps(out)
    seed = json.loads((out / "manifest.json").read_text())["config"]["seed"]
    ref = tmp_path / "ref"
    assert lcdata("build", str(cfgs[seed - 1]), "--out", str(ref), "--local").returncode == 0
    for sub in ("shards", "samples", "contexts"):
        for f in sorted((ref / sub).glob("*.arrow")):
            assert (out / sub / f.name).read_bytes() == f.read_bytes(), f"{sub}/{f.name}"


def test_a_forked_child_does_not_hold_the_lock(tmp_path):
    """Engine workers are forked while the build holds its lock: their copy is closed at fork,
    so a SIGKILLed build's children cannot keep OUT locked."""
    from lcdata.lock import OutputLock

    with OutputLock(tmp_path / "out") as lock:
        pid = os.fork()
        if pid == 0:  # the child: the lock's fd must be closed here
            try:
                os.fstat(lock.fd)
                os._exit(1)
            except OSError:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0


def test_leftover_temps_are_removed_and_nothing_else(tmp_path):
    from lcdata.arrowio import remove_temps

    out = tmp_path / "out"
    ours = [out / ".manifest.json.12-0a1b2c3d.tmp", out / "samples" / ".x.arrow.7-deadbeef.tmp",
            out / "work" / "s" / ".stats.json.9-00ff00ff.tmp"]
    theirs = [out / "notes.tmp", out / ".editor.tmp", out / "mine" / ".x.arrow.7-deadbeef.tmp",
              out / "samples" / ".hidden.tmp"]
    for p in ours + theirs:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("x")
    (out / ".shards.5-abcdef01.tmp").mkdir()
    remove_temps(out)
    assert not any(p.exists() for p in ours) and not (out / ".shards.5-abcdef01.tmp").exists()
    assert all(p.exists() for p in theirs)


def test_temp_names_are_unique_per_writer(tmp_path):
    a, b = ArrowWriter(tmp_path / "x.arrow", CONTEXT_SCHEMA), ArrowWriter(tmp_path / "x.arrow", CONTEXT_SCHEMA)
    assert a.tmp != b.tmp and a.tmp.name.startswith(".x.arrow.") and a.tmp.name.endswith(".tmp")
    b.abort()
    a.close()
    assert open_ipc(tmp_path / "x.arrow").num_rows == 0 and not temps(tmp_path)


# ------------------------------------------------------------------ the manifest covers every file
def test_verify_finds_every_damaged_output_and_a_rerun_repairs_it(built, tmp_path):
    out = copy_build(built, tmp_path / "out")
    m = json.loads((out / "manifest.json").read_text())
    assert {k.split("/")[0] for k in m["files"]} == {"samples", "eval", "contexts", "rejects"}
    ctx = sorted((out / "contexts").glob("*.arrow"))[0]
    data = bytearray(ctx.read_bytes())
    data[len(data) // 2] ^= 0xFF
    ctx.write_bytes(bytes(data))
    sample = sorted((out / "samples").glob("*.arrow"))[-1]
    sample.unlink()
    rej = sorted((out / "rejects").glob("*.arrow"))[0]
    rej.write_bytes(rej.read_bytes()[:100])
    (out / "shards" / "shard-99999.arrow").write_bytes(b"stray")
    sorted((out / "work").glob("*/_DONE"))[0].write_text("{")  # a damaged marker: that shard is redone
    r = lcdata("verify", str(out))
    assert r.returncode == 1
    assert f"{ctx}: sha256 differs from the manifest" in r.stderr
    assert f"{sample}: missing" in r.stderr
    assert f"{rej}: 100 bytes, the manifest says" in r.stderr
    assert "shard-99999.arrow: not part of this build" in r.stderr
    # the shards' _DONE markers hold their outputs' hashes: a rerun redoes the damaged ones
    r = lcdata("build", str(built[0]), "--out", str(out), "--local")
    assert r.returncode == 0, r.stderr
    assert lcdata("verify", str(out)).returncode == 0
    assert (out / "manifest.json").read_bytes() == (built[1] / "manifest.json").read_bytes()
    for sub in ("samples", "contexts", "rejects"):
        for f in sorted((built[1] / sub).glob("*.arrow")):
            assert (out / sub / f.name).read_bytes() == f.read_bytes()


# ------------------------------------------------------------------ inputs stay inside their roots
def test_symlinks_out_of_a_source_root_are_dropped_unless_allowed(model_dir, tmp_path):
    secret = tmp_path / "private.txt"
    secret.write_text("TOP-SECRET-7731 " * 50)
    repo = tmp_path / "repo" / "pkg"
    repo.mkdir(parents=True)
    for i in range(6):
        (repo / f"m{i}.py").write_text("\n".join(f"def f{i}_{j}(x):\n    return x * {j} + {i}" for j in range(60)))
    (repo / "notes.txt").symlink_to(secret)
    (repo / "inside.txt").symlink_to(repo / "m0.py")  # a link inside the root is fine
    src = {"name": "code", "kind": "code_repo", "path": str(tmp_path / "repo")}
    cfg = cfg_file(tmp_path, model_dir, sources=[src], assemble={"buckets": [512, 1024], "min_fill": 0.1})
    out = tmp_path / "out"
    r = lcdata("build", str(cfg), "--out", str(out), "--local")
    assert r.returncode == 0, r.stderr
    ctx = " ".join(t for f in (out / "contexts").glob("*.arrow") for t in open_ipc(f).column("text").to_pylist())
    assert "TOP-SECRET-7731" not in ctx and "def f0_1" in ctx
    rejects = [row for f in (out / "rejects").glob("*.arrow") for row in open_ipc(f).to_pylist()]
    (drop,) = [row for row in rejects if row["reason"] == "symlink_outside_root"]
    assert drop["record_id"] == "code/pkg/notes.txt" and "follow_symlinks: true" in drop["message"]
    read = json.loads((out / "manifest.json").read_text())["lineage"]["stages"]["read"]
    assert read["in"] == read["out"] + sum(read["dropped"].values()) == 8
    allowed = cfg_file(tmp_path, model_dir, name="allow.yaml", sources=[{**src, "follow_symlinks": True}],
                       assemble={"buckets": [512, 1024], "min_fill": 0.1})
    assert lcdata("build", str(allowed), "--out", str(tmp_path / "out2"), "--local").returncode == 0
    ctx2 = " ".join(t for f in (tmp_path / "out2" / "contexts").glob("*.arrow")
                    for t in open_ipc(f).column("text").to_pylist())
    assert "TOP-SECRET-7731" in ctx2


@pytest.mark.parametrize("name", ["../evil", "a/b", "..", ".hidden", "", "abc\n"])
def test_a_source_name_cannot_write_outside_out(model_dir, tmp_path, name):
    cfg = cfg_file(tmp_path, model_dir, sources=[{"name": name, "kind": "shakespeare", "limit_groups": 1}])
    out = tmp_path / "a" / "out"
    r = lcdata("build", str(cfg), "--out", str(out), "--local")
    assert r.returncode == 2
    assert "`sources.0.name`" in r.stderr and "no `/`, no `..`" in r.stderr
    assert not (tmp_path / "a").exists()  # nothing written anywhere


# ------------------------------------------------------------------ one bad input file
def test_unreadable_input_files_are_dropped_and_the_build_goes_on(model_dir, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    text = "The harbour master of Ostend kept a ledger of every ship. " * 60
    pq.write_table(pa.table({"text": [text + str(i) for i in range(4)]}), data / "good.parquet")
    (data / "corrupt.parquet").write_bytes(b"PAR1" + os.urandom(3000) + b"PAR1")
    good = (data / "good.parquet").read_bytes()
    (data / "truncated.parquet").write_bytes(good[: len(good) // 2])
    arrows = tmp_path / "arrows"
    arrows.mkdir()
    with pa.ipc.new_file(str(arrows / "ok.arrow"), pa.schema([("text", pa.string())])) as w:
        w.write_table(pa.table({"text": [text + "arrow"]}))
    (arrows / "cut.arrow").write_bytes((arrows / "ok.arrow").read_bytes()[:200])
    jsonl = tmp_path / "j.jsonl"
    jsonl.write_text(json.dumps({"text": text + "json"}) + "\n" + '{"text": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    cfg = cfg_file(tmp_path, model_dir, sources=[
        {"name": "pq", "kind": "parquet", "path": str(data)},
        {"name": "ar", "kind": "arrow", "path": str(arrows)},
        {"name": "js", "kind": "jsonl", "path": str(jsonl)}],
        assemble={"buckets": [512, 1024], "min_fill": 0.1})
    out = tmp_path / "out"
    r = lcdata("build", str(cfg), "--out", str(out), "--local")
    assert r.returncode == 0, r.stderr
    rejects = {row["record_id"]: row for f in (out / "rejects").glob("*.arrow") for row in open_ipc(f).to_pylist()}
    for rid in ("pq/corrupt.parquet", "pq/truncated.parquet", "ar/cut.arrow"):
        assert rejects[rid]["reason"] == "unreadable_file"
        assert rejects[rid]["message"].startswith(str(tmp_path)) and "cannot be read" in rejects[rid]["message"]
    assert rejects["js/j.jsonl:2"]["reason"] == "bad_json" and "nested too deeply" in rejects["js/j.jsonl:2"]["message"]
    read = json.loads((out / "manifest.json").read_text())["lineage"]["stages"]["read"]
    assert read["dropped"] == {"bad_json": 1, "unreadable_file": 3}
    assert read["out"] == 6 and read["in"] == read["out"] + 4  # the good rows of every source arrived


# ------------------------------------------------------------------ resources
@pytest.fixture
def tmpfs(tmp_path):
    """Mount points for small tmpfs filesystems (root only: skipped otherwise)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounts: list[Path] = []

    def mount(name: str, opts: str) -> Path:
        d = tmp_path / name
        d.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(d)], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
        mounts.append(d)
        return d

    yield mount
    for d in mounts:
        subprocess.run(["umount", "-l", str(d)], check=False)


@pytest.mark.parametrize(("size", "mode"), [("160k", "--local"), ("600k", "--local"), ("600k", "flow")])
def test_a_full_disk_ends_in_one_error_line_and_resumes(built, tmpfs, size, mode):
    """Full early (the first outputs) or late (packing), in-process or as a Prefect flow (whose
    failed task runs are not echoed with their tracebacks): one `error:` line naming the path,
    no temp files, no shard without a manifest; after freeing space the rerun finishes."""
    disk = tmpfs(f"disk{size}{mode.strip('-')}", f"size={size}")
    out = disk / "out"
    args = ["--local"] if mode == "--local" else ["--workers", "1"]
    r = lcdata("build", str(built[0]), "--out", str(out), *args)
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr and "ERROR" not in r.stderr
    (err,) = error_lines(r.stderr)
    assert err.startswith(f"error: no space left on the device writing {out}/")
    assert "free space there" in err and "rerun the same command" in err
    assert not temps(out)
    assert not (out / "manifest.json").exists() and not list(out.glob("shards/*"))
    subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
    r = lcdata("build", str(built[0]), "--out", str(out), "--local")
    assert r.returncode == 0, r.stderr
    assert (out / "manifest.json").read_bytes() == (built[1] / "manifest.json").read_bytes()


def test_a_read_only_output_ends_in_one_error_line(built, tmpfs):
    ro = tmpfs("ro", "ro,size=1m")
    r = lcdata("build", str(built[0]), "--out", str(ro / "out"), "--local")
    assert r.returncode == 1
    (err,) = error_lines(r.stderr)
    assert err.startswith(f"error: cannot write {ro}/out") and "Read-only file system" in err
    assert "Traceback" not in r.stderr


def test_an_exhausted_memory_limit_ends_in_one_error_line(built, tmp_path):
    out = tmp_path / "out"
    r = lcdata("build", str(built[0]), "--out", str(out), "--local", env={"LCDATA_MEMORY_ERROR_AT": "tokenized"})
    assert r.returncode == 1 and "Traceback" not in r.stderr
    (err,) = error_lines(r.stderr)
    assert err.startswith(f"error: out of memory while building {out}: lower `docs_per_shard`")
    assert not temps(out) and not (out / ".lcdata.lock").exists()
    assert lcdata("build", str(built[0]), "--out", str(out), "--local").returncode == 0
    assert (out / "manifest.json").read_bytes() == (built[1] / "manifest.json").read_bytes()


def test_sigint_says_a_rerun_resumes(built, tmp_path):
    out = tmp_path / "out"
    p = subprocess.Popen([str(BIN / "lcdata"), "build", str(built[0]), "--out", str(out), "--local"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + TIMEOUT
    while not (out / ".lcdata.lock").exists() and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=TIMEOUT)
    assert p.returncode == 130, err
    (line,) = error_lines(err)
    assert "interrupted" in line and "rerun the same command to resume" in line
    assert not temps(out) and not (out / ".lcdata.lock").exists()
    assert lcdata("build", str(built[0]), "--out", str(out), "--local").returncode == 0
    assert (out / "manifest.json").read_bytes() == (built[1] / "manifest.json").read_bytes()


# ------------------------------------------------------------------ the smaller points
def test_a_bad_model_directory_leaves_a_finished_dataset_alone(built, tmp_path):
    out = copy_build(built, tmp_path / "out")
    cfg = yaml.safe_load(built[0].read_text())
    cfg["model"] = cfg["model"] + "-typo"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    r = lcdata("build", str(bad), "--out", str(out), "--local")
    assert r.returncode == 2 and "tokenizer.json not found" in r.stderr
    assert (out / "manifest.json").read_bytes() == (built[1] / "manifest.json").read_bytes()
    assert lcdata("verify", str(out)).returncode == 0


def test_a_hostile_chat_template_is_one_error_naming_the_file(built, model_dir, tmp_path):
    evil = tmp_path / "evil-model"
    shutil.copytree(model_dir, evil, ignore=shutil.ignore_patterns("*.safetensors", "*.gguf"))
    (evil / "chat_template.jinja").write_text("{{ ''.__class__.__mro__[1].__subclasses__() }}")
    cfg = yaml.safe_load(built[0].read_text())
    cfg["model"] = str(evil)
    path = tmp_path / "evil.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = lcdata("build", str(path), "--out", str(tmp_path / "out"), "--local")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    (err,) = error_lines(r.stderr)
    assert f"{evil / 'chat_template.jinja'}: the chat template cannot be used (SecurityError" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("over", "message"), [
    ({"seed": -1}, "`seed`: Input should be greater than or equal to 0"),
    ({"tasks": [{"kind": "needles", "n_needles": 2, "n_queried": 3}]},
     "`needles.n_queried` (3) must be <= `n_needles` (2)"),
    ({"sources": [{"name": "a", "kind": "shakespeare"}, {"name": "a", "kind": "shakespeare"}]},
     "  source names must be unique, got ['a', 'a']"),
])
def test_config_mistakes_fail_before_any_work_with_a_located_message(model_dir, tmp_path, over, message):
    r = lcdata("build", str(cfg_file(tmp_path, model_dir, **over)), "--out", str(tmp_path / "out"), "--local")
    assert r.returncode == 2
    assert message in r.stderr and "``" not in r.stderr and "Value error" not in r.stderr
    assert not (tmp_path / "out").exists()


def test_the_dataset_card_publishes_no_local_path(built, tmp_path):
    out = copy_build(built, tmp_path / "out")
    assert lcdata("report", str(out)).returncode == 0
    card = (out / "README.md").read_text()
    model = json.loads((out / "manifest.json").read_text())["config"]["model"]
    assert Path(model).is_absolute() and model not in card and str(tmp_path) not in card
    assert f"model: {Path(model).name}" in card


def test_the_native_library_is_rebuilt_when_its_file_changed(tmp_path, monkeypatch):
    import lcdata.native as native

    if not shutil.which("cc") and not shutil.which("gcc"):
        pytest.skip("no C compiler")
    monkeypatch.setenv("LCDATA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(native, "_LIB", False)
    assert native.load() is not None
    (so,) = (tmp_path / "cache").glob("gather-*.so")
    swapped = so.with_name("swapped")
    swapped.write_bytes(b"\x7fELF not the library we built")
    os.replace(swapped, so)  # a new file (the loaded one stays mapped, unchanged)
    monkeypatch.setattr(native, "_LIB", False)
    assert native.load() is not None  # rebuilt, not loaded as found
    assert so.read_bytes().startswith(b"\x7fELF") and b"not the library" not in so.read_bytes()
    os.chmod(tmp_path / "cache", 0o777)  # writable by others: the cache is not trusted
    monkeypatch.setattr(native, "_LIB", False)
    lib = native.load()
    assert lib is not None and not str(lib._name).startswith(str(tmp_path / "cache"))


def test_a_truncated_shard_names_the_size_mismatch(built, tmp_path):
    from train.data import DataError, PackedRows

    out = copy_build(built, tmp_path / "out")
    shard = sorted((out / "shards").glob("*.arrow"))[0]
    size = shard.stat().st_size
    shard.write_bytes(shard.read_bytes()[: size - 1000])
    with pytest.raises(DataError, match=rf"{shard.name}: {size - 1000:,} bytes, but .* says {size:,} \(truncated"):
        PackedRows([out])
    r = lcdata("verify", str(out))
    assert r.returncode == 1 and f"{size - 1000:,} bytes, the manifest says {size:,}" in r.stderr
