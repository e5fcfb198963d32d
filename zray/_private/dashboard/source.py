"""The dashboard's source inside the head: the head's state store, read-only.

The head's loop fills :class:`~zray._private.head_state.ClusterState`; the
dashboard's request threads read it through :class:`HeadSource` (every
read takes the store's lock).  While someone has looked at the dashboard in
the last :data:`ACTIVE_SECONDS`, the head asks every node for its events
and state every :data:`REFRESH_SECONDS` (see ``Head.serve``), so the pages
stay live; an idle dashboard costs the cluster nothing.

Log files come from the session folders of the nodes started on this
machine (a node elsewhere keeps its logs on its own machine: `zray logs`
there reads them).  Only names this module lists are ever opened.
"""

from __future__ import annotations

import os
import time
from typing import Any, Dict, List, Optional

from zray._private.observe import graph as graphs
from zray._private.observe import trace as traces

ACTIVE_SECONDS = 10.0
REFRESH_SECONDS = 1.0


class HeadSource:
    def __init__(self, state: Any, session_dir: str = "") -> None:
        self.state = state
        self.session_dir = session_dir
        self.last_read = 0.0           # monotonic time of the last request

    def active(self, now: float) -> bool:
        return now - self.last_read < ACTIVE_SECONDS

    def _read(self) -> None:
        self.last_read = time.monotonic()

    # ------------------------------------------------------------------ the interface
    def cluster(self) -> Dict[str, Any]:
        self._read()
        rows = self.state.rows("nodes")   # the node beside the head registered first
        nodes = [dict(row, is_head=i == 0) for i, row in enumerate(rows)]
        return {"nodes": nodes, "session": os.path.basename(self.session_dir) or "zray"}

    def jobs(self) -> List[dict]:
        self._read()
        return self.state.rows("jobs")

    def tasks(self, job: Optional[str], limit: int) -> List[dict]:
        self._read()
        records = self.state.rows("tasks", {"job": job, "detail": True})
        return records[-limit:] if limit else records

    def actors(self) -> List[dict]:
        self._read()
        return self.state.rows("actors")

    def objects(self) -> List[dict]:
        self._read()
        return self.state.rows("objects")

    def timeline(self, job: Optional[str]) -> List[dict]:
        return traces.chrome_trace(self.tasks(job, 0), time.time())

    def graph(self, job: Optional[str]) -> Dict[str, Any]:
        return graphs.graph_model(self.tasks(job, 0))

    def logs(self) -> Dict[str, List[str]]:
        self._read()
        return {node: sorted(files) for node, (_, files) in self.log_folders().items()}

    def log(self, node: str, name: str, tail: int) -> str:
        folder, files = self.log_folders().get(node, ("", []))
        if name not in files:
            raise LookupError(f"no log {name!r} on node {node[:8]}")
        path = os.path.join(folder, name)
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - tail))
            return f.read().decode(errors="replace")

    def log_folders(self) -> Dict[str, tuple]:
        """node hex -> (its logs folder, the file names there), for nodes on this machine."""
        from zray._private import services

        folders: Dict[str, tuple] = {}
        ours = {row["node_id"] for row in self.state.rows("nodes")}
        dirs = {r.get("node_id", ""): r["session_dir"] for r in services.read_records()
                if r.get("session_dir") and r.get("node_id") in ours}
        if self.session_dir:
            for node in ours:
                dirs.setdefault(node, self.session_dir)  # an embedded session's one folder
        for node, session_dir in dirs.items():
            folder = os.path.join(session_dir, "logs")
            try:
                names = [n for n in os.listdir(folder) if n.endswith((".log", ".out"))]
            except OSError:
                continue
            folders[node] = (folder, names)
        return folders
