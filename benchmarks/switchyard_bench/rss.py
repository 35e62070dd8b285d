"""Resident memory of a process and all its descendants, read from Linux's /proc.

A stack part can be several processes (vLLM's engine core, Triton's Python-backend stubs, Nginx's
workers): its RSS here is the sum over its tree. Pages shared between processes of one tree count
once per process, as ``ps`` shows them; that changes the level, not the trend a soak looks at.
"""

from __future__ import annotations

import os
from pathlib import Path

PAGE = os.sysconf("SC_PAGE_SIZE")
PROC = Path("/proc")


def _parents() -> dict[int, int]:
    """pid → parent pid of every process now."""
    out: dict[int, int] = {}
    for d in PROC.iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:  # it exited meanwhile
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the last ')'.
        out[int(d.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return out


def descendants(pid: int, parents: dict[int, int] | None = None) -> list[int]:
    """``pid`` and every process below it."""
    parents = _parents() if parents is None else parents
    children: dict[int, list[int]] = {}
    for child, parent in parents.items():
        children.setdefault(parent, []).append(child)
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    return tree


def rss_bytes(pid: int) -> int | None:
    """One process's resident set (``statm``'s second field), None once it has exited."""
    try:
        return int((PROC / str(pid) / "statm").read_text().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return None


def tree_rss(pids: dict[str, int]) -> dict[str, int | None]:
    """Per name, the summed RSS of the process and its descendants (one /proc scan for all); None
    when the process itself is gone."""
    parents = _parents()
    out: dict[str, int | None] = {}
    for name, pid in pids.items():
        own = rss_bytes(pid)
        out[name] = None if own is None else own + sum(rss_bytes(p) or 0 for p in descendants(pid, parents)[1:])
    return out
