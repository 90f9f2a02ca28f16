"""Crash points for the crash-safety tests: ``LCDATA_CRASH_AT=<name>`` kills the process with
SIGKILL when it reaches that point (a fault the tests cannot time from outside). Names:
``tokenized`` (a shard's first tokenized batch written, no _DONE yet), ``shard_done`` (the
first input shard finished), ``engine_batch`` (a request batch cached), ``pack`` (first
packed shard file written), ``manifest`` (manifest temp file written, not yet renamed).
``<name>:<n>`` kills the n-th time the process reaches the point (``engine_batch:3``: after
the third cached batch). ``LCDATA_MEMORY_ERROR_AT=<name>`` raises ``MemoryError`` there instead
(what an exhausted memory limit raises, at a point a test chooses)."""

from __future__ import annotations

import os
import signal

_HITS: dict[str, int] = {}


def crash_point(name: str) -> None:
    if os.environ.get("LCDATA_MEMORY_ERROR_AT") == name:
        raise MemoryError(f"injected at {name}")
    want, _, nth = os.environ.get("LCDATA_CRASH_AT", "").partition(":")
    if want != name:
        return
    _HITS[name] = _HITS.get(name, 0) + 1
    if _HITS[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
