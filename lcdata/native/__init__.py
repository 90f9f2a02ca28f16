"""An optional C kernel for the packer's copy loop, compiled once with the system C compiler
and loaded with ctypes. Without a compiler (or with LCDATA_NO_NATIVE=1) the packer uses its
numpy path, which gives identical bytes (a test checks both)."""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sysconfig
import tempfile
from pathlib import Path

_SRC = Path(__file__).with_name("gather.c")
_LIB: ctypes.CDLL | None | bool = False  # False: not tried yet


def _cache_dir() -> Path:
    return Path(os.environ.get("LCDATA_CACHE", Path.home() / ".cache" / "lcdata"))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _private(path: Path) -> bool:
    """Owned by this user and writable by no one else (what ssh asks of its keys)."""
    st = path.stat()
    return st.st_uid == os.getuid() and not st.st_mode & 0o022


def load() -> ctypes.CDLL | None:
    """The compiled kernel, or None where it cannot be had."""
    global _LIB
    if _LIB is not False:
        return _LIB  # type: ignore[return-value]
    _LIB = None
    if os.environ.get("LCDATA_NO_NATIVE"):
        return None
    cc = shutil.which(os.environ.get("CC", "") or "cc") or shutil.which("gcc")
    if not cc:
        return None
    src = _SRC.read_bytes()
    tag = hashlib.sha256(src + (sysconfig.get_platform()).encode()).hexdigest()[:16]
    cache = _cache_dir()
    cache.mkdir(parents=True, exist_ok=True, mode=0o700)
    scratch = None
    if not _private(cache):
        # another user could swap the library we load: compile into a private directory instead
        cache = scratch = Path(tempfile.mkdtemp(prefix="lcdata-native-"))
    so = cache / f"gather-{tag}.so"
    digest = so.with_name(so.name + ".sha256")  # written with the library: a changed file is rebuilt
    if not (so.is_file() and digest.is_file() and _private(so) and _sha256(so) == digest.read_text().strip()):
        with tempfile.TemporaryDirectory(dir=cache) as d:
            tmp = Path(d) / so.name
            r = subprocess.run([cc, "-O3", "-shared", "-fPIC", "-o", str(tmp), str(_SRC)], capture_output=True)
            if r.returncode != 0:
                return None
            tmp.chmod(0o755)  # whatever the umask: a group-writable library is not trusted next time
            (Path(d) / "digest").write_text(_sha256(tmp))
            os.replace(tmp, so)
            os.replace(Path(d) / "digest", digest)
    lib = ctypes.CDLL(str(so))
    if scratch is not None:
        shutil.rmtree(scratch, ignore_errors=True)  # the loaded library stays mapped
    p = ctypes.c_void_p
    lib.lcdata_gather.argtypes = [ctypes.c_int64, p, p, p, p, p, p, p, p]
    lib.lcdata_gather.restype = None
    _LIB = lib
    return lib
