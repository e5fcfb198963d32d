"""Workers lent to callers: tasks of one function sent straight to the worker.

::

    a task is done, nothing is queued here ──▶ its worker stays its caller's
        (LEASE): it keeps the task's resources and runs what the caller sends it
    SUBMIT with ``direct`` ──▶ admit: running on the leased worker (no EXECUTE)
    TASK_DONE ──▶ task_done: results sealed (inline ones were answered already)
    tasks wait here, the lease is idle for LEASE_IDLE, its caller or worker goes
        ──▶ taken back: LEASE without a worker ──▶ the caller's RELEASED says how
        many tasks it sent on it ──▶ once those are done, the worker is idle again

The caller's SUBMIT of each task reaches the agent before its RELEASED (one
socket, in order), so the agent knows when the last task of a lease is done.
Only plain tasks lease (``protocol.leasable``): no ref arguments, default
resources, no strategy or runtime environment, one result.

Owns: the leases, and TASK_DONEs of leased tasks that came before their
SUBMIT.  Must not: pick workers or queue tasks (the dispatcher does), or hold
task records (the task table does).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, Optional

from zray import exceptions
from zray._private import protocol
from zray._private.agent.direct import DirectPath
from zray._private.agent.tasks import RUNNING, Task
from zray._private.protocol import Op

#: A lease no task has used for this long is taken back.
LEASE_IDLE = 1.0


class Lease:
    __slots__ = ("worker", "owner", "fid", "running", "admitted", "sent", "last", "ending")

    def __init__(self, worker: Any, owner: bytes, fid: bytes) -> None:
        self.worker = worker
        self.owner = owner
        self.fid = fid
        self.running: Dict[bytes, Task] = {}
        self.admitted = 0                  # tasks SUBMITted on it
        self.sent: Optional[int] = None    # ... and how many its caller sent (RELEASED)
        self.last = time.monotonic()
        self.ending = False                # taken back: no new task will come


class Leases:
    def __init__(self, tasks: Any, objects: Any, workers: Any, wire: Any) -> None:
        self.tasks = tasks
        self.objects = objects
        self.workers = workers
        self.wire = wire
        self.early = DirectPath(wire, objects, getattr(workers, "agent_address", ""))
        self.early.call_done = self.task_done
        self.by_worker: Dict[bytes, Lease] = {}
        self.by_owner: Dict[bytes, Dict[bytes, Lease]] = {}
        self.on_running: Callable[[Task, Any], None] = lambda task, worker: None

    def leased(self, worker: Any) -> bool:
        return worker.wid in self.by_worker

    # ------------------------------------------------------------------ lending
    def offer(self, worker: Any, task: Task) -> bool:
        """Instead of going idle, ``worker`` (which just ran ``task``) is lent to
        the task's caller; False if it may not be."""
        spec = task.spec
        if not self.early.enabled or task.origin is not None or task.cancelled or \
                worker.env or worker.gpu_ids or not protocol.leasable(spec):
            return False
        owner, fid = task.owner, spec["function_id"]
        mine = self.by_owner.setdefault(owner, {})
        if fid in mine or not self.wire.send(owner, Op.LEASE, {"function_id": fid,
                                                               "worker_id": worker.wid}):
            return False
        lease = mine[fid] = self.by_worker[worker.wid] = Lease(worker, owner, fid)
        lease.last = time.monotonic()
        worker.task = None   # it keeps holding the task's resources, and stays BUSY
        return True

    def admit(self, task: Task) -> None:
        """A task SUBMITted as sent to a leased worker: it runs there already."""
        lease = self.by_worker.get(task.spec["direct"])
        if lease is not None and lease.owner == task.owner and lease.sent is None:
            task.state = RUNNING
            task.worker = lease.worker
            lease.running[task.tid] = task
            lease.admitted += 1
            lease.last = time.monotonic()
            self.on_running(task, lease.worker)
            self.early.take_early(task.tid)
            return
        # Sent to a worker that died since: it may have run there.
        del task.spec["direct"]
        if task.retries_left > 0:
            task.retries_left -= 1   # runs again through the agent
        else:
            self.tasks.finish_with_error(task, exceptions.WorkerCrashedError(
                f"the worker running task {task.name} died and no retries were left"))

    def task_done(self, worker: Any, body: dict, raw: Any) -> None:
        """A TASK_DONE from a leased worker (or one whose lease is ending)."""
        lease = self.by_worker.get(worker.wid)
        task = lease.running.pop(body.get("task_id", b""), None) if lease else None
        if task is None:
            if lease is not None and body.get("direct"):
                self.early.early_done(worker, body, raw)  # its SUBMIT is on its way
            return
        lease.last = time.monotonic()
        if body.get("retryable") and task.retries_left > 0 and not task.cancelled:
            task.retries_left -= 1
            del task.spec["direct"]
            task.worker = None
            self.tasks.requeue(task)
        elif task.cancelled:
            self.tasks.finish_with_error(task, exceptions.TaskCancelledError(
                f"task {task.name} was cancelled"))
        else:
            if not lease.ending:  # (once taken back, its caller may have closed the path)
                self.early.answered(self.objects, task, body)
            self.tasks.seal_results(task, body, raw)
            self.tasks.finish(task)
        self.maybe_end(lease)

    # ------------------------------------------------------------------ taking back
    def tick(self, now: float, starved: bool) -> None:
        """Finish early TASK_DONEs; take back idle leases, or all if tasks wait here."""
        early = self.early
        if early.due or early.early:
            early.run_due()
        for lease in list(self.by_worker.values()):
            if not lease.ending and (starved or now - lease.last > LEASE_IDLE):
                self.take_back(lease)

    def take_back(self, lease: Lease) -> None:
        lease.ending = True
        if not self.wire.send(lease.owner, Op.LEASE, {"function_id": lease.fid,
                                                      "worker_id": b""}):
            self.client_gone(lease.owner)

    def on_released(self, ident: bytes, body: dict, raw: Any = ()) -> None:
        """RELEASED: the caller sent ``sent`` tasks on the lease (an offer it
        declined: none)."""
        lease = self.by_worker.get(body["worker_id"])
        if lease is None or lease.owner != ident:
            return
        lease.ending = True
        lease.sent = body["sent"]
        self.maybe_end(lease)

    def client_gone(self, ident: bytes) -> None:
        """Its caller is gone: it sends no more; the lease ends with what runs."""
        for lease in list(self.by_owner.get(ident, {}).values()):
            lease.ending = True
            if lease.sent is None:
                lease.sent = lease.admitted
            self.maybe_end(lease)

    def maybe_end(self, lease: Lease) -> None:
        """Once every task sent on it is done, the worker is the node's again."""
        if lease.sent is None or lease.running or lease.admitted < lease.sent:
            return
        self.forget(lease)
        worker = lease.worker
        self.workers.release(worker)
        self.workers.make_idle(worker)

    def forget(self, lease: Lease) -> None:
        self.by_worker.pop(lease.worker.wid, None)
        mine = self.by_owner.get(lease.owner)
        if mine is not None and mine.get(lease.fid) is lease:
            del mine[lease.fid]
            if not mine:
                del self.by_owner[lease.owner]

    def worker_died(self, worker: Any, status: str) -> None:
        """Its tasks run again while retries last, else fail; the caller is told."""
        lease = self.by_worker.get(worker.wid)
        if lease is None:
            return
        self.forget(lease)
        self.workers.release(worker)
        if not lease.ending:
            self.wire.send(lease.owner, Op.LEASE, {"function_id": lease.fid, "worker_id": b""})
        for task in lease.running.values():
            del task.spec["direct"]
            self.tasks.worker_lost(task, worker.pid, status)
