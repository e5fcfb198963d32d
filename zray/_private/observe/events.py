"""Task lifecycle events: what a node records, and how the head folds them into records.

A node records one *event* per state change of a task, on its hot path, into an
:class:`EventBuffer`; batches drained from it travel to the head, whose
:class:`TaskStore` folds them into one record per task for the state API, the
timeline (:mod:`.trace`) and the computation graph (:mod:`.graph`)::

    node:  EventBuffer.record() ... drain() ──batches──▶ head: TaskStore.add_events()
                                                           └─▶ records() / get() / stats()

An event is the plain tuple ``(task_id, state, time, info)``: ``task_id`` bytes,
``state`` one of :data:`TASK_STATES`, ``time`` wall-clock seconds (``time.time()``,
because events from different nodes are put on one timeline), and ``info`` a dict
of extra fields or None.  ``info`` carries, by state:

- SUBMITTED: ``name``, ``job_id``, ``type`` (one of :data:`TASK_TYPES`),
  ``parent_task_id`` (None: the driver), ``actor_id``, ``args`` as
  ``[[object_id, size], ...]``, ``returns`` as ``[object_id, ...]`` and
  ``node_id`` (the submitter's node);
- PENDING_NODE_ASSIGNMENT: optionally ``node_id``;
- RUNNING: ``node_id``, ``worker_id``, ``pid``;
- FINISHED: optionally ``returns`` as ``[[object_id, size], ...]``;
- FAILED: ``error``.

This module is pure logic: it knows nothing of sockets, processes or how
events travel, and reads no clock (callers pass the time in).
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from typing import Any, Dict, Iterable, List, Optional, Tuple

SUBMITTED = "SUBMITTED"
PENDING_NODE_ASSIGNMENT = "PENDING_NODE_ASSIGNMENT"
RUNNING = "RUNNING"
FINISHED = "FINISHED"
FAILED = "FAILED"

#: Every task state, in lifecycle order; the last two are both terminal.
TASK_STATES: Tuple[str, ...] = (SUBMITTED, PENDING_NODE_ASSIGNMENT, RUNNING, FINISHED, FAILED)
TERMINAL_STATES = frozenset({FINISHED, FAILED})

NORMAL_TASK = "NORMAL_TASK"
ACTOR_TASK = "ACTOR_TASK"
ACTOR_CREATION_TASK = "ACTOR_CREATION_TASK"
TASK_TYPES: Tuple[str, ...] = (NORMAL_TASK, ACTOR_TASK, ACTOR_CREATION_TASK)

#: ``(task_id, state, time, info)``; a plain tuple because making one is on the hot path.
Event = Tuple[bytes, str, float, Optional[Dict[str, Any]]]

# How far along its lifecycle a state puts a task.  FINISHED and FAILED tie:
# which of them a task ended in is decided by time, not by rank.
_PROGRESS = {SUBMITTED: 0, PENDING_NODE_ASSIGNMENT: 1, RUNNING: 2, FINISHED: 3, FAILED: 3}

# Values repeated across many records (job, node and worker IDs, names, types)
# are kept once; past this many distinct values, new ones are simply not shared.
_SHARED_LIMIT = 10_000


class EventBuffer:
    """A node's bounded buffer of events waiting to be sent to the head.

    When ``limit`` events are waiting, new ones are dropped and counted in
    ``dropped`` (a total since creation), so a head that cannot keep up costs a
    node bounded memory, never a stall.  With ``enabled`` False, :meth:`record`
    does nothing.  Meant for one thread (a node's poll loop): drain() swaps the
    list without a lock.
    """

    __slots__ = ("limit", "enabled", "dropped", "_events")

    def __init__(self, limit: int = 100_000) -> None:
        if limit < 0:
            raise ValueError(f"EventBuffer limit must not be negative, got {limit}")
        self.limit = limit
        self.enabled = True
        self.dropped = 0
        self._events: List[Event] = []

    def record(self, task_id: bytes, state: str, time: float,
               info: Optional[Dict[str, Any]] = None) -> None:
        """Buffer one event, or count it as dropped when the buffer is full."""
        if not self.enabled:
            return
        if len(self._events) >= self.limit:
            self.dropped += 1
            return
        self._events.append((task_id, state, time, info))

    def drain(self, max_events: Optional[int] = None) -> List[Event]:
        """Remove and return buffered events, oldest first (at most ``max_events``)."""
        if max_events is not None and max_events < 0:
            raise ValueError(f"max_events must not be negative, got {max_events}")
        if max_events is None or max_events >= len(self._events):
            events, self._events = self._events, []
            return events
        events = self._events[:max_events]
        del self._events[:max_events]
        return events

    def __len__(self) -> int:
        return len(self._events)


class PackedEventBuffer:
    """A node's events packed as they come: msgpack bytes, ready to send.

    Where :class:`EventBuffer` keeps tuples, this keeps none: each event is
    packed at once into one growing bytearray, so recording makes no object
    the garbage collector must track (a node recording tens of thousands of
    events a second otherwise spends most of that time in collections), and
    a batch goes out as one frame that the head unpacks only when read
    (:func:`unpack_events`).  Bounded by ``limit`` events; the rest are
    dropped and counted.
    """

    __slots__ = ("limit", "enabled", "dropped", "_data", "_count", "_pack")

    def __init__(self, limit: int = 100_000) -> None:
        if limit < 0:
            raise ValueError(f"PackedEventBuffer limit must not be negative, got {limit}")
        import msgpack

        self.limit = limit
        self.enabled = limit > 0
        self.dropped = 0
        self._data = bytearray()
        self._count = 0
        self._pack = msgpack.Packer(use_bin_type=True).pack

    def record(self, event: tuple) -> None:
        """Pack one event (a tuple of plain values), or count it dropped when full."""
        if self._count >= self.limit:
            self.dropped += 1
            return
        self._data += self._pack(event)
        self._count += 1

    def drain(self) -> Tuple[bytes, int]:
        """``(packed events, how many)``, and an empty buffer."""
        data, count = bytes(self._data), self._count
        self._data = bytearray()
        self._count = 0
        return data, count

    def __len__(self) -> int:
        return self._count


def unpack_events(data: bytes) -> List[Any]:
    """The events :meth:`PackedEventBuffer.drain` packed, as lists."""
    import msgpack

    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=max(len(data), 1))
    unpacker.feed(data)
    return list(unpacker)


class _Task:
    """What the head knows of one task, IDs kept as bytes (hex only on the way out)."""

    __slots__ = ("seq", "task_id", "job_id", "name", "type", "state", "node_id", "worker_id",
                 "worker_pid", "actor_id", "parent_task_id", "args", "returns", "error",
                 "submitted_at", "scheduled_at", "started_at", "finished_at", "events")

    def __init__(self, seq: int, task_id: bytes) -> None:
        self.seq = seq                  # arrival order: breaks ties, and tells reused IDs apart
        self.task_id = task_id
        self.job_id: Optional[bytes] = None
        self.name: Optional[str] = None
        self.type: Optional[str] = None
        self.state: Optional[str] = None
        self.node_id: Optional[bytes] = None
        self.worker_id: Optional[bytes] = None
        self.worker_pid: Optional[int] = None
        self.actor_id: Optional[bytes] = None
        self.parent_task_id: Optional[bytes] = None
        self.args: Tuple[Tuple[bytes, Optional[int]], ...] = ()
        self.returns: List[List[Any]] = []         # [object_id, size or None]
        self.error: Optional[str] = None
        self.submitted_at: Optional[float] = None
        self.scheduled_at: Optional[float] = None
        self.started_at: Optional[float] = None
        self.finished_at: Optional[float] = None
        self.events: List[Tuple[str, float]] = []

    def order_key(self) -> Tuple[float, int]:
        """Submission order; a task whose SUBMITTED has not arrived sorts by its first event."""
        first = self.submitted_at
        if first is None:
            first = min(when for _, when in self.events) if self.events else 0.0
        return (first, self.seq)

    def as_row(self) -> Dict[str, Any]:
        return {
            "task_id": self.task_id.hex(),
            "job_id": _hex(self.job_id),
            "name": self.name,
            "type": self.type,
            "state": self.state,
            "node_id": _hex(self.node_id),
            "worker_id": _hex(self.worker_id),
            "worker_pid": self.worker_pid,
            "actor_id": _hex(self.actor_id),
            "parent_task_id": _hex(self.parent_task_id),
            "args": [{"object_id": oid.hex(), "size": size} for oid, size in self.args],
            "returns": [{"object_id": oid.hex(), "size": size} for oid, size in self.returns],
            "error": self.error,
            "submitted_at": self.submitted_at,
            "scheduled_at": self.scheduled_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "events": [{"state": state, "time": when} for state, when in self.events],
        }


def _hex(value: Optional[bytes]) -> Optional[str]:
    return None if value is None else value.hex()


def _id(value: Any) -> Optional[bytes]:
    """An ID from an event: bytes, or None when absent; anything else is malformed."""
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"expected an ID as bytes, got {type(value).__name__}")


class TaskStore:
    """The head's bounded, queryable store of task records, folded from events.

    Events of one task may arrive in any order and from several nodes (its
    SUBMITTED from the submitter's node, RUNNING and FINISHED from the node that
    ran it); a record's state is the furthest one seen.  Past ``limit`` records,
    the oldest finished or failed ones go first, then the oldest of any kind.
    Malformed events are skipped and counted, never raised: they come off the network.
    """

    def __init__(self, limit: int = 100_000) -> None:
        if limit < 1:
            raise ValueError(f"TaskStore limit must be at least 1, got {limit}")
        self.limit = limit
        self.dropped_events = 0         # lost before they reached the head (full node buffers)
        self.ignored_events = 0         # malformed or of an unknown state
        self.evicted = 0
        self._tasks: OrderedDict[bytes, _Task] = OrderedDict()    # oldest arrival first
        self._terminal: List[Tuple[float, int, bytes]] = []      # heap of (finished_at, seq, id)
        self._shared: Dict[Any, Any] = {}
        self._next_seq = 0

    # ------------------------------------------------------------------ folding

    def add_events(self, events: Iterable[Event], dropped: int = 0) -> None:
        """Fold a batch of events into records; ``dropped`` counts events lost on the way."""
        self.dropped_events += dropped
        for event in events:
            try:
                task_id, state, when, info = event
                progress = _PROGRESS[state]
                task_id = _id(task_id)
                when = float(when)
                if task_id is None or (info is not None and not isinstance(info, dict)):
                    raise TypeError("bad task_id or info")
            except (TypeError, ValueError, KeyError):
                self.ignored_events += 1
                continue
            task = self._tasks.get(task_id)
            created = task is None
            if task is None:
                task = self._tasks[task_id] = _Task(self._next_seq, task_id)
                self._next_seq += 1
            try:
                self._fold(task, state, progress, when, info or {})
            except (TypeError, ValueError, KeyError, IndexError):
                # What was folded before the bad field stays: it is still true.
                self.ignored_events += 1
            if created:
                self._evict_over_limit()

    def _fold(self, task: _Task, state: str, progress: int, when: float,
              info: Dict[str, Any]) -> None:
        stamp = (state, when)
        if stamp in task.events:
            return      # the same event delivered twice changes nothing
        task.events.append(stamp)
        if len(task.events) > 1 and task.events[-2][1] > when:
            task.events.sort(key=lambda event: (event[1], _PROGRESS[event[0]]))
        # The state first: it is the one fact worth keeping if a field below is malformed.
        self._advance(task, state, progress, when)
        if state == SUBMITTED:
            self._fold_submitted(task, when, info)
        elif state == PENDING_NODE_ASSIGNMENT:
            task.scheduled_at = when if task.scheduled_at is None else max(task.scheduled_at, when)
            # Where it waits is the best guess of its node until it runs somewhere.
            if task.started_at is None and info.get("node_id") is not None:
                task.node_id = self._share(_id(info["node_id"]))
        elif state == RUNNING:
            self._fold_running(task, when, info)
        elif state == FINISHED:
            _merge_returns(task, info.get("returns") or (), sized=True)
        elif info.get("error") is not None:
            task.error = str(info["error"])

    def _fold_submitted(self, task: _Task, when: float, info: Dict[str, Any]) -> None:
        if task.submitted_at is None or when < task.submitted_at:
            task.submitted_at = when
        task.name = self._share(None if info.get("name") is None else str(info["name"]))
        task.job_id = self._share(_id(info.get("job_id")))
        task.type = self._share(info.get("type"))
        task.parent_task_id = _id(info.get("parent_task_id"))
        task.actor_id = self._share(_id(info.get("actor_id")))
        task.args = tuple((_id(oid), None if size is None else int(size))
                          for oid, size in info.get("args") or ())  # None: not made yet
        _merge_returns(task, info.get("returns") or (), sized=False)
        # The submitter's node stands in only until the task is placed or run.
        if task.node_id is None and info.get("node_id") is not None:
            task.node_id = self._share(_id(info["node_id"]))

    def _fold_running(self, task: _Task, when: float, info: Dict[str, Any]) -> None:
        # A retried task runs more than once; the latest attempt is the one that counts.
        if task.started_at is not None and when < task.started_at:
            return
        task.started_at = when
        if info.get("node_id") is not None:
            task.node_id = self._share(_id(info["node_id"]))
        task.worker_id = self._share(_id(info.get("worker_id")))
        task.worker_pid = None if info.get("pid") is None else int(info["pid"])

    def _advance(self, task: _Task, state: str, progress: int, when: float) -> None:
        current = -1 if task.state is None else _PROGRESS[task.state]
        if progress < current:
            return
        if progress == current:
            # Two terminal events (say FAILED, then FINISHED from a retry): the later one stands.
            if state not in TERMINAL_STATES or task.finished_at is None or when < task.finished_at:
                return
        task.state = state
        if state in TERMINAL_STATES:
            task.finished_at = when
            heapq.heappush(self._terminal, (when, task.seq, task.task_id))

    def _share(self, value: Any) -> Any:
        if value is None:
            return None
        shared = self._shared.get(value)
        if shared is not None:
            return shared
        if len(self._shared) < _SHARED_LIMIT:
            self._shared[value] = value
        return value

    # ----------------------------------------------------------------- eviction

    def _evict_over_limit(self) -> None:
        while len(self._tasks) > self.limit:
            task_id = self._oldest_terminal()
            if task_id is None:
                task_id = next(iter(self._tasks))
            del self._tasks[task_id]
            self.evicted += 1
        # Stale heap entries (evicted, or superseded by a later terminal event)
        # are skipped lazily; rebuild before they outnumber live ones.
        if len(self._terminal) > 2 * len(self._tasks) + 64:
            self._terminal = [(t.finished_at, t.seq, t.task_id) for t in self._tasks.values()
                              if t.state in TERMINAL_STATES and t.finished_at is not None]
            heapq.heapify(self._terminal)

    def _oldest_terminal(self) -> Optional[bytes]:
        while self._terminal:
            finished_at, seq, task_id = heapq.heappop(self._terminal)
            task = self._tasks.get(task_id)
            if task is not None and task.seq == seq and task.finished_at == finished_at:
                return task_id
        return None

    # ------------------------------------------------------------------ queries

    def records(self, job_id: Optional[str] = None) -> List[Dict[str, Any]]:
        """Task records (fresh dicts), in submission order; only one job's if ``job_id`` (hex)."""
        tasks: Iterable[_Task] = self._tasks.values()
        if job_id is not None:
            wanted = _from_hex(job_id)
            tasks = [task for task in tasks if wanted is not None and task.job_id == wanted]
        return [task.as_row() for task in sorted(tasks, key=_Task.order_key)]

    def get(self, task_id_hex: str) -> Optional[Dict[str, Any]]:
        """One task's record, or None if it is unknown (or was evicted)."""
        task_id = _from_hex(task_id_hex)
        task = None if task_id is None else self._tasks.get(task_id)
        return None if task is None else task.as_row()

    def stats(self) -> Dict[str, int]:
        return {
            "tasks": len(self._tasks),
            "limit": self.limit,
            "dropped_events": self.dropped_events,
            "ignored_events": self.ignored_events,
            "evicted": self.evicted,
        }

    def __len__(self) -> int:
        return len(self._tasks)


def _from_hex(value: Any) -> Optional[bytes]:
    if isinstance(value, bytes):
        return value
    try:
        return bytes.fromhex(value)
    except (TypeError, ValueError):
        return None


def _merge_returns(task: _Task, returns: Iterable[Any], sized: bool) -> None:
    """Fold return IDs (SUBMITTED: IDs; FINISHED: [ID, size]) into ``task.returns``."""
    known = {entry[0]: entry for entry in task.returns}
    for item in returns:
        if sized:
            oid, size = _id(item[0]), (None if item[1] is None else int(item[1]))
        else:
            oid, size = _id(item), None
        entry = known.get(oid)
        if entry is None:
            entry = known[oid] = [oid, size]
            task.returns.append(entry)
        elif size is not None:
            entry[1] = size
