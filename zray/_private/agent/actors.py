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
from zray._private import ids, protocol
from zray._private.agent.direct import DirectPath
from zray._private.agent.tasks import FINISHED, QUEUED, RUNNING, Task
from zray._private.agent.workers import WorkerRec, WorkerState
from zray._private.names import anonymous_namespace
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
                 "restarts_left", "name", "namespace", "detached", "cause", "anchor", "killed",
                 "exiting", "held", "callers", "direct")

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
        self.namespace: str = spec.get("name_namespace") or spec.get("namespace") or \
            anonymous_namespace(spec.get("job_id", b""))  # its name's
        self.detached = bool(spec.get("detached"))
        self.cause = ""
        self.anchor = ids.object_id(spec["task_id"], 0)
        self.killed = False
        self.exiting = False
        self.held: List[bytes] = []   # constructor arguments, kept for restarts
        self.callers: Dict[bytes, int] = {}   # calls each caller made through the agent
        self.direct: Dict[bytes, int] = {}    # callers offered its worker (at what count)


class ActorTable:
    def __init__(self, tasks: Any, objects: Any, workers: Any, dispatcher: Any,
                 wire: Any, node_id: bytes = b"") -> None:
        self.tasks = tasks
        self.objects = objects
        self.workers = workers
        self.dispatcher = dispatcher
        self.wire = wire
        self.actors: Dict[bytes, ActorRec] = {}
        self.anchors: Dict[bytes, ActorRec] = {}
        self.remote: set = set()               # placed on other nodes by the head
        self.to_pump: Dict[bytes, ActorRec] = {}  # actors with new ready calls
        self.node_id = node_id
        # Set by the agent: ask the head (names are the cluster's, kept there) ...
        self.ask_head: Callable[[dict, Callable], None] = lambda body, on_reply: on_reply(None)
        # ... and, on a cluster, kill an actor on another node.
        self.kill_remote: Optional[Callable[[bytes, bool], None]] = None
        self.on_running: Callable[[Task, Any], None] = lambda task, worker: None
        self.direct = DirectPath(wire, objects, getattr(workers, "agent_address", ""))
        self.direct.call_done = self.call_done
        self.direct.yielded = tasks.on_yielded
        tasks.early_yield = self.direct.early_yield

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
        task.actor = actor
        if "direct" not in spec:
            self.direct.counted(actor, task)
        elif self.direct.admit(actor, task, actor.state is ActorState.ALIVE):
            self.on_running(task, actor.worker)
            return None  # its caller sent it to the worker already
        elif task.retries_left > 0:
            task.retries_left -= 1  # sent to a worker since gone: it may have run there
        else:
            return f"the actor's worker it was sent to is gone ({actor.cause or 'restarting'})"
        actor.queue.append(task)
        return None

    def moved_away(self, task: Task) -> List[Task]:
        """The creation task was forwarded: the actor will live on another node.
        Returns the calls made meanwhile that are ready to follow it there, in
        order (those still waiting for arguments follow it when they have them)."""
        actor = task.actor
        calls = [call for call in actor.queue if call.state is QUEUED]
        for call in actor.queue:
            call.actor = None
        actor.queue.clear()
        self.actors.pop(actor.aid, None)
        self.anchors.pop(actor.anchor, None)
        self.remote.add(actor.aid)
        held, actor.held = actor.held, []
        for oid in held:  # its node holds its arguments now
            self.objects.decref(oid)
        if actor.detached:
            self.objects.decref(actor.anchor)
        task.actor = None
        return calls

    def started(self, task: Task, worker: WorkerRec) -> None:
        """Its creation task went to ``worker``, which is the actor's from now on."""
        worker.actor = task.actor
        task.actor.worker = worker

    # ------------------------------------------------------------------ calls
    def call_ready(self, task: Task) -> None:
        # Sent at the end of this loop pass, with the calls that follow it.
        self.to_pump[task.actor.aid] = task.actor

    def pump_ready(self) -> None:
        self.direct.run_due()
        if self.to_pump:
            actors, self.to_pump = self.to_pump, {}
            for actor in actors.values():
                self.pump(actor)

    def pump(self, actor: ActorRec) -> None:
        """Send an actor its ready calls, each caller's in the order it made them.

        As in Ray, order holds per caller: a call waiting for its arguments
        holds back the later calls of its caller, not those of other callers
        (which may be what makes its arguments).
        """
        if actor.state is not ActorState.ALIVE or actor.worker is None:
            return
        queue = actor.queue
        worker = actor.worker
        messages = []
        waiting: Deque[Task] = collections.deque()
        held_back: set = set()      # callers with a call still waiting for its arguments
        while queue:
            task = queue.popleft()
            if task.state is FINISHED:
                continue
            if task.state is not QUEUED or task.owner in held_back:
                held_back.add(task.owner)
                waiting.append(task)
                continue
            task.state = RUNNING
            task.worker = worker
            actor.inflight[task.tid] = task
            self.on_running(task, worker)
            message = self.dispatcher.execute_message(worker, task)
            if message is not None:
                messages.append(message)
        actor.queue = waiting
        if messages and not self.wire.send_batch(worker.wid, Op.EXECUTE, messages):
            self.workers.died(worker, "unreachable")

    def call_done(self, worker: WorkerRec, body: dict, raw) -> None:
        actor = worker.actor
        task = self.tasks.get(body.get("task_id", b""))
        if task is None:
            if body.get("direct"):
                self.direct.early_done(worker, body, raw)  # its SUBMIT is on its way
            return
        if task.creates_actor:
            self.created(worker, actor, task, body, raw)
            return
        actor.inflight.pop(task.tid, None)
        if body.get("retryable") and task.retries_left > 0:
            task.retries_left -= 1  # it raised an exception it retries on: run it again
            task.state = QUEUED
            actor.queue.appendleft(task)
            self.pump(actor)
            return
        if body.get("direct"):
            self.direct.answered(self.objects, task, body)
        self.tasks.seal_results(task, body, raw)
        self.tasks.finish(task)
        if actor.exiting:
            self.retire(actor)
        elif actor.state is ActorState.ALIVE:
            self.direct.offer(actor, task)

    def created(self, worker: WorkerRec, actor: ActorRec, task: Task, body: dict, raw) -> None:
        if actor.state is ActorState.DEAD:
            # Killed while it was being made: never alive. Its worker's exit gives
            # back what the actor holds and fails the creation (worker_died).
            self.workers.kill(worker)
            return
        worker.task = None
        worker.state = WorkerState.ACTOR
        task.worker = None
        self.tasks.seal_results(task, body, raw)
        self.tasks.finish(task)
        if body.get("error"):
            error = body["error"]
            exited = error.startswith("ActorDiedError: ")  # exit_actor() in the constructor
            actor.cause = error[len("ActorDiedError: "):] if exited else \
                f"the actor's constructor raised: {error}"
            actor.killed = True
            self.workers.retire(worker)
            self.dead(actor)
        else:
            actor.state = ActorState.ALIVE
            self.pump(actor)

    # ------------------------------------------------------------------ endings
    def on_kill(self, ident: bytes, body: dict, raw) -> None:
        self.kill(body["actor_id"], body.get("no_restart", True), from_head=False,
                  reason=body.get("reason", ""))

    def kill(self, aid: bytes, no_restart: bool, from_head: bool, reason: str = "") -> None:
        actor = self.actors.get(aid)
        if actor is None and not from_head and self.kill_remote is not None:
            self.kill_remote(aid, no_restart)
            return
        if actor is None or actor.state is ActorState.DEAD:
            return
        if no_restart:
            actor.killed = True
            actor.cause = reason or "the actor was killed by zray.kill()"
        if actor.worker is not None and actor.worker.pid:
            self.workers.kill(actor.worker)
        elif actor.killed:
            self.dead(actor)

    def registry(self) -> list:
        """This node's live actors as a restarted head learns them (REGISTER)."""
        return [[a.aid, a.name or "", a.namespace, a.anchor, a.spec.get("name_meta") or {}]
                for a in self.actors.values() if a.state is not ActorState.DEAD]

    def end_job(self, job: bytes, why: str) -> None:
        """A job's driver is gone: its actors go too, unless detached."""
        for actor in list(self.actors.values()):
            if actor.spec.get("job_id") == job and not actor.detached:
                self.kill(actor.aid, True, from_head=True, reason=f"the actor was killed: {why}")

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
        self.direct.withdraw(actor)
        actor.worker = None
        inflight, actor.inflight = actor.inflight, {}
        why = actor.cause or f"the actor's worker (pid {worker.pid}) died ({status})"
        restarting = not actor.killed and actor.restarts_left > 0
        again = []
        for task in inflight.values():
            if restarting and task.retries_left > 0:
                task.retries_left -= 1  # max_task_retries: runs on the restarted actor
                task.state = QUEUED
                task.worker = None
                again.append(task)
            else:
                self.tasks.finish_with_error(task, exceptions.ActorDiedError(
                    f"{task.name} did not finish: {why}"))
        actor.queue.extendleft(reversed(again))
        creating = worker.task
        worker.task = None
        if restarting:
            actor.restarts_left -= 1
            actor.state = ActorState.RESTARTING
            actor.spec = dict(actor.spec, restart_count=actor.spec.get("restart_count", 0) + 1)
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
        self.direct.withdraw(actor)
        self.anchors.pop(actor.anchor, None)
        if actor.name:
            self.ask_head({"what": "release_name", "namespace": actor.namespace,
                           "name": actor.name, "actor_id": actor.aid}, lambda reply: None)
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
        """Claim a name at the head (names are the cluster's) and answer when it says."""
        req = body.get("req", 0)
        claim = {"what": "claim_name", "namespace": body.get("namespace", ""),
                 "name": body["name"], "actor_id": body["actor_id"], "anchor": body["anchor"],
                 "meta": body.get("meta", {}), "get_if_exists": bool(body.get("get_if_exists")),
                 "node_id": self.node_id}

        def answered(reply: Optional[dict]) -> None:
            if self.refused(ident, req, reply):
                return
            answer = {"req": req}
            if reply.get("existing"):
                answer["existing"] = reply["entry"]
            self.wire.send(ident, Op.NAME_RESERVED, answer)

        self.ask_head(claim, answered)

    def look_up(self, ident: bytes, body: dict) -> None:
        """QUERY "actor" (one name) or "named_actors" (a listing), asked of the head."""
        req = body.get("req", 0)
        what = body.get("what")
        question = {"what": what, "namespace": body.get("namespace", ""),
                    "name": body.get("name", ""),
                    "all_namespaces": bool(body.get("all_namespaces"))}

        def answered(reply: Optional[dict]) -> None:
            if self.refused(ident, req, reply):
                return
            answer = {"req": req}
            if what == "actor":
                answer.update(reply["entry"])
            else:
                answer["actors"] = reply.get("actors", [])
            self.wire.send(ident, Op.QUERY_REPLY, answer)

        self.ask_head(question, answered)

    def refused(self, ident: bytes, req: int, reply: Optional[dict]) -> bool:
        """Answer an ERROR if the head did not answer or said no; True if so."""
        if reply is None:
            exc: Exception = exceptions.ZrayError(
                "the zray head does not answer, and actor names are kept there")
        elif reply.get("error"):
            exc = ValueError(reply["error"])
        else:
            return False
        self.wire.send(ident, Op.ERROR, protocol.error_body(req, exc))
        return True

    def is_anchor(self, oid: bytes) -> bool:
        return oid in self.anchors

    def alive(self) -> int:
        return sum(1 for a in self.actors.values() if a.state is ActorState.ALIVE)
