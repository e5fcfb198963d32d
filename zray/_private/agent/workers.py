"""The node's worker pool: the template workers fork from, and each worker's record.

::

    agent ──stdin: "spawn <id>"──▶ template ──fork──▶ worker ──HELLO──▶ agent (hello)
          ◀─stdout: "spawned <id> <pid>" / "exited <pid> <status>"  (read_template)

A worker is STARTING until its HELLO, then IDLE or BUSY; an actor's worker
is ACTOR for the actor's life; RETIRING once told to EXIT.  A worker started
for a runtime environment (``env``: its key) runs only that environment's
work; its idle list and retirement are :class:`~zray._private.agent.envs.EnvWorkers`'.  The template
reports every exit at once, so a crash is seen without a heartbeat timeout;
the pool tells ``on_worker_died``.

Owns: worker records (state, task, backlog of tasks sent ahead, resources
held), the idle list, the template process.
Must not: decide what runs where (the dispatcher does) or finish tasks.
"""

from __future__ import annotations

import collections
import enum
import logging
import os
import select
import signal
import subprocess
import sys
import time
from typing import Any, Callable, Deque, Dict, List, Optional

from zray._private import ids
from zray._private.agent.envs import EnvWorkers, spawn_line
from zray._private.protocol import Op

logger = logging.getLogger("zray.node")


class WorkerState(enum.Enum):
    STARTING = "starting"
    IDLE = "idle"
    BUSY = "busy"
    ACTOR = "actor"          # an actor's, for the actor's life
    RETIRING = "retiring"    # told to exit
    DEAD = "dead"


class WorkerRec:
    __slots__ = ("wid", "pid", "state", "task", "holding", "gpu_ids", "functions", "calls",
                 "blocked", "actor", "backlog", "epoch", "env")

    def __init__(self, wid: bytes, env: str = "") -> None:
        self.wid = wid
        self.env = env                    # the runtime environment's key; "": the default
        self.pid = 0
        self.state = WorkerState.STARTING
        self.task: Any = None
        self.holding: Dict[str, int] = {}
        self.gpu_ids: List[int] = []
        self.functions: set = set()       # functions it has been sent
        self.calls: Dict[bytes, int] = collections.Counter()
        self.blocked = False
        self.actor: Any = None
        # Tasks sent ahead to this worker, to run after ``task`` (see the dispatcher).
        self.backlog: Deque[Any] = collections.deque()
        # BLOCKED messages seen from it: a task sent ahead carries this count, and the
        # worker drops one whose count is behind its own (the agent took it back).
        self.epoch = 0


class WorkerPool:
    def __init__(self, *, session_dir: str, node_id: bytes, agent_address: str,
                 resources: Any, wire: Any, adopt: Optional[tuple] = None) -> None:
        self.session_dir = session_dir
        self.node_id = node_id
        self.agent_address = agent_address
        self.resources = resources
        self.wire = wire
        self.adopt = adopt
        self.workers: Dict[bytes, WorkerRec] = {}
        self.by_pid: Dict[int, WorkerRec] = {}
        self.idle: List[WorkerRec] = []
        self.starting = 0
        self.envs = EnvWorkers()
        self.template: Any = None
        self.template_buf = b""
        # Listeners, set by the agent.
        self.on_worker_died: Callable[[WorkerRec, str], None] = lambda worker, status: None
        self.on_template_restarted: Callable[[int], None] = lambda fd: None

    # ------------------------------------------------------------------ template
    def start(self) -> int:
        """Start (or adopt) the template; returns the fd its reports arrive on."""
        self.template = self._start_template()
        return self.template.stdout.fileno()

    def _start_template(self) -> Any:
        if self.adopt is not None:
            adopted, self.adopt = AdoptedTemplate(*self.adopt), None
            return adopted
        log = open(os.path.join(self.session_dir, "logs",
                                f"workers_{self.node_id.hex()[:8]}.log"), "ab")
        env = dict(os.environ)
        env["ZRAY_SESSION_DIR"] = self.session_dir
        proc = subprocess.Popen(
            [sys.executable, "-m", "zray._private.worker_main", "--template",
             "--agent", self.agent_address, "--node", self.node_id.hex()],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env,
            close_fds=True)
        log.close()
        os.set_blocking(proc.stdout.fileno(), False)
        return proc

    def spawn(self, env: Optional[dict] = None) -> None:
        wid = ids.new_id()
        if env is None:
            self.workers[wid] = WorkerRec(wid)
            self.starting += 1
        else:
            self.workers[wid] = WorkerRec(wid, env["key"])
            self.envs.spawned(env["key"])
        line = spawn_line(wid, env).encode()
        try:
            self.template.stdin.write(line)
            self.template.stdin.flush()
        except (BrokenPipeError, OSError):
            logger.error("worker template is gone; restarting it")
            self.template = self._start_template()
            self.template_buf = b""
            self.on_template_restarted(self.template.stdout.fileno())
            self.template.stdin.write(line)
            self.template.stdin.flush()

    def read_template(self) -> bool:
        """Read the template's reports; False once it is gone (its pipe closed)."""
        try:
            chunk = os.read(self.template.stdout.fileno(), 65536)
        except BlockingIOError:
            return True
        if not chunk:  # the template is gone: the next spawn starts another
            return False
        self.template_buf += chunk
        *lines, self.template_buf = self.template_buf.split(b"\n")
        for line in lines:
            parts = line.decode(errors="replace").split()
            if len(parts) >= 3 and parts[0] == "spawned":
                worker = self.workers.get(bytes.fromhex(parts[1]))
                if worker is not None:
                    worker.pid = int(parts[2])
                    self.by_pid[worker.pid] = worker
            elif len(parts) >= 3 and parts[0] == "exited":
                worker = self.by_pid.pop(int(parts[1]), None)
                if worker is not None:
                    self.died(worker, parts[2])
        return True

    # ------------------------------------------------------------------ workers
    def get(self, wid: bytes) -> Optional[WorkerRec]:
        return self.workers.get(wid)

    def all(self) -> List[WorkerRec]:
        return list(self.workers.values())

    def hello(self, wid: bytes, pid: int) -> WorkerRec:
        """A worker we started has connected: it is idle now."""
        worker = self.workers.get(wid)
        if worker is None:
            raise ValueError("a worker this agent did not start said hello")
        worker.pid = pid
        self.by_pid[pid] = worker
        worker.state = WorkerState.IDLE
        if worker.env:
            self.envs.not_starting(worker.env)
            self.envs.make_idle(worker)
            return worker
        self.starting = max(0, self.starting - 1)
        self.idle.append(worker)
        return worker

    def want(self, wanted: int, env: Optional[dict] = None) -> None:
        """Start as many as could run now, but never a storm: forks are cheap,
        idle interpreters are not."""
        if env is not None:
            for _ in range(self.envs.to_start(env["key"], wanted, self.resources.cpus())):
                self.spawn(env)
            return
        for _ in range(min(wanted, self.resources.cpus(), 32) - self.starting):
            self.spawn()

    def idle_worker(self, env: Optional[dict] = None) -> Optional[WorkerRec]:
        if env is not None:
            return self.envs.take(env["key"], WorkerState.IDLE)
        while self.idle:
            worker = self.idle.pop()
            if worker.state is WorkerState.IDLE:
                return worker
        return None

    def assign(self, worker: WorkerRec, task: Any, gpu_ids: List[int]) -> None:
        """``worker`` runs ``task`` now, holding its resources."""
        self.resources.acquire(task.demand)
        worker.holding = task.demand
        worker.gpu_ids = gpu_ids
        worker.state = WorkerState.BUSY
        worker.task = task

    def release(self, worker: WorkerRec) -> None:
        """Give back what the worker's task held (its CPU is already lent if blocked)."""
        holding = worker.holding
        if worker.blocked:
            holding = {k: v for k, v in holding.items() if k != "CPU"}
        self.resources.release(holding)
        task = worker.task
        self.resources.release_gpus(worker.gpu_ids, task.gpus if task is not None else 0)
        worker.holding = {}
        worker.gpu_ids = []
        worker.blocked = False
        worker.task = None

    def release_actor(self, worker: WorkerRec, gpus: float) -> None:
        """An actor's worker is gone: what the actor held is free again."""
        self.resources.release(worker.holding)
        self.resources.release_gpus(worker.gpu_ids, gpus if worker.gpu_ids else 0)
        worker.holding = {}
        worker.gpu_ids = []

    def make_idle(self, worker: WorkerRec) -> None:
        worker.state = WorkerState.IDLE
        if worker.env:
            self.envs.make_idle(worker)
        else:
            self.idle.append(worker)

    def tick(self, now: float) -> None:
        """Retire runtime-environment workers idle for too long."""
        for worker in self.envs.expired(now, WorkerState.IDLE):
            self.retire(worker)

    def retire(self, worker: WorkerRec) -> None:
        worker.state = WorkerState.RETIRING
        self.wire.send(worker.wid, Op.EXIT, {})

    def kill(self, worker: WorkerRec) -> None:
        if worker.pid:
            try:
                os.kill(worker.pid, signal.SIGKILL)
            except OSError:
                pass

    def died(self, worker: WorkerRec, status: str) -> None:
        """The worker's process is gone (or cannot be reached): forget it."""
        self.workers.pop(worker.wid, None)
        self.by_pid.pop(worker.pid, None)
        if worker.state is WorkerState.STARTING:
            if worker.env:
                self.envs.not_starting(worker.env)
            else:
                self.starting = max(0, self.starting - 1)
        worker.state = WorkerState.DEAD
        self.on_worker_died(worker, status)

    def busy(self) -> int:
        return sum(1 for w in self.workers.values() if w.task is not None)

    # ------------------------------------------------------------------ stop
    def stop(self) -> None:
        """The template kills its workers and exits; stragglers are killed."""
        if self.template is None:
            return
        try:
            self.template.stdin.close()
        except OSError:
            pass
        try:
            self.template.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.template.kill()
            if isinstance(self.template, subprocess.Popen):
                self.template.wait()
        for pid in list(self.by_pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


class AdoptedTemplate:
    """A worker template started next to this agent by whoever started both, handed
    over as two pipe ends.  Not our child: its exit shows as EOF on its stdout."""

    def __init__(self, pid: int, fd_in: int, fd_out: int) -> None:
        self.pid = pid
        self.stdin = os.fdopen(fd_in, "wb")
        self.stdout = os.fdopen(fd_out, "rb", buffering=0)
        os.set_blocking(fd_out, False)

    def wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        fd = self.stdout.fileno()
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise subprocess.TimeoutExpired("worker template", timeout)
            if select.select([fd], [], [], left)[0]:
                try:
                    if not os.read(fd, 65536):
                        return
                except BlockingIOError:
                    pass

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except OSError:
            pass
