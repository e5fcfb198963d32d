"""The head's store of what the cluster did and holds, for the state API.

::

    agent EVENTS {events} ─────────────▶ add_events ──▶ TaskStore (bounded)
    state query ──▶ start_collect ──COLLECT──▶ every alive agent
    agent EVENTS {collect, state} ──▶ node_collected ──▶ all answered (or 2 s) ──▶ rows

A query first collects every alive node's pending events and current state
(workers, actors, drivers, largest objects), so what it lists includes what
the asker just did; a node that does not answer within :data:`COLLECT_WAIT`
is listed as it was last seen.  The dashboard reads the same store from its
own thread: every method here takes :attr:`ClusterState.lock`.

Owns: task records (``observe.events.TaskStore``), each node's last state,
the jobs seen, collections in progress.
Must not: send anything (the head does), or unpickle anything.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from typing import Any, Callable, Deque, Dict, List, Optional, Set

from zray._private.dashboard.source import REFRESH_SECONDS
from zray._private.ids import object_id
from zray._private.observe import tables
from zray._private.observe.events import (
    SUBMITTED, TASK_STATES, TASK_TYPES, TaskStore, unpack_events,
)
from zray._private.protocol import Op

logger = logging.getLogger("zray.head")

COLLECT_WAIT = 2.0     # seconds a query waits for slow nodes before it answers
KINDS = ("tasks", "actors", "objects", "nodes", "workers", "jobs")
SUMMARIES = {"summary_tasks": ("tasks", tables.summarize_tasks),
             "summary_actors": ("actors", tables.summarize_actors),
             "summary_objects": ("objects", tables.summarize_objects)}


def records_limit() -> int:
    """How many task records the head keeps (``ZRAY_TASK_RECORDS``; the oldest
    finished ones go first)."""
    try:
        return max(1, int(os.environ.get("ZRAY_TASK_RECORDS", "100000")))
    except ValueError:
        return 100_000


def expand(node_id: bytes, event: list) -> List[tuple]:
    """An agent's packed event (see agent.recorder) as ``observe.events`` reads it:
    an end that carries its start ``(..., started, worker, pid)`` is two events."""
    task_id, code, when = bytes(event[0]), event[1], float(event[2])
    state = TASK_STATES[code]
    if code in (3, 4) and len(event) == 7:
        started = expand(node_id, [task_id, 2, event[4], event[5], event[6]])
        return started + expand(node_id, event[:4])
    if code == 0:
        name, job, kind, parent, actor, args, returns = event[3:10]
        info = {"name": str(name), "job_id": bytes(job), "type": TASK_TYPES[kind],
                "parent_task_id": parent, "actor_id": actor, "node_id": node_id,
                "args": args or [], "returns": [object_id(task_id, i) for i in range(returns)]}
    elif code == 2:
        info = {"node_id": node_id, "worker_id": event[3], "pid": int(event[4])}
    elif code == 3:
        info = {"returns": [[object_id(task_id, i), size] for i, size in enumerate(event[3])]}
    elif code == 4:
        info = {"error": str(event[3])}
    else:
        info = {"node_id": node_id}
    return [(task_id, state, when, info)]


class Collect:
    """A state query waiting for the nodes' answers."""

    __slots__ = ("askers", "waiting", "deadline")

    def __init__(self, ident: Optional[bytes], body: dict, waiting: Set[bytes],
                 deadline: float) -> None:
        self.askers = [(ident, body)]   # who asked (ident None: the dashboard's refresh)
        self.waiting = waiting
        self.deadline = deadline


class ClusterState:
    def __init__(self, node_table: Callable[[], List[dict]], limit: Optional[int] = None) -> None:
        if limit is None:
            limit = records_limit()
        self.lock = threading.RLock()
        self.tasks = TaskStore(limit)
        self.node_table = node_table        # the head's nodes, as head_records.NodeEntry.as_dict
        self.node_states: Dict[str, dict] = {}   # node hex -> its last collected state
        self.jobs: Dict[str, dict] = {}          # job hex -> first and last seen
        self.collects: Dict[int, Collect] = {}
        self.next_collect = 0
        self.pending: Deque[tuple] = collections.deque()   # (node id, events) not folded
        self.pending_count = 0
        self.pending_limit = 3 * limit       # about three events per task
        self.dropped = 0                     # events lost before they were folded

    def fold(self) -> None:
        """Fold the events waiting into task records (call with the lock held)."""
        while self.pending:
            node_id, data, count = self.pending.popleft()
            self.pending_count -= count
            try:
                events = unpack_events(data)
            except Exception:  # a batch that does not unpack: counted, not raised
                self.tasks.ignored_events += count
                continue
            expanded: List[tuple] = []
            for event in events:
                try:
                    ones = expand(node_id, event)
                except (TypeError, ValueError, IndexError, KeyError):
                    self.tasks.ignored_events += 1
                    continue
                expanded += ones
                if ones[0][1] == SUBMITTED:
                    self.saw_job(ones[0][3]["job_id"].hex(), ones[0][2])
            self.tasks.add_events(expanded)

    # ------------------------------------------------------------------ input
    def add_events(self, body: dict, raw: Any = ()) -> Optional[Collect]:
        """An agent's EVENTS; returns the collection it completed, if any.

        Events are kept as they came and folded into records only when someone
        reads (:meth:`fold`): a cluster nobody looks at spends no head CPU on
        them.  Past :attr:`pending_limit` waiting events, the oldest batches go
        (counted as dropped).
        """
        node_id = bytes(body.get("node_id", b""))
        node_hex = node_id.hex()
        count = int(body.get("count", 0) or 0)
        now = time.time()
        with self.lock:
            self.dropped += int(body.get("dropped", 0) or 0)
            if count and raw:
                self.pending.append((node_id, bytes(raw[0]), count))
                self.pending_count += count
                while self.pending_count > self.pending_limit and len(self.pending) > 1:
                    _, _, lost = self.pending.popleft()
                    self.pending_count -= lost
                    self.dropped += lost
            if "state" in body:
                state = body["state"]
                self.node_states[node_hex] = state
                for driver in state.get("drivers", ()):
                    job = self.saw_job(driver["job_id"], now)
                    job["driver_pid"] = driver.get("pid")
                    job["last_driver_seen"] = now
            collect = self.collects.get(int(body.get("collect", 0) or 0))
            if collect is None:
                return None
            collect.waiting.discard(bytes(body.get("node_id", b"")))
            if collect.waiting:
                return None
            del self.collects[int(body["collect"])]
            return collect

    def saw_job(self, job_hex: str, when: float) -> dict:
        job = self.jobs.get(job_hex)
        if job is None:
            job = self.jobs[job_hex] = {"job_id": job_hex, "start_time": when,
                                        "driver_pid": None, "last_driver_seen": None}
        elif when < job["start_time"]:
            job["start_time"] = when
        return job

    def start_collect(self, ident: Optional[bytes], body: dict, nodes: Set[bytes],
                      now: float) -> int:
        """Register a query waiting for ``nodes``; returns the COLLECT number to send,
        or 0 when it joined a collection already under way (queries never multiply
        the rounds of COLLECT: at most one is in flight)."""
        with self.lock:
            if self.collects:
                self.collects[max(self.collects)].askers.append((ident, body))
                return 0
            self.next_collect += 1
            self.collects[self.next_collect] = Collect(ident, body, set(nodes),
                                                       now + COLLECT_WAIT)
            return self.next_collect

    def take_collect(self, number: int) -> Optional[Collect]:
        with self.lock:
            return self.collects.pop(number, None)

    def expired(self, now: float) -> List[Collect]:
        """Collections whose slow nodes are given up on (answered with what there is)."""
        with self.lock:
            late = [n for n, c in self.collects.items() if c.deadline <= now]
            return [self.collects.pop(n) for n in late]

    def node_gone(self, node_id: bytes) -> List[Collect]:
        """A node died: collections waiting only for it are complete."""
        with self.lock:
            done = []
            for number, collect in list(self.collects.items()):
                collect.waiting.discard(node_id)
                if not collect.waiting:
                    done.append(self.collects.pop(number))
            return done

    # ------------------------------------------------------------------ output
    def answer(self, body: dict) -> dict:
        """The HEAD_REPLY fields for a state query (``protocol.StateQuery``)."""
        kind = body.get("kind", "tasks")
        try:
            if kind in SUMMARIES:
                source, summarize = SUMMARIES[kind]
                summary = summarize(self.rows(source, body))
                if kind == "summary_tasks":
                    summary["recording"] = self.stats()  # held, evicted, events dropped
                return {"summary": summary}
            if kind not in KINDS:
                raise ValueError(f"unknown state kind {kind!r}; one of: "
                                 f"{', '.join(KINDS + tuple(SUMMARIES))}")
            rows = tables.apply_filters(self.rows(kind, body),
                                        [tuple(f) for f in body.get("filters") or ()])
        except ValueError as exc:
            return {"error": str(exc)}
        limit = body.get("limit")
        total = len(rows)
        if limit is not None and limit >= 0:
            rows = rows[:limit]
        return {"rows": rows, "total": total}

    def rows(self, kind: str, body: Optional[dict] = None) -> List[dict]:
        body = body or {}
        with self.lock:
            self.fold()
            if kind == "tasks":
                rows = self.tasks.records(body.get("job") or None)
                if not body.get("detail"):
                    rows = [{k: v for k, v in r.items() if k != "events"} for r in rows]
                return rows
            if kind == "nodes":
                return [self.node_row(entry) for entry in self.node_table()]
            if kind == "jobs":
                return self.job_rows()
            rows = [row for state in self.node_states.values() for row in state.get(kind, ())]
            if kind == "objects":
                rows.sort(key=lambda row: row.get("size") or 0, reverse=True)
            return rows

    def node_row(self, entry: dict) -> dict:
        state = self.node_states.get(entry["node_id"], {})
        totals = state.get("object_totals", {})
        return {"node_id": entry["node_id"], "address": entry.get("address"),
                "node_ip": entry.get("node_ip"), "hostname": entry.get("hostname", ""),
                "alive": entry.get("alive", False), "state": "ALIVE" if entry.get("alive")
                else "DEAD", "resources_total": entry.get("resources", {}),
                "resources_available": entry.get("available", {}),
                "object_store_used": entry.get("store_used", 0),
                "object_store_capacity": entry.get("store_capacity", 0),
                "objects": totals.get("count"), "spilled_bytes": totals.get("spilled_bytes"),
                "workers": entry.get("workers", 0), "running": entry.get("running", 0),
                "queued": entry.get("queued", 0), "actors": entry.get("actors", 0)}

    def job_rows(self) -> List[dict]:
        drivers = {d["job_id"]: d for s in self.node_states.values()
                   for d in s.get("drivers", ())}
        counts: Dict[str, int] = {}
        ended: Dict[str, float] = {}
        for record in self.tasks.records():
            job = record.get("job_id")
            if job:
                counts[job] = counts.get(job, 0) + 1
                done = record.get("finished_at") or record.get("submitted_at") or 0
                ended[job] = max(ended.get(job, 0), done)
        rows = []
        for job_hex, job in self.jobs.items():
            running = job_hex in drivers
            rows.append({"job_id": job_hex, "status": "RUNNING" if running else "FINISHED",
                         "driver_pid": job.get("driver_pid"), "start_time": job["start_time"],
                         "end_time": None if running else
                         (job.get("last_driver_seen") or ended.get(job_hex)),
                         "tasks": counts.get(job_hex, 0)})
        return rows

    def stats(self) -> Dict[str, Any]:
        with self.lock:
            self.fold()
            stats = self.tasks.stats()
            stats["dropped_events"] += self.dropped
            stats["nodes_reporting"] = len(self.node_states)
            return stats


class StateVerbs:
    """The head's verbs for the state API and the dashboard (a part of ``head.Head``:
    it uses the head's ``state``, ``nodes``, ``to_node``, ``reply``, ``token`` and
    ``tell_starter``)."""

    state: ClusterState
    nodes: Dict[bytes, Any]
    token: Optional[str]
    dashboard: Any
    next_refresh: float
    to_node: Callable[..., bool]
    reply: Callable[..., bool]
    tell_starter: Callable[[str], None]

    def on_events(self, ident: bytes, body: dict, raw) -> None:
        done = self.state.add_events(body, raw)
        if done is not None:
            self.answer_state(done)

    def collect_state(self, ident: Optional[bytes], body: dict) -> None:
        """A state query: every alive node sends its events and state first."""
        alive = {n.node_id for n in self.nodes.values() if n.alive}
        number = self.state.start_collect(ident, body, alive, time.monotonic())
        if not number:
            return  # answered when the collection under way completes
        for node_id in alive:
            self.to_node(node_id, Op.COLLECT, {"collect": number})
        if not alive:
            self.answer_state(self.state.take_collect(number))

    def answer_state(self, collect: Any) -> None:
        for ident, body in collect.askers if collect is not None else ():
            if ident is not None:
                reply = self.state.answer(body)
                reply["req"] = body.get("req", 0)
                self.reply(ident, Op.HEAD_REPLY, reply)

    def start_dashboard(self, where: str, session_dir: str) -> None:
        """Serve the dashboard at ``HOST:PORT``; tell the starter its URL (or why not)."""
        from zray._private.dashboard.server import Dashboard
        from zray._private.dashboard.source import HeadSource

        host, _, port = where.rpartition(":")
        source = HeadSource(self.state, session_dir)
        try:
            self.dashboard = Dashboard(source, host=host, port=int(port),
                                       token=self.token).start()
        except (OSError, ValueError) as exc:
            logger.warning("no dashboard at %s: %s", where, exc)
            self.tell_starter(f"dashboard-failed {exc}")
            return
        logger.info("dashboard at %s", self.dashboard.url)
        self.tell_starter(f"dashboard {self.dashboard.url}")

    def refresh_for_dashboard(self, now: float) -> None:
        """While someone looks at the dashboard, collect the nodes' state every second."""
        source = self.dashboard.source
        if source.active(now) and now >= self.next_refresh:
            self.next_refresh = now + REFRESH_SECONDS
            self.collect_state(None, {})


