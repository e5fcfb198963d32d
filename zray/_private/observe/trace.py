"""Task records as a timeline: the Chrome Trace Event Format (``zray.timeline``).

The JSON array form, which Perfetto (ui.perfetto.dev) and chrome://tracing
open.  Each node is a "process" and each of its workers a "thread", named by
metadata events; each task that started is one complete event (``"ph": "X"``)
on its worker's thread, from ``started_at`` to ``finished_at`` (or to ``now``
while it runs).  Times in the format are microseconds.

Input is task records as :class:`~zray._private.observe.events.TaskStore` gives
them; this module must not reach into the store or the cluster.
"""

from __future__ import annotations

import json
import time
from typing import Any, Dict, Iterable, List, Optional, Tuple

from zray._private.observe.events import FAILED

_MICROS = 1_000_000


def chrome_trace(records: Iterable[Dict[str, Any]],
                 now: Optional[float] = None) -> List[Dict[str, Any]]:
    """Trace events for ``records``: metadata events first, then one ``X`` event per started task.

    ``now`` (wall seconds; default ``time.time()``) ends the tasks still running.
    Process IDs are 1, 2, ... per node and thread IDs 1, 2, ... per worker within
    its node, in the order the records first mention them.
    """
    end_of_running = time.time() if now is None else now
    node_pids: Dict[Optional[str], int] = {}
    worker_tids: Dict[Tuple[Optional[str], Any], int] = {}
    workers_per_node: Dict[Optional[str], int] = {}
    metadata: List[Dict[str, Any]] = []
    spans: List[Dict[str, Any]] = []
    for record in records:
        started = record.get("started_at")
        if started is None:
            continue
        node = record.get("node_id")
        pid = node_pids.get(node)
        if pid is None:
            pid = node_pids[node] = len(node_pids) + 1
            metadata.append(_metadata("process_name", pid, 0, f"node {(node or 'unknown')[:8]}"))
        worker = (node, record.get("worker_id") or record.get("worker_pid"))
        tid = worker_tids.get(worker)
        if tid is None:
            tid = workers_per_node.get(node, 0) + 1
            workers_per_node[node] = worker_tids[worker] = tid
            worker_pid = record.get("worker_pid")
            label = f"worker {worker_pid if worker_pid is not None else '?'}"
            metadata.append(_metadata("thread_name", pid, tid, label))
        finished = record.get("finished_at")
        spans.append(_task_span(record, pid, tid, started,
                                end_of_running if finished is None else finished))
    return metadata + spans


def _metadata(kind: str, pid: int, tid: int, name: str) -> Dict[str, Any]:
    return {"name": kind, "ph": "M", "pid": pid, "tid": tid, "args": {"name": name}}


def _task_span(record: Dict[str, Any], pid: int, tid: int, started: float,
               finished: float) -> Dict[str, Any]:
    args_size = sum(arg.get("size") or 0 for arg in record.get("args") or ())
    span = {
        "name": record.get("name") or "task",
        "cat": record.get("type") or "task",
        "ph": "X",
        "ts": started * _MICROS,
        # Never negative: a task whose start and end come from different clocks may be skewed.
        "dur": max(finished - started, 0.0) * _MICROS,
        "pid": pid,
        "tid": tid,
        "args": {
            "task_id": record.get("task_id"),
            "node_id": record.get("node_id"),
            "worker_pid": record.get("worker_pid"),
            "state": record.get("state"),
            "args_size": args_size,
            "error": record.get("error"),
        },
    }
    if record.get("state") == FAILED:
        span["cname"] = "terrible"      # one of the trace viewer's reserved colour names: red
    return span


def write_trace(records: Iterable[Dict[str, Any]], filename: str,
                now: Optional[float] = None) -> str:
    """Write :func:`chrome_trace` of ``records`` as JSON to ``filename``; return the filename."""
    with open(filename, "w", encoding="utf-8") as out:
        json.dump(chrome_trace(records, now=now), out)
    return filename
