"""Microbenchmark: memory per queued task, and the submit and shutdown figures
taken with it, written once and run against any Ray-like module.

Owns the queued-task measurement: the ``_Gate`` that keeps blocker tasks on
every CPU from outside the system under test, the blocker and probe it
submits, the RSS snapshots of the driver's process tree (``process_tree_rss``,
``rss_growth``), ``measure_queued`` itself and the records it becomes
(``queued_names``, ``queued_records``).  ``bench_workloads`` runs it after its
other workloads, in a cluster of its own.

Like ``bench_workloads``, it imports nothing of zray (psutil only once
measuring, and Ray brings its own), and nothing of ``bench_workloads`` either:
on the Ray side ``bench_workloads`` loads this file from its path, beside its
own, outside any package.  The remote functions and the actor class are
defined inside ``_define`` so cloudpickle ships them by value.
"""

from __future__ import annotations

import gc
import os
import select
import shutil
import tempfile
import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

if TYPE_CHECKING:  # never at run time: see the module docstring
    from zray._private.bench_workloads import Config


def queued_names(cfg: Config) -> List[str]:
    """The records of ``measure_queued``, which runs after ``shutdown`` in a session of its own."""
    n = f"{cfg.queued_tasks:,}"
    return [f"memory per queued task (n={n})", f"submit while queueing (n={n})",
            f"shutdown with {n} tasks queued"]


def _define(ray: Any) -> Dict[str, Any]:
    """The tasks and actor class of the measurement, made with ``ray.remote`` of the
    module under test.  Bodies are self-contained (imports inside) so they pickle by value."""

    @ray.remote
    def noop():
        return 1

    @ray.remote
    def blocker(ready_path, lock_path):
        # Holds its CPU until the driver lets go of the lock (see _Gate).
        import fcntl
        import os
        with open(lock_path, "rb") as lock:
            fd = os.open(ready_path, os.O_WRONLY)
            try:
                os.write(fd, b".")
            finally:
                os.close(fd)
            fcntl.flock(lock, fcntl.LOCK_SH)
        return 1

    @ray.remote(num_cpus=0)
    class Probe:
        def ping(self):
            return 1

    return {"noop": noop, "blocker": blocker, "Probe": Probe}


class _Gate:
    """Keeps blocker tasks on their CPUs until ``open``, outside the system under test.

    A blocker opens the lock file, writes one byte to the ``ready`` FIFO, then
    waits for a shared ``flock`` on the file, which this process holds
    exclusively.  It must not wait in ``get``: a worker blocked there lends its
    CPU back (zray and Ray both do that), and the queued tasks would run.
    """

    def __init__(self) -> None:
        import fcntl
        self._dir = tempfile.mkdtemp(prefix="zray_bench_gate_")
        self.ready_path = os.path.join(self._dir, "ready")
        self.lock_path = os.path.join(self._dir, "lock")
        os.mkfifo(self.ready_path, 0o600)
        # Opened for reading and writing: the blockers' open for writing does not
        # wait for a reader, and select waits for their bytes instead of seeing EOF.
        self._ready = os.open(self.ready_path, os.O_RDWR | os.O_NONBLOCK)
        self._lock = open(self.lock_path, "wb")
        fcntl.flock(self._lock, fcntl.LOCK_EX)

    def wait_ready(self, n: int, timeout: float) -> None:
        """Return once ``n`` blockers have started; TimeoutError after ``timeout`` s."""
        got = 0
        deadline = time.monotonic() + timeout
        while got < n:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._ready], [], [], left)[0]:
                raise TimeoutError(f"{got} of {n} blocker tasks started in {timeout:.0f} s")
            try:
                got += len(os.read(self._ready, n - got))
            except BlockingIOError:
                pass

    def open(self) -> None:
        """Let every blocker finish (closing the file drops the exclusive lock)."""
        self._lock.close()

    def close(self) -> None:
        self.open()
        if self._ready >= 0:
            os.close(self._ready)
            self._ready = -1
        shutil.rmtree(self._dir, ignore_errors=True)


def _role(proc: Any) -> str:
    """A short name for a process of the cluster: raylet, ray::IDLE, node, worker_main..."""
    name = proc.name()
    if not name.startswith("python"):
        return name
    args = proc.cmdline()
    if "-m" in args[:-1]:
        return args[args.index("-m") + 1].rsplit(".", 1)[-1]
    scripts = [a for a in args[1:] if a.endswith(".py")]
    return os.path.basename(scripts[0])[:-3] if scripts else name


def process_tree_rss() -> Dict[int, Tuple[str, int]]:
    """``{pid: (role, RSS bytes)}`` of this process and all its descendants."""
    import psutil  # a zray dependency; Ray puts its own copy on sys.path at import

    me = psutil.Process()
    tree: Dict[int, Tuple[str, int]] = {}
    for proc in [me] + me.children(recursive=True):
        try:
            tree[proc.pid] = ("driver" if proc.pid == me.pid else _role(proc),
                              proc.memory_info().rss)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass  # gone since the listing
    return tree


def rss_growth(before: Dict[int, Tuple[str, int]], after: Dict[int, Tuple[str, int]]
               ) -> Tuple[int, Dict[str, int]]:
    """(total growth, growth per role) between two ``process_tree_rss`` snapshots;
    a process that came (went) counts its whole RSS as growth (shrinkage)."""
    by_role: Dict[str, int] = {}
    for pid in set(before) | set(after):
        role = (after.get(pid) or before[pid])[0]
        delta = after.get(pid, ("", 0))[1] - before.get(pid, ("", 0))[1]
        by_role[role] = by_role.get(role, 0) + delta
    return sum(by_role.values()), by_role


def measure_queued(ray: Any, cfg: Config, init: Dict[str, Any]) -> Dict[str, Any]:
    """Memory per queued task, in a cluster of its own that it starts (``ray.init(**init)``)
    and shuts down.

    ``init["num_cpus"]`` blockers hold every CPU; ``cfg.queued_tasks`` no-op
    tasks are submitted behind them; the RSS of the whole process tree (driver,
    and head/agent/workers or gcs/raylet/workers) is compared before and after.
    The queue is then dropped with the cluster, which is the fastest way out on
    both systems (measured at 100,000 tasks: zray 0.9 s, Ray 3 s; cancelling
    each task first takes 10 s on zray, 6 s on Ray; running them, minutes).

    Returns ``bytes_per_task`` and ``by_role`` (bytes per task per process role),
    ``processes`` (how many before and after), ``submit_rate`` (tasks/s until
    the scheduler holds them all) and ``shutdown`` (seconds, tasks still
    queued).  Raises if a step fails, once the cluster is shut down.

    Ray's GCS goes on receiving task events for some seconds after its
    scheduler has the tasks (about 6% more memory at 100,000 tasks, bounded
    by Ray's cap on stored task events); nothing tells when that is over, so
    it is not waited for.
    """
    n, timeout, num_cpus = cfg.queued_tasks, cfg.hang_timeout, init["num_cpus"]
    out: Dict[str, Any] = {}
    gate: Optional[_Gate] = None
    refs: List[Any] = []
    ray.init(**init)
    try:
        fns = _define(ray)
        noop = fns["noop"]
        ray.get([noop.remote() for _ in range(2 * num_cpus)], timeout=timeout)  # workers up
        probe = fns["Probe"].remote()  # needs no CPU: it answers while the blockers run
        ray.get(probe.ping.remote(), timeout=timeout)
        gate = _Gate()
        blockers = [fns["blocker"].remote(gate.ready_path, gate.lock_path)
                    for _ in range(num_cpus)]
        gate.wait_ready(num_cpus, timeout)
        ray.get(probe.ping.remote(), timeout=timeout)
        gc.collect()
        before = process_tree_rss()
        start = time.perf_counter()
        refs = [noop.remote() for _ in range(n)]
        # The probe's call is answered only once the N tasks are queued.  zray: the
        # client sends its outbox in order and the agent handles one connection in
        # order (right after the loop above it holds about half of them).  Ray: the
        # queue is in the driver; each .remote() posts the queueing to the core
        # worker's I/O thread, which handles the probe's reply after those posts.
        ray.get(probe.ping.remote(), timeout=max(timeout, n / 1000))
        seconds = time.perf_counter() - start
        after = process_tree_rss()
        ready, _ = ray.wait(blockers + refs[:100], num_returns=1, timeout=0)
        if ready:
            raise RuntimeError("a blocker or a queued task finished while the CPUs were "
                               "meant to be held: the figure would be wrong")
        growth, by_role = rss_growth(before, after)
        out.update(bytes_per_task=growth / n, submit_rate=n / seconds,
                   by_role={role: round(b / n, 1) for role, b in sorted(by_role.items())},
                   processes=[len(before), len(after)])
    finally:
        start = time.perf_counter()
        try:
            ray.shutdown()
            out["shutdown"] = time.perf_counter() - start
        finally:
            if gate is not None:
                gate.close()
            del refs[:]  # after shutdown: nobody is told of these refs going
    return out


def queued_records(ray: Any, cfg: Config, init: Dict[str, Any]) -> List[Dict[str, Any]]:
    """``measure_queued`` as the three records named by ``queued_names``; if it fails,
    every one of them carries the error."""
    names = queued_names(cfg)
    n = cfg.queued_tasks
    try:
        got = measure_queued(ray, cfg, init)
        error = None
    except Exception as exc:
        got, error = {}, f"{type(exc).__name__}: {exc}"[:300]
    records = []
    for name, key, unit in zip(names, ("bytes_per_task", "submit_rate", "shutdown"),
                               ("B/task", "tasks/s", "s")):
        record: Dict[str, Any] = {"name": name, "value": got.get(key), "unit": unit,
                                  "count": n}
        if record["value"] is None:
            record["error"] = error or "not measured"
        if key == "bytes_per_task" and "by_role" in got:
            record["by_role"] = got["by_role"]
            record["processes"] = got["processes"]
        records.append(record)
    return records
