"""The state API (Ray's ``ray.util.state``), ``timeline`` and the computation graph.

::

    list_tasks(filters, limit) ──QUERY "state"──▶ node agent ──▶ head (collects every
                                                                  node's events first)
        (no session here: straight to the head of the cluster on this machine, or
         at ``address``, with its token)
    timeline() / visualize_computation_graph() ──▶ this job's task records
        ──▶ observe.trace / observe.graph, built here

Rows are dicts that also read as attributes (``task.state``, ``task["state"]``).
Filters are Ray's: ``[("state", "=", "FAILED"), ("name", "!=", "f")]``.

Owns: asking for rows and shaping what users get.  Must not: keep state of
its own (the head's store is the one truth).
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Sequence, Tuple

from zray import exceptions
from zray._private import state as session
from zray._private.observe import graph as graphs
from zray._private.observe import trace as traces

DEFAULT_LIMIT = 100     # Ray's default for list_* calls
ALL = 1 << 30


class StateRow(dict):
    """One row of the state API: a dict whose keys also read as attributes."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _wire_filters(filters: Optional[Sequence[Tuple[str, str, Any]]]) -> List[list]:
    out = []
    for f in filters or ():
        if not isinstance(f, (tuple, list)) or len(f) != 3:
            raise ValueError(f"a filter is (key, predicate, value), e.g. ('state', '=', "
                             f"'FAILED'); got {f!r}")
        out.append([str(f[0]), str(f[1]), f[2] if isinstance(f[2], (int, float)) else str(f[2])])
    return out


def query(kind: str, *, address: Optional[str] = None, filters: Any = None,
          limit: Optional[int] = DEFAULT_LIMIT, detail: bool = False,
          job: Optional[str] = None, timeout: float = 30.0) -> Dict[str, Any]:
    """The head's answer to one state question (``protocol.StateQuery``)."""
    question: Dict[str, Any] = {"kind": kind, "filters": _wire_filters(filters),
                                "detail": bool(detail)}
    if limit is not None:
        question["limit"] = int(limit)
    if job:
        question["job"] = job
    client = session.client
    if client is not None and address is None:
        reply = client.query("state", **question)
        if reply.get("error"):
            raise exceptions.from_error(reply.get("error_type", "ValueError"), reply["error"])
        return reply
    from zray._private import services

    try:
        record = services.find_record(address or "auto")
        address, token = record["address"], record["token"]
        return services.head_query(address, token, "state", timeout=timeout, **question)
    except services.ClusterError as exc:
        if "answered:" in str(exc):
            raise ValueError(str(exc).split("answered: ", 1)[1]) from None
        raise exceptions.RaySystemError(f"the state API found no cluster: {exc}") from None


def _rows(kind: str, **kwargs: Any) -> List[StateRow]:
    return [StateRow(row) for row in query(kind, **kwargs).get("rows", [])]


def list_tasks(address: Optional[str] = None, filters: Any = None,
               limit: int = DEFAULT_LIMIT, timeout: float = 30.0,
               detail: bool = False, **_: Any) -> List[StateRow]:
    """Tasks of the cluster, oldest first (the head keeps the latest 100,000)."""
    return _rows("tasks", address=address, filters=filters, limit=limit, detail=detail,
                 timeout=timeout)


def list_actors(address: Optional[str] = None, filters: Any = None,
                limit: int = DEFAULT_LIMIT, timeout: float = 30.0,
                detail: bool = False, **_: Any) -> List[StateRow]:
    return _rows("actors", address=address, filters=filters, limit=limit, timeout=timeout)


def list_objects(address: Optional[str] = None, filters: Any = None,
                 limit: int = DEFAULT_LIMIT, timeout: float = 30.0,
                 detail: bool = False, **_: Any) -> List[StateRow]:
    """Objects in the nodes' stores, largest first (each node lists its 1,000 largest)."""
    return _rows("objects", address=address, filters=filters, limit=limit, timeout=timeout)


def list_nodes(address: Optional[str] = None, filters: Any = None,
               limit: int = DEFAULT_LIMIT, timeout: float = 30.0,
               detail: bool = False, **_: Any) -> List[StateRow]:
    return _rows("nodes", address=address, filters=filters, limit=limit, timeout=timeout)


def list_workers(address: Optional[str] = None, filters: Any = None,
                 limit: int = DEFAULT_LIMIT, timeout: float = 30.0,
                 detail: bool = False, **_: Any) -> List[StateRow]:
    return _rows("workers", address=address, filters=filters, limit=limit, timeout=timeout)


def list_jobs(address: Optional[str] = None, filters: Any = None,
              limit: int = DEFAULT_LIMIT, timeout: float = 30.0,
              detail: bool = False, **_: Any) -> List[StateRow]:
    return _rows("jobs", address=address, filters=filters, limit=limit, timeout=timeout)


def list_placement_groups(address: Optional[str] = None, filters: Any = None,
                          limit: int = DEFAULT_LIMIT, timeout: float = 30.0,
                          detail: bool = False, **_: Any) -> List[StateRow]:
    """The cluster's placement groups (asked of the head through this driver's node;
    with no session, through a driver connected for the question)."""
    from zray._private.observe import tables
    from zray.util.placement_group import state_rows

    if session.client is None:
        import zray

        with zray.init(address=address or "auto", log_to_driver=False):
            return list_placement_groups(filters=filters, limit=limit, timeout=timeout)
    rows = tables.apply_filters(state_rows(), [tuple(f) for f in _wire_filters(filters)])
    return [StateRow(row) for row in tables.limit_rows(rows, limit)]


def _one(kind: str, key: str, value: str, address: Optional[str],
         timeout: float) -> Optional[StateRow]:
    rows = _rows(kind, address=address, filters=[(key, "=", value)], limit=1, detail=True,
                 timeout=timeout)
    return rows[0] if rows else None


def get_task(id: str, address: Optional[str] = None, timeout: float = 30.0,
             **_: Any) -> Optional[StateRow]:
    return _one("tasks", "task_id", id, address, timeout)


def get_actor(id: str, address: Optional[str] = None, timeout: float = 30.0,
              **_: Any) -> Optional[StateRow]:
    return _one("actors", "actor_id", id, address, timeout)


def get_node(id: str, address: Optional[str] = None, timeout: float = 30.0,
             **_: Any) -> Optional[StateRow]:
    return _one("nodes", "node_id", id, address, timeout)


def get_worker(id: str, address: Optional[str] = None, timeout: float = 30.0,
               **_: Any) -> Optional[StateRow]:
    return _one("workers", "worker_id", id, address, timeout)


def get_job(id: str, address: Optional[str] = None, timeout: float = 30.0,
            **_: Any) -> Optional[StateRow]:
    return _one("jobs", "job_id", id, address, timeout)


def get_objects(id: str, address: Optional[str] = None, timeout: float = 30.0,
                **_: Any) -> List[StateRow]:
    return _rows("objects", address=address, filters=[("object_id", "=", id)], limit=None,
                 timeout=timeout)


def summarize_tasks(address: Optional[str] = None, timeout: float = 30.0,
                    **_: Any) -> Dict[str, Any]:
    return query("summary_tasks", address=address, limit=None, timeout=timeout)["summary"]


def summarize_actors(address: Optional[str] = None, timeout: float = 30.0,
                     **_: Any) -> Dict[str, Any]:
    return query("summary_actors", address=address, limit=None, timeout=timeout)["summary"]


def summarize_objects(address: Optional[str] = None, timeout: float = 30.0,
                      **_: Any) -> Dict[str, Any]:
    return query("summary_objects", address=address, limit=None, timeout=timeout)["summary"]


# ---------------------------------------------------------------------- timeline, graph
def job_records(job: Optional[str] = None, address: Optional[str] = None) -> List[dict]:
    """Every task record of ``job`` (default: this driver's job, else every job)."""
    if job is None and session.client is not None and address is None:
        job = session.client.job_id.hex()
    return query("tasks", address=address, limit=ALL, detail=True, job=job)["rows"]


def timeline(filename: Optional[str] = None, *, job: Optional[str] = None,
             address: Optional[str] = None) -> Optional[List[dict]]:
    """This job's tasks as Chrome trace events (open the file in Perfetto or
    chrome://tracing): written to ``filename`` if given, else returned."""
    events = traces.chrome_trace(job_records(job, address))
    if filename is None:
        return events
    with open(filename, "w") as f:
        json.dump(events, f)
    return None


def visualize_computation_graph(view: bool = False, filename: Optional[str] = None, *,
                                job: Optional[str] = None,
                                address: Optional[str] = None) -> str:
    """This job's tasks (boxes) and objects (ovals) as Graphviz DOT text.

    With ``filename``, the DOT is written there (``.dot`` added if it has no
    suffix) and rendered next to it as SVG (or PNG, if the name ends so) when
    Graphviz's ``dot`` is installed; ``view=True`` opens the drawing.
    """
    dot = graphs.to_dot(graphs.graph_model(job_records(job, address)))
    if filename is None and not view:
        return dot
    import os
    import tempfile

    if filename is None:
        filename = os.path.join(tempfile.mkdtemp(prefix="zray-graph-"), "graph.dot")
    root, ext = os.path.splitext(filename)
    fmt = ext[1:] if ext in (".svg", ".png", ".pdf") else "svg"
    dot_path = filename if ext == ".dot" else root + ".dot"
    with open(dot_path, "w") as f:
        f.write(dot)
    drawn = graphs.render(dot, root + "." + fmt, fmt)
    if view:
        import webbrowser

        webbrowser.open("file://" + os.path.abspath(drawn or dot_path))
    return dot
