"""The node's task table: each task from submission to its last result.

::

    SUBMIT ──▶ submit ──▶ holds its arguments, waits for those not ready
                              │ (on_waiter_ready from the object table)
                              ▼
                        make_ready ──▶ actor's queue (actors.call_ready)
                              │     ──▶ the head, when this node cannot run it (forward)
                              │     ──▶ the local queues (dispatcher.enqueue)
                              ▼
                        finish / finish_with_error ──▶ results sealed, arguments let go,
                                                       a forwarded task's RESULT sent back

Owns: task records and their lifecycle (waiting, queued, running, remote,
finished), cancellation, the failures each job has seen, the exported
functions.
Must not: pick workers or count resources (the dispatcher does), touch
actor records (the actor table does), or send to the head itself.
"""

from __future__ import annotations

import collections
import enum
import logging
import time
from typing import Any, Callable, Deque, Dict, List, Optional

from zray import exceptions
from zray._private import protocol
from zray._private.agent.objects import system_error
from zray._private.agent.resources import demand_of

logger = logging.getLogger("zray.node")


class TaskState(enum.Enum):
    WAITING = "waiting"      # for its arguments
    QUEUED = "queued"        # ready, waiting for resources and a worker (or its actor)
    RUNNING = "running"      # on a worker (or sent ahead to one)
    REMOTE = "remote"        # forwarded to the head; its RESULT comes back here
    FINISHED = "finished"


WAITING, QUEUED, RUNNING, REMOTE, FINISHED = (
    TaskState.WAITING, TaskState.QUEUED, TaskState.RUNNING, TaskState.REMOTE, TaskState.FINISHED)


class Task:
    __slots__ = ("spec", "tid", "name", "owner", "job", "demand", "gpus", "state", "worker",
                 "retries_left", "cancelled", "held", "deps", "deps_left", "returns", "shape",
                 "actor", "origin", "err", "reserved", "placed", "lineage")

    def __init__(self, spec: dict, owner: bytes) -> None:
        self.spec = spec
        self.tid: bytes = spec["task_id"]
        self.name: str = spec.get("name", "task")
        self.owner = owner
        self.job: bytes = spec.get("job_id", b"")
        self.demand, self.gpus, self.shape = demand_of(spec.get("resources"))
        if "runtime_env" in spec:  # queued and sent ahead apart from other environments
            self.shape = (self.shape, spec["runtime_env"]["key"])
        self.state = WAITING
        self.worker: Any = None
        retries = int(spec.get("max_retries", protocol.DEFAULT_MAX_RETRIES))
        self.retries_left = retries if retries >= 0 else 1 << 62
        self.cancelled = False
        self.held: List[bytes] = []
        self.deps: List[bytes] = spec.get("deps", ())
        self.deps_left = 0
        self.returns = protocol.returns_of(spec)
        self.actor: Any = None               # its ActorRec, when the actor is on this node
        self.origin: Optional[bytes] = None  # the node that forwarded it here
        self.err = ""
        self.reserved = -1    # store space set aside for its result (see the dispatcher)
        self.placed = False   # the head chose its node: its scheduling strategy is done
        self.lineage: List[bytes] = []   # arguments held after it finished (see remember)

    @property
    def is_actor_task(self) -> bool:
        return "actor_id" in self.spec

    @property
    def creates_actor(self) -> bool:
        return bool(self.spec.get("new_actor"))


class TaskTable:
    def __init__(self, objects: Any, wire: Any, node_id: bytes) -> None:
        self.objects = objects
        self.wire = wire
        self.node_id = node_id
        self.tasks: Dict[bytes, Task] = {}
        self.functions: Dict[bytes, tuple] = {}   # function id -> (pickled, sys.path)
        self.errors: Dict[bytes, Deque[dict]] = collections.defaultdict(
            lambda: collections.deque(maxlen=1000))
        # Lineage: a finished task kept (with its arguments held) while a result it
        # left on another node lives, so that result can be made again if lost.
        self.lineage: Dict[bytes, Task] = {}
        # Named methods of the other parts, set by the agent (see Agent.connect_parts).
        self.enqueue: Callable[[Task], None] = lambda task: None
        self.admit_actor_task: Callable[[Task, bool], Optional[str]] = lambda task, here: None
        self.call_ready: Callable[[Task], None] = lambda task: None
        self.missing: Callable[[Task], dict] = lambda task: {}
        self.forward: Optional[Callable[[Task], None]] = None  # None on a single node
        self.on_forwarded_finished: Callable[[Task], None] = lambda task: None
        self.on_forwarded_yielded: Callable[[Task, List[bytes]], None] = lambda task, oids: None
        self.on_submitted: Callable[[Task], None] = lambda task: None   # the recorder's
        self.on_finished: Callable[[Task], None] = lambda task: None
        self.interrupt: Callable[[Task, bool], None] = lambda task, force: None
        self.dequeue: Callable[[Task], None] = lambda task: None
        self.early_yield: Callable[[bytes, dict, Any], None] = lambda ident, body, raw: None
        self.admit_leased: Callable[[Task], None] = lambda task: None

    def get(self, tid: bytes) -> Optional[Task]:
        return self.tasks.get(tid)

    def on_export(self, ident: bytes, body: dict, raw) -> None:
        if not raw:
            raise ValueError("EXPORT came without the pickled function")
        self.add_function(body["function_id"], raw[0], body.get("sys_path") or [])

    def add_function(self, fid: bytes, blob: Any, sys_path: List[str]) -> None:
        self.functions.setdefault(fid, (blob, sys_path))

    def function(self, fid: bytes) -> tuple:
        """``(pickled function, sys.path)``, or ``(None, None)`` if never exported here."""
        return self.functions.get(fid, (None, None))

    # ------------------------------------------------------------------ submit
    def on_submit(self, ident: bytes, body: dict, raw) -> None:
        for spec in body["tasks"]:
            self.submit(ident, spec)

    def submit(self, owner: bytes, spec: dict) -> None:
        task = Task(spec, owner)
        if task.tid in self.tasks:
            return
        self.tasks[task.tid] = task
        for oid in task.returns:
            self.objects.expect_result(oid, owner)
        self.on_submitted(task)
        lost = self.hold_args(task)
        if "direct" in task.spec and not task.is_actor_task:
            self.admit_leased(task)  # sent straight to a worker lent to its caller
        why = self.admit_actor_task(task, False) if task.is_actor_task else None
        if why is not None:
            self.finish_with_error(task, exceptions.ActorDiedError(
                f"cannot call {task.name}: {why}"))
        elif lost is not None:
            self.finish_with_error(task, exceptions.ObjectLostError(
                f"task {task.name}: argument {lost.hex()} is not known to this node "
                f"(freed, or a ref from another cluster)"))
        elif task.state is WAITING:  # (a direct actor call is running already)
            self.wait_for_args(task)

    def remote_tasks(self) -> List[Task]:
        """Tasks of this node running (or placed) elsewhere, oldest first."""
        return [t for t in self.tasks.values() if t.state is REMOTE]

    def adopt(self, task: Task) -> None:
        """A task made here rather than submitted (a forwarded one, an actor restart)."""
        self.tasks[task.tid] = task

    def hold_args(self, task: Task) -> Optional[bytes]:
        """Take a ref on each argument; the ID of one this node does not know, if any."""
        lost = None
        for oid in (*task.deps, *task.spec.get("contained", ())):
            if self.objects.incref(oid):
                task.held.append(oid)
            else:
                lost = oid
        return lost

    def wait_for_args(self, task: Task) -> None:
        for oid in task.deps:
            if self.objects.wait_for(oid, task):
                task.deps_left += 1
        if task.deps_left == 0 and task.state is WAITING:
            self.make_ready(task)

    def dependency_ready(self, task: Task) -> None:
        task.deps_left -= 1
        if task.deps_left == 0 and task.state is WAITING:
            self.make_ready(task)

    def make_ready(self, task: Task) -> None:
        """Its arguments are ready: route it to where it will run."""
        for oid in task.deps:
            data = self.objects.error_data(oid)
            if data is not None:
                self.finish_with_error_data(task, data)  # same root cause
                return
        if task.is_actor_task and task.actor is None:
            self.send_away(task)  # a call to an actor on another node
            return
        strategy = task.spec.get("scheduling_strategy")
        if strategy and not task.placed and self.placed_by_strategy(task, strategy):
            return
        missing = self.missing(task)
        if missing and self.forward is not None:
            self.send_away(task)  # this node can never run it: the head places it
            return
        if self.forward is not None and self.fetch_args(task):
            return  # back here when its arguments have arrived
        task.state = QUEUED
        if task.actor is not None and not task.creates_actor:
            self.call_ready(task)
        else:
            self.enqueue(task)

    def placed_by_strategy(self, task: Task, strategy: list) -> bool:
        """True if the task's scheduling strategy sends it elsewhere (or fails it)."""
        if strategy[0] == "NODE" and strategy[1] != self.node_id:
            if self.forward is not None:
                self.send_away(task)  # the head puts it on that node
                return True
            if strategy[2]:
                return False  # soft: this node will do
            kind = "Actor" if task.creates_actor else "Task"
            self.finish_with_error(task, exceptions.from_error(
                f"{kind}UnschedulableError", f"{task.name} cannot be scheduled: node "
                f"{bytes(strategy[1]).hex()[:8]} is not part of this cluster, and its node "
                f"affinity is not soft"))
            return True
        if strategy[0] == "SPREAD" and self.forward is not None:
            self.send_away(task)  # the head spreads them over the nodes
            return True
        return False

    def send_away(self, task: Task) -> None:
        """Forward a task, once the refs nested in its arguments exist: it carries
        where they are (the node that runs it could not learn that later)."""
        for oid in task.spec.get("contained", ()):
            if self.objects.wait_for(oid, task):
                task.deps_left += 1
        if task.deps_left == 0:
            self.forward(task)  # else make_ready runs again when they are ready

    def fetch_args(self, task: Task) -> bool:
        """Pull arguments that are on other nodes; True if the task must wait for them."""
        for oid in task.deps:
            if self.objects.localize(oid, task):
                task.deps_left += 1
        return task.deps_left > 0

    def requeue(self, task: Task) -> None:
        """Run it again (its worker died and it has retries left)."""
        task.state = WAITING
        self.make_ready(task)

    # ------------------------------------------------------------------ finish
    def finish(self, task: Task) -> None:
        task.state = FINISHED
        self.tasks.pop(task.tid, None)
        self.on_finished(task)
        if task.origin is not None:
            self.on_forwarded_finished(task)
        held, task.held = task.held, []
        for oid in held:
            self.objects.decref(oid)

    def worker_lost(self, task: Task, pid: int, status: str) -> None:
        """The worker running (or sent) ``task`` died: it runs again while retries
        last, else fails; a cancelled one ends cancelled."""
        task.worker = None
        if task.cancelled:
            self.finish_with_error(task, exceptions.TaskCancelledError(
                f"task {task.name} was cancelled (its worker was stopped)"))
        elif task.retries_left > 0:
            task.retries_left -= 1
            self.requeue(task)
        else:
            self.finish_with_error(task, exceptions.WorkerCrashedError(
                f"the worker running task {task.name} (pid {pid}) died ({status}) "
                f"and no retries were left"))

    def finish_with_error(self, task: Task, exc: BaseException) -> None:
        self.finish_with_error_data(task, system_error(exc), str(exc))

    def finish_with_error_data(self, task: Task, data: Any, text: str = "") -> None:
        for oid in task.returns:
            self.objects.seal_error(oid, data)
        self.record_error(task, text or "failed because an argument's task failed")
        self.finish(task)

    def seal_results(self, task: Task, body: dict, raw) -> None:
        """A TASK_DONE's (or RESULT's) result descriptors become objects."""
        seal = self.objects.seal_result
        for result in body.get("results", ()):
            if result["kind"] == protocol.ObjectKind.ERROR:
                # Before sealing: tasks that fail because of it are recorded after it.
                task.err = body.get("error", "")
                self.record_error(task, task.err)
            seal(result, raw)

    # ------------------------------------------------------------------ lineage
    def remember(self, task: Task, remote: List[bytes]) -> None:
        """``task`` finished and its results ``remote`` stay on another node: keep
        what it takes to run it again (its spec and its arguments) while they live.
        Only tasks that may be retried are kept, as in Ray."""
        if not remote or task.retries_left <= 0 or task.is_actor_task or task.cancelled:
            return
        task.lineage = task.held     # finish() lets go of task.held; these stay held
        task.held = []
        for oid in remote:
            self.lineage[oid] = task

    def result_freed(self, oid: bytes, obj: Any) -> None:
        """Listener: once no result of a remembered task lives, its arguments go."""
        task = self.lineage.pop(oid, None)
        if task is None or any(self.lineage.get(r) is task for r in task.returns):
            return
        held, task.lineage = task.lineage, []
        for arg in held:
            self.objects.decref(arg)

    def rebuild(self, oid: bytes, obj: Any) -> bool:
        """A result whose only copy was lost: run its task again, if it may be.
        Its lost arguments are made again the same way (they wait like any)."""
        task = self.lineage.get(oid)
        if task is None:
            return False
        if task.state is not FINISHED:          # already running again
            self.objects.unseal(oid, obj)
            return True
        if task.retries_left <= 0:
            return False
        task.retries_left -= 1
        for result in task.returns:
            lost = self.objects.get(result)
            if lost is not None and (result == oid or self.lineage.get(result) is task):
                self.objects.unseal(result, lost)
        logger.warning("object %s was lost with its node: running %s again to make it",
                       oid.hex()[:8], task.name)
        task.state, task.placed, task.deps_left, task.err = WAITING, False, 0, ""
        task.held, task.lineage = task.lineage, []
        self.tasks[task.tid] = task
        self.wait_for_args(task)
        return True

    def on_yielded(self, ident: bytes, body: dict, raw) -> None:
        """A generator task's next items: objects its owner holds from now on
        (or, for a task forwarded here, kept for its origin node, which hears
        of them at once)."""
        task = self.tasks.get(body["task_id"])
        if task is None and body.get("direct"):
            self.early_yield(ident, body, raw)  # a direct call's: its SUBMIT is on its way
            return
        oids = []
        for result in body.get("results", ()):
            oid = result["object_id"]
            if task is not None and task.state is not FINISHED:
                if task.origin is not None:
                    self.objects.hold_for_node(oid, task.origin)
                else:
                    self.objects.expect_result(oid, task.owner)
                oids.append(oid)
                if result["kind"] == protocol.ObjectKind.ERROR:
                    self.record_error(task, body.get("error", ""))
            self.objects.seal_result(result, raw)  # nobody holds it: freed at once
        if oids and task.origin is not None:
            self.on_forwarded_yielded(task, oids)

    def record_error(self, task: Task, text: str) -> None:
        task.err = text
        self.errors[task.job].append({"task_name": task.name, "task_id": task.tid.hex(),
                                      "error": text, "time": time.time(),
                                      "node_id": self.node_id.hex()})

    def errors_of(self, job: bytes) -> List[dict]:
        return list(self.errors.get(job, ()))

    # ------------------------------------------------------------------ cancel
    def on_cancel(self, ident: bytes, body: dict, raw) -> None:
        task = self.tasks.get(body["task_id"])
        if task is None or task.state is FINISHED:
            return
        if task.state is REMOTE:  # its late RESULT finds nothing to finish
            self.finish_with_error(task, exceptions.TaskCancelledError(
                f"task {task.name} was cancelled (it had been sent to another node)"))
            return
        if task.state is WAITING or task.state is QUEUED:
            self.unwait(task)
            self.dequeue(task)
            task.state = FINISHED  # queues skip it lazily
            self.finish_with_error(task, exceptions.TaskCancelledError(
                f"task {task.name} was cancelled before it ran"))
            return
        task.cancelled = True
        if task.worker is not None:
            self.interrupt(task, bool(body.get("force")))

    def end_job(self, job: bytes, why: str) -> int:
        """A job's driver is gone: drop its waiting and queued tasks, cancel its
        running ones (an actor's calls run out: the actor decides its own fate).
        Returns how many tasks it ended."""
        return self.end_matching(lambda t: t.job == job, lambda task: exceptions.
                                 TaskCancelledError(f"task {task.name} was cancelled: {why}"))

    def end_matching(self, match: Callable[[Task], bool], why: Any) -> int:
        """End the tasks ``match`` picks (a removed placement group's, a job's): those
        not started fail (``why``: the reason, or the error for a task), running ones
        are cancelled (an actor's calls run out).  Returns how many."""
        ended = 0
        for task in [t for t in self.tasks.values() if match(t)]:
            if task.state is WAITING or task.state is QUEUED or task.state is REMOTE:
                self.unwait(task)
                self.dequeue(task)
                task.state = FINISHED  # queues skip it lazily
                self.finish_with_error(task, why(task) if callable(why) else exceptions.
                                       TaskUnschedulableError(f"task {task.name} cannot "
                                                              f"run: {why}"))
                ended += 1
            elif task.state is RUNNING and not task.cancelled and task.actor is None:
                task.cancelled = True
                if task.worker is not None:
                    self.interrupt(task, True)
                ended += 1
        return ended

    def unwait(self, task: Task) -> None:
        for oid in task.deps:
            self.objects.unwait(oid, task)
