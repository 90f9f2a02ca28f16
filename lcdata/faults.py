"""Crash points for the crash-safety tests: ``LCDATA_CRASH_AT=<name>`` kills the process with
SIGKILL when it reaches that point (a fault the tests cannot time from outside). Names:
``tokenized`` (a shard's first tokenized batch written, no _DONE yet), ``shard_done`` (the
first input shard finished), ``engine_batch`` (a request batch cached), ``pack`` (first
packed shard file written), ``manifest`` (manifest temp file written, not yet renamed)."""

from __future__ import annotations

import os
import signal


def crash_point(name: str) -> None:
    if os.environ.get("LCDATA_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
