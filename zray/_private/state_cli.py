"""What `zray list`, `zray summary`, `zray memory`, `zray timeline` and `zray logs` print.

The commands ask the head of the cluster on this machine (or at
``--address``, with its token) through :mod:`zray.util.state.api`; this
module chooses the columns and formats the answers.  Pure but for reading
log files.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Dict, Iterator, List, Optional

from zray._private.observe import tables

#: The columns `zray list KIND` shows (``--format json`` gives every field).
COLUMNS: Dict[str, List[str]] = {
    "tasks": ["task_id", "name", "state", "type", "node_id", "worker_pid", "error"],
    "actors": ["actor_id", "class_name", "name", "namespace", "state", "node_id", "pid"],
    "objects": ["object_id", "size", "kind", "spilled", "ref_count", "pins", "node_id"],
    "nodes": ["node_id", "state", "node_ip", "resources_total", "object_store_used",
              "object_store_capacity", "workers", "running", "queued"],
    "workers": ["worker_id", "pid", "state", "task", "actor_id", "node_id"],
    "jobs": ["job_id", "status", "driver_pid", "tasks", "start_time", "end_time"],
    "placement_groups": ["placement_group_id", "name", "state", "strategy", "bundles",
                         "is_detached"],
}
KINDS = tuple(COLUMNS)


def format_rows(kind: str, rows: List[dict], total: int, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(rows, indent=2, sort_keys=True, default=str)
    shown = [_readable(kind, row) for row in rows]
    text = tables.format_table(shown, COLUMNS[kind]) if shown else f"no {kind}"
    if total > len(rows):
        text += f"\n({len(rows)} of {total} shown; raise --limit to see more)"
    return text


def _readable(kind: str, row: dict) -> dict:
    out = dict(row)
    for key in ("size", "object_store_used", "object_store_capacity"):
        if isinstance(out.get(key), int):
            out[key] = tables.format_size(out[key])
    for key in ("start_time", "end_time"):
        if isinstance(out.get(key), (int, float)):
            out[key] = time.strftime("%H:%M:%S", time.localtime(out[key]))
    for key in ("task_id", "actor_id", "node_id", "worker_id", "job_id", "object_id"):
        if isinstance(out.get(key), str) and kind not in ("jobs",):
            out[key] = out[key][:16]
    if isinstance(out.get("resources_total"), dict):
        out["resources_total"] = ", ".join(f"{v:g} {k}" for k, v in
                                           sorted(out["resources_total"].items())
                                           if k != "memory")
    return out


def format_summary(kind: str, summary: dict, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(summary, indent=2, sort_keys=True, default=str)
    if kind == "objects":
        lines = [f"{summary['total_objects']} object(s), "
                 f"{tables.format_size(summary['total_size'])}; spilled: "
                 f"{summary['spilled']['count']} ({tables.format_size(summary['spilled']['size'])})"]
        for node, entry in sorted(summary.get("by_node", {}).items()):
            lines.append(f"  node {node[:16]}: {entry['count']} object(s), "
                         f"{tables.format_size(entry['size'])}")
        return "\n".join(lines)
    rows = []
    for name, entry in sorted(summary.get("summary", {}).items()):
        counts = entry.get("state_counts", {})
        rows.append({"name": name, "type": entry.get("type", ""),
                     "states": ", ".join(f"{state}: {n}" for state, n in sorted(counts.items()))})
    header = f"total: {summary.get('total_tasks', summary.get('total_actors', len(rows)))}"
    recording = summary.get("recording")
    if recording:
        header += (f" (the head keeps {recording['tasks']:,} of at most {recording['limit']:,}"
                   f" task records; {recording['evicted']:,} evicted, "
                   f"{recording['dropped_events']:,} events dropped by full buffers)")
    return header + "\n" + tables.format_table(rows, ["name", "type", "states"])


def format_memory(rows: List[dict], total: int, summary: dict) -> str:
    """`zray memory`: objects by size, who holds them, where, and what is spilled."""
    lines = [format_summary("objects", summary, "table"), ""]
    shown = [dict(_readable("objects", row), owner=(row.get("owner") or "")[:16])
             for row in rows]
    lines.append(tables.format_table(shown, ["object_id", "size", "node_id", "kind", "spilled",
                                             "ref_count", "pins", "owner"])
                 if shown else "no objects")
    if total > len(rows):
        lines.append(f"({len(rows)} largest of {total} shown)")
    return "\n".join(lines)


# ---------------------------------------------------------------------- logs
def session_dirs() -> List[str]:
    """The session folders of the zray nodes started on this machine."""
    from zray._private import services

    return [r["session_dir"] for r in services.read_records() if r.get("session_dir")]


def log_files(session_dir: str) -> List[str]:
    folder = os.path.join(session_dir, "logs")
    try:
        return sorted(name for name in os.listdir(folder) if name.endswith((".log", ".out")))
    except OSError:
        return []


def pick_logs(dirs: List[str], which: Optional[str]) -> List[str]:
    """Paths of the log files whose name contains ``which`` (all when None)."""
    return [os.path.join(d, "logs", name) for d in dirs for name in log_files(d)
            if which is None or which in name]


def tail(path: str, max_bytes: int) -> str:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - max_bytes))
        return f.read().decode(errors="replace")


def follow(paths: List[str], stop: Any = None) -> Iterator[str]:
    """New lines of ``paths`` as they are written (until ``stop()`` is true)."""
    offsets = {p: os.path.getsize(p) for p in paths}
    while stop is None or not stop():
        quiet = True
        for path in paths:
            with open(path, "rb") as f:
                f.seek(offsets[path])
                data = f.read()
            if data:
                quiet = False
                offsets[path] += len(data)
                yield data.decode(errors="replace")
        if quiet:
            time.sleep(0.2)


def lines_of_pid(text: str, pid: int) -> str:
    """The lines of a shared worker log that worker ``pid`` wrote."""
    mark = f"pid={pid}"
    return "".join(line for line in text.splitlines(keepends=True) if mark in line)
