"""Remote sources: a source ``path`` may be an fsspec URL (``s3://``, ``gs://``, ``hf://``,
``https://``, ``memory://``). This module answers, for such a path: which filesystem and root
it names, which files are under the root, how to open one for streaming reads, and the stamp
that keys a shard's ``_DONE`` marker (the object's ETag where the filesystem gives one, else
its size and modification time).

Local paths never come here: they keep the ``Path`` code (symlink checks, memory-mapped
Arrow, ``os.stat`` stamps). Credentials are not this module's business: fsspec's filesystems
find them in the environment (``AWS_*`` and ``~/.aws`` for s3fs, Application Default
Credentials for gcsfs, ``HF_TOKEN`` for hf), and ``storage_options`` passes the rest.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO

from lcdata.read.base import SourceError, keep_file

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

    from lcdata.config import SourceConfig

_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")

# the package that provides a protocol's filesystem, for the install hint
FS_PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "hf": "huggingface_hub",
               "http": "aiohttp", "https": "aiohttp", "abfs": "adlfs", "az": "adlfs"}
# these release with fsspec and pin its exact version, so the hint pins theirs to match
_SAME_VERSION = {"s3fs", "gcsfs", "adlfs"}

# errors that say nothing about the file (the machine, the network, the process's limits)
TRANSIENT_ERRNOS = {errno.EIO, errno.ESTALE, errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EAGAIN, errno.EINTR,
                    errno.ETIMEDOUT, errno.ENOSPC}
# exceptions raised by these libraries come from the network or the service, never the file
NETWORK_MODULES = {"aiohttp", "httpx", "httpcore", "requests", "urllib3", "botocore", "aiobotocore", "google"}

# info() keys, in order of preference: a content tag, then a modification time
ETAG_KEYS = ("ETag", "etag", "blob_id", "md5Hash", "Content-MD5", "Digest")
MTIME_KEYS = ("LastModified", "Last-Modified", "last_modified", "updated", "mtime", "created")


def is_url(path: str | None) -> bool:
    """Whether a source path is a URL (``scheme://``), read through fsspec."""
    return path is not None and _URL.match(path) is not None


def is_network(e: BaseException) -> bool:
    """Whether an error came from the network or a storage service (a timeout, a reset, an
    HTTP 5xx), not from a file's content."""
    if isinstance(e, TimeoutError | ConnectionError):  # asyncio's and fsspec's timeouts too
        return True
    return any(c.__module__.split(".")[0] in NETWORK_MODULES for c in type(e).__mro__)


def is_transient(e: BaseException) -> bool:
    """Whether an error while reading is the machine's or the network's, not the file's: the
    shard then fails (a rerun retries) instead of dropping the file as unreadable."""
    return (isinstance(e, OSError) and e.errno in TRANSIENT_ERRNOS) or is_network(e)


class RemoteReadError(ConnectionError):
    """A URL that could not be read for a reason that is not the file's (the network, the
    service, the credentials): the shard fails, and a rerun retries it."""


def unreachable(url: str, e: BaseException) -> RemoteReadError:
    return RemoteReadError(f"{url}: {type(e).__name__}: {str(e)[:300]}; not the file's fault: check the network, "
                           "the service and the credentials, then rerun the same command (finished shards are kept)")


def not_the_files_fault(e: BaseException) -> bool:
    """A network error or refused credentials (PermissionError) reading a URL: the remote read
    fails as a ``RemoteReadError`` (the shard fails, a rerun retries) instead of a dropped file."""
    return is_network(e) or isinstance(e, PermissionError)


@contextmanager
def network_errors(url: str) -> Iterator[None]:
    """Network errors and refused credentials as one ``RemoteReadError`` naming the URL and
    what to do."""
    try:
        yield
    except RemoteReadError:
        raise
    except Exception as e:
        if not_the_files_fault(e):
            raise unreachable(url, e) from e
        raise


def filesystem(url: str, options: dict[str, Any] | None = None) -> tuple[AbstractFileSystem, str]:
    """The filesystem a URL is on and the URL's path inside it; a protocol whose package is
    missing (``s3://`` without s3fs) is an error naming the ``pip install`` that adds it."""
    import fsspec

    try:
        return fsspec.core.url_to_fs(url, **(options or {}))
    except ImportError as e:
        protocol = url.split("://", 1)[0]
        pkg = FS_PACKAGES.get(protocol)
        if pkg is None:
            raise SourceError(f"{url}: {e}") from e
        pin = f"=={fsspec.__version__}" if pkg in _SAME_VERSION else ""
        raise SourceError(f"{url}: {e}; run `pip install {pkg}{pin}` to read `{protocol}://` paths") from e
    except ValueError as e:
        if "Protocol not known" not in str(e):
            raise
        raise SourceError(f"{url}: {e}; fsspec reads s3://, gs://, hf://, http(s)://, memory:// and the "
                          "protocols its extensions add: fix the URL or install the filesystem") from e


@dataclass(frozen=True)
class RemoteRoot:
    """A source's root URL: a file, or a directory whose files ``files`` lists."""

    url: str  # as configured, less a trailing "/"
    fs: AbstractFileSystem
    path: str  # the root inside the filesystem
    is_dir: bool

    def url_of(self, rel: str) -> str:
        return f"{self.url}/{rel}"

    @property
    def name(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    def files(self, suffixes: list[str], cfg: SourceConfig, skip: Callable[[str], bool] | None = None) -> list[str]:
        """Relative paths of the files under the root, filtered and sorted as ``walk`` does."""
        prefix = self.path.rstrip("/") + "/"
        rels = []
        with network_errors(self.url):
            names = self.fs.find(self.path)
        for name in names:
            if not name.startswith(prefix):
                continue  # an HTTP index page may link outside the root: not its files
            rel = name[len(prefix):]
            if keep_file(rel, suffixes, cfg, skip):
                rels.append(rel)
        return sorted(rels)


def remote_root(cfg: SourceConfig) -> RemoteRoot:
    """The source's root URL, which must exist: the build stops at planning, naming it."""
    assert cfg.path is not None
    url = cfg.path.rstrip("/")
    fs, path = filesystem(cfg.path, cfg.storage_options)
    fs.invalidate_cache()  # a listing cached by an earlier build in this process may be stale
    try:
        with network_errors(cfg.path):
            info = fs.info(path)
    except FileNotFoundError as e:
        raise SourceError(f"source `{cfg.name}`: {cfg.path} does not exist; fix `path` in the config (for a "
                          "private bucket or repository, check the credentials in the environment)") from e
    # HTTP has no directories: a URL ending in "/" is an index page whose links are the files
    is_dir = info.get("type") == "directory" or (cfg.path.startswith(("http://", "https://")) and cfg.path.endswith("/"))
    return RemoteRoot(url, fs, path, is_dir)


def open_url(url: str, cfg: SourceConfig) -> BinaryIO:
    """A remote file opened for streaming binary reads (read ahead in blocks, seekable where
    the server allows ranges)."""
    fs, path = filesystem(url, cfg.storage_options)
    return fs.open(path, "rb")


def exists(url: str, cfg: SourceConfig) -> bool:
    fs, path = filesystem(url, cfg.storage_options)
    with network_errors(url):
        return fs.exists(path)


def stamp(url: str, options: dict[str, Any] | None = None) -> tuple[int, str]:
    """A remote file's size and change tag: its ETag (s3, gs, http servers that send one; the
    git blob id on hf) where the filesystem gives one, else its modification time, else ""
    (then only a change of size is noticed)."""
    fs, path = filesystem(url, options)
    with network_errors(url):
        info = fs.info(path)
    size = int(info.get("size") or 0)
    for keys, kind in ((ETAG_KEYS, "etag"), (MTIME_KEYS, "mtime")):
        for k in keys:
            if info.get(k):
                return size, f"{kind}:{info[k]}"
    return size, ""


def open_binary(path: str, cfg: SourceConfig) -> BinaryIO:
    """A unit's file opened for binary reading: a local file as it is, a URL through fsspec."""
    return open_url(path, cfg) if is_url(path) else open(path, "rb")  # the caller closes it
