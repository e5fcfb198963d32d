"""What the node tells the head for the state API, the timeline and the dashboard.

::

    tasks / dispatcher / actors ──submitted, running, finished──▶ EventBuffer (bounded)
                                                                     │ every second, and
    head ──COLLECT──▶ collected ──▶ EVENTS {events, state} ◀─────────┘ on COLLECT
    client ──QUERY "state"──▶ ask_head ──▶ head (which collects from every node first)

Recording is an append to a list on the agent's loop: no message, no lock.
Batches go to the head about once a second (sooner when many are waiting);
the node's state (workers, actors, drivers, largest objects) goes only when
the head collects it for a query, so a cluster nobody looks at pays nothing
for it.  A full buffer drops new events and counts them; the head reports
the count.

Owns: the event buffer and the node's snapshot.
Must not: change any task, worker, actor or object (it only reads them).
"""

from __future__ import annotations

import heapq
import os
import time
from typing import Any, Callable, Dict, List, Optional

from zray._private.observe.events import PackedEventBuffer
from zray._private.agent.objects import PENDING
from zray._private.protocol import ObjectKind, Op

FLUSH_INTERVAL = 1.0      # seconds between batches of events to the head
FLUSH_EVENTS = 5000       # ... or sooner, when this many are waiting
TOP_OBJECTS = 1000        # the largest objects a snapshot lists (all are counted)
_ACTOR_STATES = {"PENDING": "PENDING_CREATION"}   # Ray's names for the others are ours


def events_limit() -> int:
    """How many events a node keeps for the head at most (``ZRAY_EVENT_BUFFER``;
    0 turns recording off)."""
    try:
        return max(0, int(os.environ.get("ZRAY_EVENT_BUFFER", "100000")))
    except ValueError:
        return 100_000


class Recorder:
    def __init__(self, node_id: bytes, wire: Any, objects: Any, limit: int = 100_000) -> None:
        self.node_id = node_id
        self.wire = wire
        self.objects = objects
        self.buffer = PackedEventBuffer(limit)
        self.record = self.buffer.record
        self.next_flush = 0.0
        self.sent_dropped = 0
        self.output: Any = None     # the node's file of what tasks printed
        self.started: Dict[bytes, tuple] = {}   # running task -> (time, worker, pid)
        self.told_running: set = set()          # ... of which the head has heard
        # Set by the agent: the node's workers, actors and drivers, as plain rows.
        self.snapshot_parts: Callable[[], Dict[str, Any]] = lambda: {}
        self.ask_head: Callable[[dict, Callable[[Optional[dict]], None]], None] = \
            lambda body, on_reply: on_reply(None)

    @property
    def enabled(self) -> bool:
        return self.buffer.enabled

    # ------------------------------------------------------------------ events
    # One flat tuple per event, packed at once (see head_state.expand):
    # (task_id, state's index in TASK_STATES, time, fields ...).
    def submitted(self, task: Any, parent: Optional[bytes]) -> None:
        spec = task.spec
        deps = task.deps
        self.record((task.tid, 0, time.time(), task.name, task.job,
                     2 if spec.get("new_actor") else 1 if "actor_id" in spec else 0,
                     parent, spec.get("actor_id"),
                     tuple((oid, self.size_of(oid)) for oid in deps) if deps else None,
                     len(task.returns)))

    # A start is not an event of its own: it rides with the task's end, and only
    # tasks still running when a batch goes out get a RUNNING event (see send).
    def running(self, task: Any, worker: Any) -> None:
        self.started[task.tid] = (time.time(), worker.wid, worker.pid)

    def finished(self, task: Any) -> None:
        start = self.started.pop(task.tid, ())
        if task.err:
            self.record((task.tid, 4, time.time(), task.err, *start))
        else:
            self.record((task.tid, 3, time.time(),
                         tuple(self.size_of(oid) for oid in task.returns), *start))

    def size_of(self, oid: bytes) -> Optional[int]:
        obj = self.objects.get(oid)
        if obj is None or obj.state is PENDING:  # unknown or not made yet
            return None
        if obj.kind == ObjectKind.SHARED:
            return obj.size
        data = obj.data
        return len(data) if data is not None else 0

    # ------------------------------------------------------------------ task output
    def open_output(self, path: str) -> None:
        try:
            self.output = open(path, "a", buffering=1 << 16, errors="replace")
        except OSError:  # no logs folder (a test's agent): output goes to drivers only
            self.output = None

    def task_output(self, body: dict) -> None:
        """Lines a task printed, kept as its driver sees them (for `zray logs`)."""
        if self.output is not None:
            prefix = f"({body.get('name', '?')} pid={body.get('pid', '?')}) "
            self.output.write("".join(prefix + line + "\n" for line in body.get("lines", ())))

    def close_output(self) -> None:
        if self.output is not None:
            self.output.close()
            self.output = None

    # ------------------------------------------------------------------ to the head
    def tick(self, now: float) -> None:
        if now >= self.next_flush or len(self.buffer) >= FLUSH_EVENTS:
            self.next_flush = now + FLUSH_INTERVAL
            if self.output is not None:
                self.output.flush()
            if len(self.buffer) or self.buffer.dropped != self.sent_dropped or \
                    len(self.started) > len(self.told_running):
                self.send()

    def send(self, collect: int = 0) -> None:
        record, told = self.record, self.told_running
        for tid, (when, wid, pid) in self.started.items():
            if tid not in told:
                told.add(tid)
                record((tid, 2, when, wid, pid))
        if len(told) > len(self.started):
            told.intersection_update(self.started)   # those that ended since
        events, count = self.buffer.drain()
        body: Dict[str, Any] = {"node_id": self.node_id, "count": count,
                                "dropped": self.buffer.dropped - self.sent_dropped}
        self.sent_dropped = self.buffer.dropped
        if collect:
            body["collect"] = collect
            body["state"] = self.snapshot()
        self.wire.send_head(Op.EVENTS, body, events)

    def on_collect(self, body: dict, raw) -> None:
        self.send(int(body.get("collect", 0)))

    def snapshot(self) -> Dict[str, Any]:
        """The node's state for the state API (see head_state)."""
        state = self.snapshot_parts()
        objects = self.objects
        rows = []
        total = spilled = 0
        for oid, obj in objects.all():
            if obj.state is PENDING:
                continue
            size = obj.size if obj.kind == ObjectKind.SHARED else \
                (len(obj.data) if obj.data is not None else 0)
            total += size
            spilled += size if obj.spilled else 0
            rows.append((size, oid, obj))
        largest = heapq.nlargest(TOP_OBJECTS, rows, key=lambda row: row[0])
        state["objects"] = [{
            "object_id": oid.hex(), "size": size, "node_id": self.node_id.hex(),
            "kind": ObjectKind(obj.kind).name, "spilled": bool(obj.spilled),
            "ref_count": obj.refs, "pins": obj.pins,
            "owner": obj.owner.hex() if obj.owner else None} for size, oid, obj in largest]
        state["object_totals"] = {"count": len(rows), "bytes": total, "spilled_bytes": spilled,
                                  "listed": len(largest)}
        state["store"] = objects.stats()
        state["recording"] = {"buffered": len(self.buffer), "dropped": self.buffer.dropped,
                              "limit": self.buffer.limit}
        return state

    # ------------------------------------------------------------------ queries
    def on_state_query(self, ident: bytes, body: dict, reply: Callable[[dict], None]) -> None:
        """A client's QUERY "state": the head answers, after it has every node's events."""
        self.send()  # ours first, so the answer includes what this client just did
        question = {key: body[key] for key in ("kind", "job", "filters", "limit", "detail")
                    if key in body}
        question["what"] = "state"

        def answered(head_reply: Optional[dict]) -> None:
            if head_reply is None:
                reply({"error": "the zray head is not answering; state is kept there"})
            else:
                reply({key: head_reply[key] for key in ("rows", "total", "summary", "error")
                       if key in head_reply})
        self.ask_head(question, answered)


def parent_of(worker: Any) -> Optional[bytes]:
    """The task a submitting worker is running (None: a driver, or no task now)."""
    task = worker.task if worker is not None else None
    return task.tid if task is not None else None


def state_rows(node_id: bytes, clients: Any, workers: Any, actors: Any) -> dict:
    """A node's workers, actors and drivers, as the state API lists them."""
    node_hex = node_id.hex()
    drivers = [{"job_id": c.job.hex(), "pid": c.pid, "node_id": node_hex}
               for c in clients if c.kind == "driver"]
    return {"workers": rows_of_workers(list(workers), node_hex),
            "actors": rows_of_actors(list(actors), node_hex), "drivers": drivers}


def rows_of_workers(workers: List[Any], node_hex: str) -> List[dict]:
    rows = []
    for worker in workers:
        task = worker.task
        rows.append({"worker_id": worker.wid.hex(), "pid": worker.pid, "node_id": node_hex,
                     "state": worker.state.name,
                     "task": task.name if task is not None else None,
                     "actor_id": worker.actor.aid.hex() if worker.actor is not None else None,
                     "blocked": worker.blocked})
    return rows


def rows_of_actors(actors: List[Any], node_hex: str) -> List[dict]:
    rows = []
    for actor in actors:
        worker = actor.worker
        rows.append({"actor_id": actor.aid.hex(),
                     "class_name": actor.spec.get("class_name", ""),
                     "name": actor.name or "", "namespace": actor.namespace,
                     "state": _ACTOR_STATES.get(actor.state.name, actor.state.name),
                     "node_id": node_hex,
                     "pid": worker.pid if worker is not None else None,
                     "job_id": bytes(actor.spec.get("job_id", b"")).hex(),
                     "restarts_left": actor.restarts_left, "detached": actor.detached,
                     "death_cause": actor.cause or None})
    return rows
