"""What `zray status` prints: pure functions of the head's status reply."""

from __future__ import annotations

from typing import Any, Dict, List


def _amount(value: float) -> str:
    return f"{value:g}" if value != int(value) else str(int(value))


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def summarize(reply: Dict[str, Any]) -> Dict[str, Any]:
    """The JSON `zray status --json` prints: nodes, totals, tasks and actors."""
    nodes: List[dict] = []
    total: Dict[str, float] = {}
    used: Dict[str, float] = {}
    pending = running = actors = 0
    store_used = store_capacity = 0
    for n in reply.get("nodes", []):
        res = n.get("resources", {})
        avail = n.get("available", res)
        in_use = {k: max(0.0, v - avail.get(k, 0)) for k, v in res.items()}
        nodes.append({"node_id": n["node_id"], "alive": n["alive"],
                      "address": n.get("node_ip"), "hostname": n.get("hostname", ""),
                      "resources": res, "in_use": in_use,
                      "store_used": n.get("store_used", 0),
                      "store_capacity": n.get("store_capacity", 0),
                      "tasks_pending": n.get("queued", 0), "tasks_running": n.get("running", 0),
                      "actors": n.get("actors", 0)})
        if not n["alive"]:
            continue
        for k, v in res.items():
            total[k] = total.get(k, 0) + v
            used[k] = used.get(k, 0) + in_use[k]
        pending += n.get("queued", 0)
        running += n.get("running", 0)
        actors += n.get("actors", 0)
        store_used += n.get("store_used", 0)
        store_capacity += n.get("store_capacity", 0)
    pending += len(reply.get("unplaced", []))
    return {"nodes": nodes,
            "alive_nodes": sum(1 for n in nodes if n["alive"]),
            "dead_nodes": sum(1 for n in nodes if not n["alive"]),
            "resources": {"total": total, "in_use": used},
            "object_store": {"used": store_used, "capacity": store_capacity},
            "tasks": {"pending": pending, "running": running,
                      "unplaceable": list(reply.get("unplaced", []))},
            "actors_alive": actors}


def _of(name: str, in_use: float, total: float) -> str:
    """``used/total name``; ``memory`` is a number of bytes, and reads as one."""
    if name == "memory":
        return f"{_bytes(in_use)}/{_bytes(total)} memory"
    return f"{_amount(in_use)}/{_amount(total)} {name}"


def format_status(summary: Dict[str, Any], address: str) -> str:
    lines = [f"zray cluster at {address}: {summary['alive_nodes']} node(s) alive"
             + (f", {summary['dead_nodes']} dead" if summary["dead_nodes"] else ""), ""]
    lines.append("Nodes")
    for n in summary["nodes"]:
        state = "alive" if n["alive"] else "DEAD "
        res = ", ".join(_of(k, n["in_use"].get(k, 0), v) for k, v in sorted(n["resources"].items()))
        lines.append(f"  {n['node_id'][:12]}  {state}  {n['address'] or '?':<15}  {res}")
        lines.append(f"  {'':12}         store {_bytes(n['store_used'])} / "
                     f"{_bytes(n['store_capacity'])}; tasks {n['tasks_running']} running, "
                     f"{n['tasks_pending']} pending; {n['actors']} actor(s)")
    lines.append("")
    lines.append("Resources (in use / total, alive nodes)")
    total, in_use = summary["resources"]["total"], summary["resources"]["in_use"]
    for k in sorted(total):
        lines.append(f"  {_of(k, in_use.get(k, 0), total[k])}")
    store = summary["object_store"]
    lines.append(f"  {_bytes(store['used'])}/{_bytes(store['capacity'])} object store")
    lines.append("")
    tasks = summary["tasks"]
    lines.append(f"Tasks: {tasks['running']} running, {tasks['pending']} pending")
    if tasks["unplaceable"]:
        lines.append(f"  waiting for a node that can run them: {', '.join(tasks['unplaceable'])}")
    lines.append(f"Actors: {summary['actors_alive']} alive")
    return "\n".join(lines)
