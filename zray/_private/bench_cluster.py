"""Microbenchmark figures that need a cluster of their own: a put into a fresh
store, a large object read from another node, and many nodes on one machine.

* ``put <size> array, first touch``: a new session, one put right after
  ``init`` (the store's pages have never been written).
* ``get <size> array from another node``: a two-node cluster on this machine
  (``zray head`` + ``zray worker``, or ``ray start --head`` + ``ray start
  --address``), a task on the second node (resource ``far``) makes the array,
  a task on the first (resource ``near``) reads it and times its ``get``: the
  bytes cross loopback TCP between the two object stores.  (The reader is a
  task, not the driver: a Ray driver on a machine with two raylets may attach
  to either, and would then read the array where it was made.)
* ``run_nodes``: ``zray microbenchmark --nodes N``, zray only: N node agents
  on this machine as one cluster, SPREAD tasks over them; throughput, the
  tasks each node ran, and the head's share of a CPU.

Like ``bench_queued``, it imports nothing of zray (Ray's side loads this file
by its path) and starts clusters through each system's command line.
"""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Tuple

if TYPE_CHECKING:  # never at run time: see the module docstring
    from zray._private.bench_workloads import Config

MiB = 1024 * 1024
GiB = 1024 * MiB
STORE_BYTES = 1 * GiB


def cluster_names(cfg: Config) -> List[str]:
    size = f"{cfg.big_bytes // MiB} MiB" if cfg.big_bytes >= MiB else f"{cfg.big_bytes} B"
    return [f"put {size} array, first touch", f"get {size} array from another node"]


def cluster_records(ray: Any, cfg: Config, init_kwargs: Dict[str, Any]) -> List[Dict[str, Any]]:
    first, cross = cluster_names(cfg)
    return [_record(first, lambda: _first_touch_put(ray, cfg, init_kwargs), "GiB/s"),
            _record(cross, lambda: _cross_node_get(ray, cfg), "GiB/s")]


def _record(name: str, fn: Callable[[], Tuple[float, int]], unit: str) -> Dict[str, Any]:
    try:
        value, count = fn()
        return {"name": name, "value": value, "unit": unit, "count": count}
    except Exception as exc:  # a failed figure is reported, never the end of the run
        return {"name": name, "value": None, "unit": unit, "count": 0,
                "error": f"{type(exc).__name__}: {exc}"[:300]}


def _array(nbytes: int) -> Any:
    import numpy as np
    return np.ones(nbytes, dtype=np.uint8)


def _first_touch_put(ray: Any, cfg: Config, init_kwargs: Dict[str, Any]) -> Tuple[float, int]:
    array = _array(cfg.big_bytes)
    ray.init(**init_kwargs)
    try:
        start = time.perf_counter()
        ref = ray.put(array)
        seconds = time.perf_counter() - start
        del ref
    finally:
        ray.shutdown()
    return cfg.big_bytes / GiB / seconds, 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _TwoNodes:
    """A head node and a second node (resource ``far``) on this machine, this
    process connected as the driver; stopped on exit."""

    def __init__(self, ray: Any, workers: int = 1) -> None:
        self.ray = ray
        self.zray = ray.__name__ != "ray"
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.tmpdir = tempfile.mkdtemp(prefix="zb", dir="/tmp")
        self.env = dict(os.environ, ZRAY_TMPDIR=self.tmpdir)
        if not self.zray:   # Ray's token authentication (on by default with `ray start`)
            self.env.setdefault("RAY_AUTH_MODE", "disabled")   # off: its nodes join here
        self.workers = workers
        self.old_tmpdir = os.environ.get("ZRAY_TMPDIR")
        self.old_auth = os.environ.get("RAY_AUTH_MODE")

    def command(self, *args: str) -> subprocess.CompletedProcess:
        if self.zray:
            cmd = [sys.executable, "-m", "zray.cli", *args]
        else:
            cmd = [os.path.join(os.path.dirname(sys.executable), "ray"), *args]
        return subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=180,
                              check=True)

    def __enter__(self) -> _TwoNodes:
        store = str(STORE_BYTES)
        try:
            if self.zray:
                out = self.command("head", "--port", str(self.port), "--num-cpus", "1",
                                   "--resources", '{"near": 1}',
                                   "--object-store-memory", store).stdout
                token = out.split("token: ")[1].split()[0]
                for _ in range(self.workers):
                    self.command("worker", "--address", self.address, "--token", token,
                                 "--num-cpus", "1", "--resources", '{"far": 1}',
                                 "--object-store-memory", store)
                os.environ["ZRAY_TMPDIR"] = self.tmpdir
            else:
                os.environ["RAY_AUTH_MODE"] = self.env["RAY_AUTH_MODE"]
                self.command("start", "--head", "--port", str(self.port), "--num-cpus", "1",
                             "--resources", '{"near": 1}', "--object-store-memory", store,
                             "--include-dashboard=false", "--disable-usage-stats")
                for _ in range(self.workers):
                    self.command("start", "--address", self.address, "--num-cpus", "1",
                                 "--resources", '{"far": 1}', "--object-store-memory", store,
                                 "--disable-usage-stats")
            self.ray.init(address=self.address)
            deadline = time.monotonic() + 60
            while self.ray.cluster_resources().get("far", 0) < self.workers:
                if time.monotonic() > deadline:
                    raise RuntimeError("the second node never joined")
                time.sleep(0.1)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self.ray.shutdown()
        finally:
            stop = ("stop",) if self.zray else ("stop", "--force")
            try:
                self.command(*stop)
            except (subprocess.SubprocessError, OSError):
                pass
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            if not self.zray and self.env["RAY_AUTH_MODE"] != self.old_auth:
                os.environ.pop("RAY_AUTH_MODE", None)
            if self.old_tmpdir is None:
                os.environ.pop("ZRAY_TMPDIR", None)
            else:
                os.environ["ZRAY_TMPDIR"] = self.old_tmpdir


def _cross_node_get(ray: Any, cfg: Config, reps: int = 3) -> Tuple[float, int]:
    with _TwoNodes(ray):
        @ray.remote(resources={"far": 1})
        def make(nbytes):
            import numpy as np
            return np.ones(nbytes, dtype=np.uint8)

        @ray.remote(resources={"near": 1})
        def read(refs, nbytes):
            import time
            start = time.perf_counter()
            value = ray.get(refs[0])
            seconds = time.perf_counter() - start
            assert value.nbytes == nbytes
            return seconds

        rates = []
        for _ in range(reps + 1):
            ref = make.remote(cfg.big_bytes)
            # fetch_local=False: Ray's wait would otherwise pull it to the driver's node
            ray.wait([ref], timeout=cfg.hang_timeout, fetch_local=False)
            seconds = ray.get(read.remote([ref], cfg.big_bytes), timeout=cfg.hang_timeout)
            del ref
            rates.append(cfg.big_bytes / GiB / seconds)
        return statistics.median(rates[1:]), reps    # the first warms both nodes up


# --------------------------------------------------------------------------- many nodes


def run_nodes(ray: Any, nodes: int, tasks: int = 5000) -> Dict[str, Any]:
    """``nodes`` node agents on this machine (one CPU each), SPREAD tasks over them."""
    with _TwoNodes(ray, workers=nodes - 1) as cluster:
        @ray.remote(num_cpus=1, scheduling_strategy="SPREAD")
        def where():
            return ray.get_runtime_context().get_node_id()

        ray.get([where.remote() for _ in range(4 * nodes)], timeout=120)   # workers up
        head = _head_process(cluster)
        cpu_before = sum(head.cpu_times()[:2])
        start = time.perf_counter()
        ran = ray.get([where.remote() for _ in range(tasks)], timeout=600)
        seconds = time.perf_counter() - start
        head_cpu = sum(head.cpu_times()[:2]) - cpu_before
    per_node: Dict[str, int] = {}
    for node in ran:
        per_node[node] = per_node.get(node, 0) + 1
    return {"nodes": nodes, "tasks": tasks, "seconds": seconds, "tasks_per_s": tasks / seconds,
            "head_cpu_share": head_cpu / seconds, "per_node": sorted(per_node.values())}


def _head_process(cluster: _TwoNodes) -> Any:
    import psutil

    for proc in psutil.process_iter(["cmdline"]):
        line = " ".join(proc.info.get("cmdline") or [])
        if "zray._private.head" in line and line.split("--bind ")[-1].split()[0].endswith(
                f":{cluster.port}"):
            return proc
    raise RuntimeError("the head's process was not found")
