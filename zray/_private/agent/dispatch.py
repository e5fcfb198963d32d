"""The local scheduler: ready tasks onto this node's workers, and back.

::

    enqueue ──▶ queue per resource shape ──▶ start_queued: resources fit + idle worker
                      │                          ──▶ EXECUTE (run)
                      │  quick tasks, busy workers ──▶ EXECUTE ahead (fill_backlogs)
                      ▼
            TASK_DONE ──▶ task_done ──▶ results sealed, next task from the backlog
            BLOCKED   ──▶ its CPU is lent, tasks sent ahead are taken back
            worker died ──▶ its tasks retried or failed

Sending ahead: a busy worker running quick tasks is handed the next ones
of the same kind before it finishes, so it never waits for the agent
between two tasks.  "Quick" is judged from each function's measured run
time; the backlog is kept to about BACKLOG_SECONDS of work so that a slow
task never strands many others behind it.

Owns: the ready queues and infeasible tasks, run-time and result-size
statistics, EXECUTE messages (also for actors), store space set aside for
results.
Must not: hold task records (the task table does) or actor records.
"""

from __future__ import annotations

import collections
import logging
import os
import signal
import time
from typing import Any, Callable, Deque, Dict, List, Optional

from zray import exceptions
from zray._private import bundles, protocol
from zray._private.agent.leases import Leases
from zray._private.agent.tasks import FINISHED, QUEUED, RUNNING, Task
from zray._private.agent.workers import WorkerRec, WorkerState
from zray._private.protocol import ObjectKind, Op

logger = logging.getLogger("zray.node")

QUICK_TASK_SECONDS = 0.002
BACKLOG_SECONDS = 0.01
MAX_BACKLOG = 16


class Dispatcher:
    def __init__(self, tasks: Any, objects: Any, workers: Any, resources: Any,
                 wire: Any) -> None:
        self.tasks = tasks
        self.objects = objects
        self.workers = workers
        self.resources = resources
        self.wire = wire
        self.queues: Dict[tuple, Deque[Task]] = collections.OrderedDict()
        self.infeasible: List[Task] = []
        self.warned: set = set()
        self.run_times: Dict[bytes, list] = {}    # function -> [runs seen, mean seconds]
        self.result_sizes: Dict[bytes, int] = {}  # function -> size of its last shared result
        self.sent_ahead = 0                       # tasks sent to busy workers, ever
        self.taken_back = 0                       # ... and taken back when one blocked
        self.reserved_used = 0                    # results written into space set aside
        # Set by the agent on a cluster: hand a task to an idle node (see ClusterLink).
        self.offload: Optional[Callable[[Task, int], bool]] = None
        self.on_actor_started: Callable[[Task, WorkerRec], None] = lambda task, worker: None
        self.on_running: Callable[[Task, WorkerRec], None] = lambda task, worker: None
        self.group_missing: Callable[[Task], None] = lambda task: None  # placement groups'
        self.leases = Leases(tasks, objects, workers, wire)  # workers lent to callers

    # ------------------------------------------------------------------ queues
    def missing(self, task: Task) -> dict:
        return self.resources.missing(task.demand, task.shape)

    def enqueue(self, task: Task) -> None:
        missing = self.missing(task)
        if missing:
            self.infeasible.append(task)
            self.warn_infeasible(task, missing)
            return
        queue = self.queues.get(task.shape)
        if queue is None:
            queue = self.queues[task.shape] = collections.deque()
        queue.append(task)

    def dequeue(self, task: Task) -> None:
        """A cancelled task leaves the infeasible list; ready queues skip it lazily."""
        if task in self.infeasible:
            self.infeasible.remove(task)

    def retry_infeasible(self) -> None:
        """The node's totals grew (a placement group's bundle): queue what fits now."""
        waiting, self.infeasible = self.infeasible, []
        for task in waiting:
            self.enqueue(task)

    def queued(self) -> int:
        return sum(len(q) for q in self.queues.values()) + len(self.infeasible)

    def warn_infeasible(self, task: Task, missing: dict) -> None:
        key = (task.name, task.shape)
        if bundles.mentions_group(missing):
            self.group_missing(task)  # its placement group is not reserved here (yet)
            return
        if key in self.warned:
            return
        self.warned.add(key)
        need = ", ".join(f"{name}: {n:g} (node has {have:g})"
                         for name, (n, have) in sorted(missing.items()))
        self.wire.warn(task.job, f"task {task.name} cannot run on this cluster: it needs "
                                 f"{need}. It stays queued until a node with these resources "
                                 f"joins.")

    def stats(self) -> dict:
        return {"sent_ahead": self.sent_ahead, "taken_back": self.taken_back,
                "reserved_used": self.reserved_used,
                "queued": sum(len(q) for q in self.queues.values())}

    # ------------------------------------------------------------------ dispatch
    def dispatch(self) -> None:
        """Start queued tasks whose resources fit on idle workers, then send
        quick ones ahead to busy workers."""
        self.start_queued()
        starved = any(self.queues.values())
        if self.run_times and starved:
            self.fill_backlogs()
        leases = self.leases
        if leases.by_worker or leases.early.early:
            leases.tick(time.monotonic(), starved)  # tasks wait: lent workers come back

    def start_queued(self) -> None:
        resources = self.resources
        for queue in list(self.queues.values()):
            while queue:
                task = queue[0]
                if task.state is not QUEUED:
                    queue.popleft()  # cancelled while queued
                    continue
                if not resources.fits(task.demand):
                    if self.offload is not None and self.offload(task, len(queue)):
                        queue.popleft()
                        continue
                    break
                gpu_ids: List[int] = []
                if task.gpus:
                    assigned = resources.assign_gpus(task.gpus)
                    if assigned is None:
                        break
                    gpu_ids = assigned
                env = task.spec.get("runtime_env")  # its own workers (see agent/envs.py)
                worker = self.workers.idle_worker(env)
                if worker is None:
                    resources.release_gpus(gpu_ids, task.gpus if gpu_ids else 0)
                    self.workers.want(len(queue), env)
                    if env is None:
                        return
                    break
                queue.popleft()
                self.run(task, worker, gpu_ids)

    def run(self, task: Task, worker: WorkerRec, gpu_ids: List[int]) -> None:
        self.workers.assign(worker, task, gpu_ids)
        task.worker = worker
        task.state = RUNNING
        self.on_running(task, worker)
        if task.actor is not None:
            self.on_actor_started(task, worker)
        message = self.execute_message(worker, task)
        if message is None:
            return
        body, frames = message
        if not self.wire.send(worker.wid, Op.EXECUTE, body, *frames):
            if task.actor is None:
                task.retries_left += 1  # it never reached the worker: not a try
            self.workers.died(worker, "unreachable")

    def execute_message(self, worker: WorkerRec, task: Task) -> Optional[tuple]:
        """The EXECUTE ``(body, frames)`` for a task; None if it failed instead."""
        spec = task.spec
        frames: List[Any] = []
        args = []
        objects = self.objects
        for oid in task.deps:
            # Shared arguments are pinned for the worker as its PIN would pin
            # them: it reads them at once and sends the UNPIN when its views go.
            desc, data = objects.descriptor(oid, objects.get(oid), worker.wid)
            if data is not None:
                desc["frame"] = len(frames)
                frames.append(data)
            args.append(desc)
        body: Dict[str, Any] = {"task": spec, "args": args, "gpu_ids": worker.gpu_ids}
        fid = spec["function_id"]
        if task.actor is None:
            self.reserve_result(task, body)
        if fid and fid not in worker.functions:
            blob, path = self.tasks.function(fid)
            if blob is None:
                self.tasks.finish_with_error(task, exceptions.ZrayError(
                    f"task {task.name}: its function was never exported to this node"))
                self.workers.release(worker)
                return None
            body["function_frame"] = len(frames)
            body["sys_path"] = path
            frames.append(blob)
            worker.functions.add(fid)
        return body, frames

    # ------------------------------------------------------------------ send ahead
    def is_quick(self, task: Task) -> bool:
        seen = self.run_times.get(task.spec["function_id"])
        return seen is not None and seen[0] >= 3 and seen[1] < QUICK_TASK_SECONDS

    def can_send_ahead(self, task: Task) -> bool:
        spec = task.spec
        return (task.actor is None and not task.gpus and not spec.get("max_calls")
                and not task.cancelled and self.tasks.function(spec["function_id"])[0]
                is not None and self.is_quick(task))

    def fill_backlogs(self) -> None:
        """Send queued quick tasks to busy workers that run quick tasks of the same shape."""
        for worker in self.workers.all():
            task = worker.task
            if worker.state is not WorkerState.BUSY or worker.blocked or task is None \
                    or worker.actor is not None or not self.can_send_ahead(task):
                continue
            queue = self.queues.get(task.shape)
            if queue:
                self.send_ahead(worker, queue, self.run_times[task.spec["function_id"]][1])

    def send_ahead(self, worker: WorkerRec, queue: Deque[Task], mean: float) -> None:
        depth = min(MAX_BACKLOG, max(1, int(BACKLOG_SECONDS / max(mean, 1e-6))))
        backlog = worker.backlog
        messages = []
        while queue and len(backlog) < depth:
            nxt = queue[0]
            if nxt.state is not QUEUED:
                queue.popleft()  # cancelled while queued
                continue
            if not self.can_send_ahead(nxt):
                break
            queue.popleft()
            message = self.execute_message(worker, nxt)
            if message is None:
                continue
            message[0]["epoch"] = worker.epoch
            self.sent_ahead += 1
            nxt.state = RUNNING
            nxt.worker = worker
            backlog.append(nxt)
            messages.append(message)
        if messages and not self.wire.send_batch(worker.wid, Op.EXECUTE, messages):
            for lost in backlog:
                lost.retries_left += 1  # sent ahead into the void: not a try
            self.workers.died(worker, "unreachable")

    def take_back(self, worker: WorkerRec) -> None:
        """Return the tasks sent ahead to a worker to the front of their queues."""
        backlog = worker.backlog
        while backlog:
            task = backlog.pop()
            task.worker = None
            self.unreserve(task)  # the worker drops it unrun
            if task.state is not RUNNING:
                continue
            task.state = QUEUED
            self.taken_back += 1
            queue = self.queues.get(task.shape)
            if queue is None:
                queue = self.queues[task.shape] = collections.deque()
            queue.appendleft(task)

    # ------------------------------------------------------------------ result space
    def reserve_result(self, task: Task, body: dict) -> None:
        """Set store space aside for a task whose function's last result was
        large, so its worker writes it without an ALLOC round trip.  Only free
        space is used (nothing is spilled for a guess); TASK_DONE gives back
        what the result did not use."""
        size = self.result_sizes.get(task.spec["function_id"], 0)
        if size > protocol.INLINE_THRESHOLD and task.reserved < 0 and len(task.returns) == 1:
            offset = self.objects.reserve_space(size)
            if offset is not None:
                task.reserved = offset
                body["result_space"] = [offset, size]

    def unreserve(self, task: Task, results: Any = ()) -> None:
        """Free the space set aside for ``task`` unless a result took it."""
        offset, task.reserved = task.reserved, -1
        if offset < 0:
            return
        if any(r.get("offset") == offset for r in results if r.get("kind") == ObjectKind.SHARED):
            self.reserved_used += 1
        else:
            self.objects.free_space(offset)

    # ------------------------------------------------------------------ completion
    def task_done(self, worker: WorkerRec, body: dict, raw) -> None:
        task = worker.task
        if task is None:
            self.leases.task_done(worker, body, raw)  # a task its caller sent it directly
            return
        if body.get("task_id") != task.tid:
            logger.warning("worker %s reported task %s while running %s", worker.wid.hex()[:8],
                           bytes(body.get("task_id") or b"").hex()[:8], task.tid.hex()[:8])
            return
        fid = task.spec["function_id"]
        worker.calls[fid] += 1
        results = body.get("results", ())
        self.learn(fid, results, body.get("run_seconds"))
        if task.reserved >= 0:
            self.unreserve(task, results)
        retry = body.get("retryable") and task.retries_left > 0 and not task.cancelled
        if worker.backlog:
            worker.task = worker.backlog.popleft()  # already there: holds what this one held
            self.on_running(worker.task, worker)    # ... and starts now
        elif not (retry or task.cancelled or any(self.queues.values()) or
                  self.result_sizes.get(fid)) and self.leases.offer(worker, task):
            pass  # lent to the task's caller, for more of the same (small results)
        else:
            self.workers.release(worker)
            max_calls = task.spec.get("max_calls", 0)
            if max_calls and worker.calls[fid] >= max_calls:
                self.workers.retire(worker)
            else:
                self.workers.make_idle(worker)
        if task.cancelled or retry:
            for result in results:
                if result.get("kind") == ObjectKind.SHARED:
                    self.objects.free_space(result["offset"])
        if retry:
            task.retries_left -= 1  # it raised an exception it retries on: run it again
            self.tasks.requeue(task)
            return
        if task.cancelled:
            self.tasks.finish_with_error(task, exceptions.TaskCancelledError(
                f"task {task.name} was cancelled"))
            return
        self.tasks.seal_results(task, body, raw)
        self.tasks.finish(task)

    def learn(self, fid: bytes, results: Any, seconds: Any) -> None:
        """Remember how long the function ran and how large its result was."""
        if len(results) == 1 and isinstance(results[0], dict):
            self.result_sizes[fid] = results[0].get("size", 0) \
                if results[0].get("kind") == ObjectKind.SHARED else 0
        if type(seconds) is float:
            seen = self.run_times.get(fid)
            if seen is None:
                self.run_times[fid] = [1, seconds]
            else:
                seen[0] += 1
                seen[1] += (seconds - seen[1]) * 0.2

    def worker_died(self, worker: WorkerRec, status: str) -> None:
        """Its task, and tasks sent ahead to it (their TASK_DONE may lag), are
        retried or failed."""
        task = worker.task
        if task is None:
            self.leases.worker_died(worker, status)
            return
        self.workers.release(worker)
        lost = [task, *worker.backlog]
        worker.backlog.clear()
        for task in lost:
            task.worker = None
            self.unreserve(task)
            if task.state is not FINISHED:
                self.tasks.worker_lost(task, worker.pid, status)

    # ------------------------------------------------------------------ blocking
    def blocked(self, worker: WorkerRec) -> None:
        """The worker waits in get/wait: lend its CPU, take back what was sent ahead."""
        worker.epoch += 1
        if worker.backlog:
            self.take_back(worker)  # they may be what it waits for
        if (worker.task is None and not self.leases.leased(worker)) or worker.blocked:
            return
        worker.blocked = True
        cpu = worker.holding.get("CPU", 0)
        if cpu:
            self.resources.release({"CPU": cpu})

    def unblocked(self, worker: WorkerRec) -> None:
        if (worker.task is None and not self.leases.leased(worker)) or not worker.blocked:
            return
        worker.blocked = False
        cpu = worker.holding.get("CPU", 0)
        if cpu:
            self.resources.acquire({"CPU": cpu})  # may oversubscribe briefly

    def interrupt(self, task: Task, force: bool) -> None:
        """Cancel a task on its worker: KeyboardInterrupt in it, or kill the worker."""
        worker = task.worker
        if not force or task is not worker.task:
            # One sent ahead and not started is skipped by the worker; one sent to a
            # leased worker (which the agent does not see start) ends it if it runs.
            self.wire.send(worker.wid, Op.INTERRUPT, {"task_id": task.tid, **(
                {"force": True} if force else {})})
        elif worker.pid:
            try:
                os.kill(worker.pid, signal.SIGKILL)
            except OSError:
                pass
