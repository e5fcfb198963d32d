"""What the dashboard sends: source replies cut to a size a browser can draw.

A job may have tens of thousands of tasks; the page must still load in a
moment.  So every list that can grow with the workload is capped here
(most recent tasks, most recent timeline boxes, largest objects, first
graph nodes) and each reply says what was left out, so the page can say
so too.  Pure functions of plain dicts and lists: no I/O, no source calls.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional

from zray._private.dashboard.layout import layered_layout

OBJECT_ID_HEX = 40  # a 32-digit task ID and an 8-digit index (zray/_private/ids.py)


def short_id(hex_id: str) -> str:
    """An ID short enough for a label that still tells IDs apart.

    zray IDs start with a random per-process prefix and end with a counter,
    so a plain prefix reads the same for every task of one driver: keep both
    ends, and an object's index.  The page's ``idText`` does the same.
    """
    s = str(hex_id)
    if len(s) == OBJECT_ID_HEX:
        return f"{s[:6]}…{s[26:32]}/{int(s[32:], 16)}"
    return f"{s[:6]}…{s[-6:]}" if len(s) > 14 else s

TASK_STATES = ("SUBMITTED", "PENDING_NODE_ASSIGNMENT", "RUNNING", "FINISHED", "FAILED")
PENDING_STATES = frozenset({"SUBMITTED", "PENDING_NODE_ASSIGNMENT"})
ACTOR_STATES = ("ALIVE", "RESTARTING", "DEAD", "PENDING_CREATION")


def _newest_first_key(record: Dict[str, Any], field: str) -> float:
    value = record.get(field)
    return value if isinstance(value, (int, float)) else float("-inf")


def jobs_newest_first(jobs: Iterable[Dict[str, Any]]) -> Dict[str, Any]:
    return {"jobs": sorted(jobs, key=lambda j: _newest_first_key(j, "start_time"), reverse=True)}


def progress(tasks: Iterable[Dict[str, Any]]) -> Dict[str, Any]:
    """Per function name: how many tasks finished, run, wait and failed."""
    by_name: Dict[str, Dict[str, Any]] = {}
    count = 0
    for task in tasks:
        count += 1
        name = task.get("name") or "?"
        row = by_name.get(name)
        if row is None:
            row = by_name[name] = {"name": name, "finished": 0, "running": 0,
                                   "pending": 0, "failed": 0, "total": 0}
        state = task.get("state")
        if state == "FINISHED":
            row["finished"] += 1
        elif state == "RUNNING":
            row["running"] += 1
        elif state == "FAILED":
            row["failed"] += 1
        else:
            # SUBMITTED, PENDING_NODE_ASSIGNMENT, or a state this page does
            # not know yet: none of them has run, so all read as pending.
            row["pending"] += 1
        row["total"] += 1
    return {"functions": sorted(by_name.values(), key=lambda r: r["name"]), "tasks": count}


def recent_tasks(tasks: Iterable[Dict[str, Any]], state: Optional[str],
                 limit: int) -> Dict[str, Any]:
    """The ``limit`` most recently submitted tasks, in ``state`` if given."""
    chosen = [t for t in tasks if state is None or t.get("state") == state]
    chosen.sort(key=lambda t: _newest_first_key(t, "submitted_at"), reverse=True)
    return {"tasks": chosen[:limit], "matched": len(chosen), "limit": limit,
            "capped": len(chosen) > limit}


def _end(event: Dict[str, Any]) -> float:
    return float(event.get("ts") or 0) + float(event.get("dur") or 0)


def recent_timeline(events: Iterable[Dict[str, Any]], limit: int) -> Dict[str, Any]:
    """The ``limit`` boxes that ended last, and the metadata naming their rows."""
    boxes: List[Dict[str, Any]] = []
    meta: List[Dict[str, Any]] = []
    for event in events:
        if event.get("ph") == "X":
            boxes.append(event)
        elif event.get("ph") == "M":
            meta.append(event)
    total = len(boxes)
    if total > limit:
        boxes.sort(key=_end)
        boxes = boxes[total - limit:]
    rows = {(e.get("pid"), e.get("tid")) for e in boxes}
    pids = {pid for pid, _ in rows}
    meta = [m for m in meta if m.get("pid") in pids
            and (m.get("name") != "thread_name" or (m.get("pid"), m.get("tid")) in rows)]
    return {"events": meta + boxes, "total": total, "shown": len(boxes),
            "capped": total > limit}


def objects_summary(objects: Iterable[Dict[str, Any]], limit: int) -> Dict[str, Any]:
    """The largest ``limit`` objects, and totals per node over all of them."""
    everything = list(objects)
    per_node: Dict[str, Dict[str, Any]] = {}
    for obj in everything:
        node = obj.get("node_id") or ""
        row = per_node.get(node)
        if row is None:
            row = per_node[node] = {"node_id": node or None, "count": 0, "bytes": 0,
                                    "spilled_count": 0, "spilled_bytes": 0}
        size = obj.get("size") or 0
        row["count"] += 1
        row["bytes"] += size
        if obj.get("spilled"):
            row["spilled_count"] += 1
            row["spilled_bytes"] += size
    largest = sorted(everything, key=lambda o: o.get("size") or 0, reverse=True)[:limit]
    return {"objects": largest, "total": len(everything),
            "total_bytes": sum(r["bytes"] for r in per_node.values()),
            "per_node": sorted(per_node.values(), key=lambda r: r["bytes"], reverse=True),
            "capped": len(everything) > limit}


def actors_summary(actors: Iterable[Dict[str, Any]], limit: int) -> Dict[str, Any]:
    """The first ``limit`` actors, and how many there are in each state."""
    everything = list(actors)
    states: Dict[str, int] = {}
    for actor in everything:
        state = actor.get("state") or "?"
        states[state] = states.get(state, 0) + 1
    return {"actors": everything[:limit], "total": len(everything), "states": states,
            "capped": len(everything) > limit}


def capped_graph(graph: Dict[str, Any], max_nodes: int) -> Dict[str, Any]:
    """The first ``max_nodes`` nodes of the graph, the edges among them, and
    each node's ``layer`` and ``order`` in a layered drawing."""
    all_nodes = list(graph.get("nodes") or [])
    # The first nodes as the edges meet them, so a cap keeps tasks with what
    # they make and take, not a list of tasks alone.
    by_id = {n["id"]: n for n in all_nodes}
    ordered: Dict[str, Any] = {}
    for e in graph.get("edges") or []:
        for end in (e.get("from"), e.get("to")):
            if end in by_id and end not in ordered:
                ordered[end] = by_id[end]
        if len(ordered) >= max_nodes:
            break
    for n in all_nodes:
        if len(ordered) >= max_nodes:
            break
        ordered.setdefault(n["id"], n)
    nodes = [dict(n) for n in list(ordered.values())[:max_nodes]]
    kept = {n["id"] for n in nodes}
    edges = [e for e in graph.get("edges") or [] if e.get("from") in kept and e.get("to") in kept]
    places = layered_layout([n["id"] for n in nodes], [(e["from"], e["to"]) for e in edges])
    for node in nodes:
        node["layer"], node["order"] = places[node["id"]]
    return {"nodes": nodes, "edges": edges, "total_nodes": len(all_nodes),
            "capped": len(all_nodes) > max_nodes}
