"""What each ``/api/`` path answers: query parameters checked, the source
asked, the reply shaped by ``views``.

Owns the endpoint table and every limit on what one reply may hold.  Knows
nothing of HTTP, sockets or tokens (``server`` does), and only reads: no
endpoint changes the cluster or runs code.  Bad parameters raise
``BadRequest`` (400), unknown logs ``NotFound`` (404); whatever the source
raises propagates, and the server turns it into a 500.
"""

from __future__ import annotations

import re
import time
from typing import Any, Callable, Dict, Mapping, Optional

from zray._private.dashboard import views

# How much one reply may hold, so a job of 10,000 tasks still draws at once.
TASKS_DEFAULT = 200
TASKS_MAX = 2_000
TASK_SCAN_LIMIT = 20_000        # tasks read to filter by state
PROGRESS_SCAN_LIMIT = 200_000   # tasks read to count progress
TIMELINE_MAX_BOXES = 2_000
GRAPH_MAX_NODES = 300
OBJECTS_MAX = 1_000
ACTORS_MAX = 2_000
LOG_TAIL_DEFAULT = 64 * 1024
LOG_TAIL_MAX = 1024 * 1024

_HEX = re.compile(r"[0-9a-fA-F]{1,128}")

Query = Mapping[str, str]
Endpoint = Callable[[Query], Any]


class BadRequest(ValueError):
    """A query parameter the endpoint cannot use."""


class NotFound(LookupError):
    """A log the source does not list."""


def _hex(query: Query, name: str) -> Optional[str]:
    value = query.get(name, "").strip()
    if not value:
        return None
    if not _HEX.fullmatch(value):
        raise BadRequest(f"{name} must be a hex ID, got {value[:40]!r}")
    return value.lower()


def _int(query: Query, name: str, default: int, lowest: int, highest: int) -> int:
    raw = query.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer, got {raw[:40]!r}")
    return min(max(value, lowest), highest)


def _choice(query: Query, name: str, allowed: tuple) -> Optional[str]:
    value = query.get(name, "").strip()
    if not value:
        return None
    if value not in allowed:
        raise BadRequest(f"{name} must be one of {', '.join(allowed)}; got {value[:40]!r}")
    return value


class Api:
    """The JSON endpoints over one source; see ``server`` for the source's methods."""

    def __init__(self, source: Any) -> None:
        self._source = source

    def routes(self) -> Dict[str, Endpoint]:
        return {
            "/api/cluster": self.cluster,
            "/api/jobs": self.jobs,
            "/api/tasks": self.tasks,
            "/api/actors": self.actors,
            "/api/objects": self.objects,
            "/api/progress": self.progress,
            "/api/timeline": self.timeline,
            "/api/graph": self.graph,
            "/api/logs": self.logs,
            "/api/log": self.log,
        }

    def cluster(self, query: Query) -> Any:
        return self._source.cluster()

    def jobs(self, query: Query) -> Any:
        return views.jobs_newest_first(self._source.jobs())

    def tasks(self, query: Query) -> Any:
        job = _hex(query, "job")
        state = _choice(query, "state", views.TASK_STATES)
        limit = _int(query, "limit", TASKS_DEFAULT, 1, TASKS_MAX)
        # Unfiltered, the source's own "most recent `limit`" is the answer;
        # a state filter must look further back to find `limit` matches.
        scan = limit if state is None else TASK_SCAN_LIMIT
        return views.recent_tasks(self._source.tasks(job, scan), state, limit)

    def progress(self, query: Query) -> Any:
        job = _hex(query, "job")
        reply = views.progress(self._source.tasks(job, PROGRESS_SCAN_LIMIT))
        reply["capped"] = reply["tasks"] >= PROGRESS_SCAN_LIMIT
        return reply

    def timeline(self, query: Query) -> Any:
        job = _hex(query, "job")
        events = self._source.timeline(job)
        if query.get("full") == "1":
            # The whole trace, for chrome://tracing or Perfetto, not for the page.
            return events
        reply = views.recent_timeline(events, TIMELINE_MAX_BOXES)
        reply["now"] = time.time()
        return reply

    def graph(self, query: Query) -> Any:
        return views.capped_graph(self._source.graph(_hex(query, "job")), GRAPH_MAX_NODES)

    def actors(self, query: Query) -> Any:
        return views.actors_summary(self._source.actors(), ACTORS_MAX)

    def objects(self, query: Query) -> Any:
        return views.objects_summary(self._source.objects(), OBJECTS_MAX)

    def logs(self, query: Query) -> Any:
        return {"logs": self._source.logs()}

    def log(self, query: Query) -> Any:
        node = _hex(query, "node")
        name = query.get("file", "")
        tail = _int(query, "tail", LOG_TAIL_DEFAULT, 0, LOG_TAIL_MAX)
        if node is None or not name:
            raise BadRequest("log needs node=<hex> and file=<name>")
        listed = self._source.logs()
        key = next((n for n in listed if str(n).lower() == node), None)
        files = None if key is None else listed[key]
        # Only a name the source listed for that node may be read: the name
        # never reaches a path unless it matched one exactly.
        if files is None or name not in files or "/" in name or name in (".", ".."):
            raise NotFound(f"no log {name[:80]!r} on node {node[:16]}")
        return {"node": key, "file": name, "tail": tail,
                "text": self._source.log(key, name, tail)}
