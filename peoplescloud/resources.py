"""What one process instance of an app may use: its memory and CPU.

An app's own figures (`resources:set`, in `App.resources`) for its process type,
else for all its types ("*"), else the node's `[shares] instance_memory_mb` and
`instance_cpus`. The reconciler gives them to the runtime, placement counts
them, and `resources:set` keeps them under the node's per-instance ceiling.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from peoplescloud.errors import UsageError
from peoplescloud.state import App

ALL_TYPES = "*"


class Size(NamedTuple):
    memory_mb: int
    cpus: float


def instance_size(app: App, ptype: str, memory_mb: int, cpus: float) -> Size:
    """The figures of one instance of `ptype`: the type's, the app's, then the defaults."""
    mine = {**app.resources.get(ALL_TYPES, {}), **app.resources.get(ptype, {})}
    return Size(int(mine.get("memory_mb", memory_mb)), float(mine.get("cpus", cpus)))


def parse_memory(text: str) -> int:
    """ "256M", "256MB", "1G", "512" (MB) -> megabytes."""
    m = re.fullmatch(r"([0-9]{1,7})\s*([mMgG][bB]?)?", text.strip())
    if not m:
        raise UsageError(f"memory={text!r}: give megabytes or gigabytes, like 256M or 1G")
    n = int(m.group(1))
    unit = (m.group(2) or "m")[0].lower()
    return n * 1024 if unit == "g" else n


def parse_cpus(text: str) -> float:
    """ "0.5", ".25", "1" -> CPUs (a share of one CPU's time, as docker's --cpus)."""
    if not re.fullmatch(r"[0-9]{0,3}(\.[0-9]{1,3})?", text.strip()) or not text.strip(" ."):
        raise UsageError(f"cpu={text!r}: give a number of CPUs, like 0.5")
    return float(text)
