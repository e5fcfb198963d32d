"""Actors living on this node: creation, their calls in order, restarts, death, names.

::

    creation task ──▶ dispatcher runs it on a worker ──▶ (started) the worker is the actor's
    call ──▶ admit: in the actor's queue ──▶ call_ready ──▶ pump: EXECUTE in submission order
    TASK_DONE ──▶ call_done          worker died ──▶ calls fail; restart while restarts are left
    last handle gone (anchor freed) ──▶ retire: queued calls finish, then EXIT

Each actor's handles are counted through its *anchor*, the result of its
creation task: when the anchor is freed, no handle is left anywhere.

Owns: actor records, the anchor -> actor map, actor names, which actors
were placed on other nodes.
Must not: hold task records or pick workers; it uses the task table's and
dispatcher's verbs.
"""

from __future__ import annotations

import collections
import enum
import logging
from typing import Any, Callable, Deque, Dict, List, Optional

from zray import exceptions
from zray._private import ids
from zray._private.agent.tasks import FINISHED, QUEUED, RUNNING, Task
from zray._private.agent.workers import WorkerRec, WorkerState
from zray._private.protocol import Op

logger = logging.getLogger("zray.node")


class ActorState(enum.Enum):
    PENDING = "pending"        # its creation task has not finished
    ALIVE = "alive"
    RESTARTING = "restarting"
    DEAD = "dead"


class ActorRec:
    """An actor on this node: its worker, its calls in order, and its fate."""

    __slots__ = ("aid", "spec", "owner", "worker", "state", "queue", "inflight",
                 "restarts_left", "name", "detached", "cause", "anchor", "killed", "exiting",
                 "held")

    def __init__(self, spec: dict, owner: bytes) -> None:
        self.aid: bytes = spec["actor_id"]
        self.spec = spec
        self.owner = owner
        self.worker: Optional[WorkerRec] = None
        self.state = ActorState.PENDING
        self.queue: Deque[Task] = collections.deque()
        self.inflight: Dict[bytes, Task] = {}
        restarts = int(spec.get("max_restarts", 0))
        self.restarts_left = restarts if restarts >= 0 else 1 << 62
        self.name: Optional[str] = spec.get("actor_name")
        self.detached = bool(spec.get("detached"))
        self.cause = ""
        self.anchor = ids.object_id(spec["task_id"], 0)
        self.killed = False
        self.exiting = False
        self.held: List[bytes] = []   # constructor arguments, kept for restarts


class ActorTable:
    def __init__(self, tasks: Any, objects: Any, workers: Any, dispatcher: Any,
                 wire: Any) -> None:
        self.tasks = tasks
        self.objects = objects
        self.workers = workers
        self.dispatcher = dispatcher
        self.wire = wire
        self.actors: Dict[bytes, ActorRec] = {}
        self.anchors: Dict[bytes, ActorRec] = {}
        self.names: Dict[str, dict] = {}
        self.remote: set = set()               # placed on other nodes by the head
        self.to_pump: Dict[bytes, ActorRec] = {}  # actors with new ready calls
        # Set by the agent on a cluster: kill an actor on another node.
        self.kill_remote: Optional[Callable[[bytes, bool], None]] = None

    # ------------------------------------------------------------------ admission
    def admit(self, task: Task, forwarded: bool) -> Optional[str]:
        """Take an actor task in: a new actor, or a call queued on its actor.

        Returns why it cannot run, or None.  A call to an actor this node
        does not know is left with no actor (the task table forwards it) when
        the node is part of a cluster and the call came from here.
        """
        spec = task.spec
        if task.creates_actor:
            actor = ActorRec(spec, task.owner)
            self.actors[actor.aid] = actor
            self.anchors[actor.anchor] = actor
            if actor.detached:
                self.objects.incref(actor.anchor)  # detached: lives until killed
            for oid in task.held:
                self.objects.incref(oid)
                actor.held.append(oid)
            task.actor = actor
            return None
        actor = self.actors.get(spec["actor_id"])
        if actor is None and not forwarded and self.kill_remote is not None:
            return None  # on another node: make_ready forwards the call
        if actor is None:
            return "its actor is not on this node" if forwarded else \
                f"actor {spec['actor_id'].hex()} is not known to this node"
        if actor.state is ActorState.DEAD:
            return actor.cause
        actor.queue.append(task)
        task.actor = actor
        return None

    def moved_away(self, task: Task) -> None:
        """The creation task was forwarded: the actor will live on another node."""
        actor = task.actor
        self.actors.pop(actor.aid, None)
        self.anchors.pop(actor.anchor, None)
        self.remote.add(actor.aid)
        if actor.name:
            entry = self.names.get(actor.name)
            if entry is not None:
                entry["remote"] = True
        task.actor = None

    def started(self, task: Task, worker: WorkerRec) -> None:
        """Its creation task went to ``worker``, which is the actor's from now on."""
        worker.actor = task.actor
        task.actor.worker = worker

    # ------------------------------------------------------------------ calls
    def call_ready(self, task: Task) -> None:
        # Sent at the end of this loop pass, with the calls that follow it.
        self.to_pump[task.actor.aid] = task.actor

    def pump_ready(self) -> None:
        if self.to_pump:
            actors, self.to_pump = self.to_pump, {}
            for actor in actors.values():
                self.pump(actor)

    def pump(self, actor: ActorRec) -> None:
        """Send an actor its ready calls, in submission order."""
        if actor.state is not ActorState.ALIVE or actor.worker is None:
            return
        queue = actor.queue
        worker = actor.worker
        messages = []
        while queue:
            task = queue[0]
            if task.state is FINISHED:
                queue.popleft()
                continue
            if task.state is not QUEUED:
                break  # an earlier call still waits for its arguments
            queue.popleft()
            task.state = RUNNING
            task.worker = worker
            actor.inflight[task.tid] = task
            message = self.dispatcher.execute_message(worker, task)
            if message is not None:
                messages.append(message)
        if messages and not self.wire.send_batch(worker.wid, Op.EXECUTE, messages):
            self.workers.died(worker, "unreachable")

    def call_done(self, worker: WorkerRec, body: dict, raw) -> None:
        actor = worker.actor
        task = self.tasks.get(body.get("task_id", b""))
        if task is None:
            return
        if task.creates_actor:
            self.created(worker, actor, task, body, raw)
            return
        actor.inflight.pop(task.tid, None)
        self.tasks.seal_results(task, body, raw)
        self.tasks.finish(task)
        if actor.exiting:
            self.retire(actor)

    def created(self, worker: WorkerRec, actor: ActorRec, task: Task, body: dict, raw) -> None:
        worker.task = None
        worker.state = WorkerState.ACTOR
        task.worker = None
        self.tasks.seal_results(task, body, raw)
        self.tasks.finish(task)
        if body.get("error"):
            actor.cause = f"the actor's constructor raised: {body['error']}"
            actor.killed = True
            self.workers.retire(worker)
            self.dead(actor)
        else:
            actor.state = ActorState.ALIVE
            self.pump(actor)

    # ------------------------------------------------------------------ endings
    def on_kill(self, ident: bytes, body: dict, raw) -> None:
        self.kill(body["actor_id"], body.get("no_restart", True), from_head=False)

    def kill(self, aid: bytes, no_restart: bool, from_head: bool) -> None:
        actor = self.actors.get(aid)
        if actor is None and not from_head and self.kill_remote is not None:
            self.kill_remote(aid, no_restart)
            return
        if actor is None or actor.state is ActorState.DEAD:
            return
        if no_restart:
            actor.killed = True
            actor.cause = "the actor was killed by zray.kill()"
        if actor.worker is not None and actor.worker.pid:
            self.workers.kill(actor.worker)
        elif actor.killed:
            self.dead(actor)

    def object_freed(self, oid: bytes, obj: Any) -> None:
        """Listener: an anchor freed means the actor's last handle is gone."""
        actor = self.anchors.pop(oid, None)
        if actor is not None:
            self.retire(actor)

    def retire(self, actor: ActorRec) -> None:
        """No handle is left: let queued calls finish, then end the actor."""
        if actor.state is ActorState.DEAD or actor.detached:
            return
        actor.exiting = True
        if actor.queue or actor.inflight:
            return
        actor.killed = True
        actor.cause = "every handle to the actor is gone"
        if actor.worker is not None:
            self.wire.send(actor.worker.wid, Op.EXIT, {})
        else:
            self.dead(actor)

    def worker_died(self, worker: WorkerRec, status: str) -> None:
        actor = worker.actor
        self.workers.release_actor(worker, float(actor.spec.get("resources", {}).get("GPU", 0)))
        actor.worker = None
        inflight, actor.inflight = actor.inflight, {}
        why = actor.cause or f"the actor's worker (pid {worker.pid}) died ({status})"
        for task in inflight.values():
            self.tasks.finish_with_error(task, exceptions.ActorDiedError(
                f"{task.name} did not finish: {why}"))
        creating = worker.task
        worker.task = None
        if not actor.killed and actor.restarts_left > 0:
            actor.restarts_left -= 1
            actor.state = ActorState.RESTARTING
            restart = Task(actor.spec, actor.owner)
            restart.actor = actor
            self.tasks.adopt(restart)
            self.tasks.make_ready(restart)  # its arguments are held by the actor
            return
        if creating is not None and creating.state is not FINISHED:
            self.tasks.finish_with_error(creating, exceptions.ActorDiedError(why))
        actor.cause = why
        self.dead(actor)

    def dead(self, actor: ActorRec) -> None:
        actor.state = ActorState.DEAD
        self.anchors.pop(actor.anchor, None)
        if actor.name and self.names.get(actor.name, {}).get("actor_id") == actor.aid:
            del self.names[actor.name]
        queued, actor.queue = actor.queue, collections.deque()
        for task in queued:
            if task.state is not FINISHED:
                self.tasks.unwait(task)
                self.tasks.finish_with_error(task, exceptions.ActorDiedError(
                    f"cannot run {task.name}: {actor.cause}"))
        held, actor.held = actor.held, []
        for oid in held:
            self.objects.decref(oid)
        if actor.detached and self.objects.get(actor.anchor) is not None:
            actor.detached = False
            self.objects.decref(actor.anchor)

    # ------------------------------------------------------------------ names
    def on_reserve_name(self, ident: bytes, body: dict, raw) -> None:
        name = body["name"]
        if name in self.names:
            raise ValueError(f"an actor named {name!r} already exists; pick another "
                             f"name or use zray.get_actor({name!r})")
        self.names[name] = {"actor_id": body["actor_id"], "meta": body["meta"],
                            "anchor": body["anchor"]}
        self.wire.send(ident, Op.NAME_RESERVED, {"req": body.get("req", 0)})

    def lookup(self, name: str) -> dict:
        entry = self.names.get(name)
        if entry is None:
            raise ValueError(f"no live actor is named {name!r}")
        return entry

    def is_anchor(self, oid: bytes) -> bool:
        return oid in self.anchors

    def alive(self) -> int:
        return sum(1 for a in self.actors.values() if a.state is ActorState.ALIVE)
