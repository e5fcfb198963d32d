"""Microbenchmark workloads, written once and run against any Ray-like module.

Owns the benchmark's configurations (``Config``: ``FULL``, ``QUICK``,
``SMOKE``), the throughput and latency workloads, the start-up measurement,
the runner (``run_all``: every workload, in ``workload_names`` order) and the
child-process entry point (``main``, ``run_target``).  The measurement of
memory per queued task, which ``run_all`` ends with, lives in ``bench_queued``.

Nothing here imports zray: the module under test is a parameter, so the very
same code measures ``zray`` and ``ray``::

    import zray
    records = run_all(zray, quick=True)  # [{"name", "value", "unit", ...}, ...]

The remote functions and the actor class are defined inside ``_define`` so
cloudpickle ships them by value; workers never need to import this file.

On the Ray side, whose Python has neither zray nor its dependencies, this
file is loaded from its path, outside any package (see ``_LOADER`` in
``zray._private.microbenchmark``).  ``bench_queued`` is then found by path
too: with no ``__package__``, ``_load_sibling`` loads ``bench_queued.py``
from this file's directory as the module ``zray_bench_queued``.  Imported as
``zray._private.bench_workloads``, it imports ``zray._private.bench_queued``.

Run it as a script (``python bench_workloads.py --target ray --json``) to
benchmark one system in a clean process; ``zray._private.microbenchmark``
does exactly that for each side and compares the two.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple


def _load_sibling(name: str) -> Any:
    """Module ``name`` of this file's directory, loaded from its path as ``zray_<name>``
    (once): this file was itself loaded from its path, outside the zray package."""
    key = f"zray_{name}"
    if key not in sys.modules:
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")
        spec = importlib.util.spec_from_file_location(key, path)
        assert spec is not None and spec.loader is not None, path
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]


if __package__:  # imported as zray._private.bench_workloads
    from . import bench_cluster as bc
    from . import bench_queued as bq
else:  # loaded from its path (the Ray side) or run as a script
    bq = _load_sibling("bench_queued")
    bc = _load_sibling("bench_cluster")

MiB = 1024 * 1024
GiB = 1024 * MiB

#: Units whose figures are better when lower (times, memory); all others are rates.
LOWER_IS_BETTER_UNITS = ("s", "us/task", "B/task")

#: Marks the result line a benchmark process prints on stdout with ``--json``.
RESULT_MARKER = "ZRAY_BENCH_RESULT "

#: Marks the progress lines it prints on stderr.
PROGRESS_MARKER = "[bench] "


@dataclass(frozen=True)
class Config:
    """How much of each workload to run; every loop also stops at ``cap`` seconds."""
    mode: str
    startup_runs: int
    sync_tasks: int
    async_tasks: int
    small_puts: int
    small_gets: int
    big_bytes: int
    big_put_reps: int
    big_get_reps: int
    arg_bytes: int
    arg_tasks: int
    actor_sync_calls: int
    actor_async_calls: int
    nested_parents: int
    nested_children: int
    tree_leaves: int
    leaf_bytes: int
    tree_reps: int
    wait_tasks: int
    scales: Tuple[int, ...]
    # Tasks left queued behind busy CPUs to measure their memory (own session).
    queued_tasks: int
    cap: float
    # A get/wait that takes longer than this is a hang, reported as an error.
    hang_timeout: float = 180.0


FULL = Config(mode="full", startup_runs=3, sync_tasks=2000, async_tasks=10_000,
              small_puts=10_000, small_gets=10_000, big_bytes=100 * MiB, big_put_reps=5,
              big_get_reps=20, arg_bytes=10 * MiB, arg_tasks=500, actor_sync_calls=2000,
              actor_async_calls=10_000, nested_parents=10, nested_children=100,
              tree_leaves=256, leaf_bytes=1_000_000, tree_reps=3, wait_tasks=1000,
              scales=(1000, 10_000, 100_000), queued_tasks=1_000_000, cap=10.0)

QUICK = Config(mode="quick", startup_runs=1, sync_tasks=500, async_tasks=1000,
               small_puts=2000, small_gets=2000, big_bytes=100 * MiB, big_put_reps=3,
               big_get_reps=10, arg_bytes=10 * MiB, arg_tasks=100, actor_sync_calls=500,
               actor_async_calls=1000, nested_parents=4, nested_children=100,
               tree_leaves=256, leaf_bytes=1_000_000, tree_reps=1, wait_tasks=300,
               scales=(1000, 10_000), queued_tasks=100_000, cap=3.0)

#: The plumbing check: every workload, ten-ish operations each, small data.
SMOKE = Config(mode="smoke", startup_runs=1, sync_tasks=10, async_tasks=10, small_puts=10,
               small_gets=10, big_bytes=1 * MiB, big_put_reps=2, big_get_reps=2,
               arg_bytes=1 * MiB, arg_tasks=10, actor_sync_calls=10, actor_async_calls=10,
               nested_parents=2, nested_children=10, tree_leaves=8, leaf_bytes=64_000,
               tree_reps=1, wait_tasks=10, scales=(10, 100), queued_tasks=200, cap=2.0,
               hang_timeout=60.0)

CONFIGS = {"full": FULL, "quick": QUICK, "smoke": SMOKE}


def get_config(quick: bool = False, smoke: bool = False) -> Config:
    return SMOKE if smoke else QUICK if quick else FULL


def _size(nbytes: int) -> str:
    if nbytes % MiB == 0:
        return f"{nbytes // MiB} MiB"
    if nbytes % 1_000_000 == 0:
        return f"{nbytes // 1_000_000} MB"
    return f"{nbytes / 1000:g} kB"


def workload_names(cfg: Config) -> List[str]:
    """Every record name ``run_all`` returns for ``cfg``, in order."""
    scaling = [f"scaling: tasks async n={n:,}" for n in cfg.scales]
    return [
        "start-up (import+init+1st get)",
        "tasks sync",
        "tasks async",
        "small put",
        "small get",
        f"put {_size(cfg.big_bytes)} array",
        f"get {_size(cfg.big_bytes)} array",
        f"tasks with {_size(cfg.arg_bytes)} ref arg",
        "actor calls sync",
        "actor calls async",
        f"nested tasks (x{cfg.nested_children} children)",
        f"tree reduce {cfg.tree_leaves} x {_size(cfg.leaf_bytes)}",
        "wait loop (one at a time)",
    ] + scaling + ["shutdown"] + bq.queued_names(cfg) + bc.cluster_names(cfg)


def init_kwargs(module_name: str, num_cpus: int) -> Dict[str, Any]:
    """The ``init`` options for a fair, quiet local cluster of ``num_cpus`` CPUs."""
    kwargs: Dict[str, Any] = {"num_cpus": num_cpus}
    if module_name == "ray":
        kwargs.update(include_dashboard=False, log_to_driver=False)
    return kwargs


def describe_machine() -> Dict[str, Any]:
    """CPU count and model, memory and Python version of this machine (stdlib only)."""
    model = platform.processor() or platform.machine()
    mem_gib = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem_gib = round(int(line.split()[1]) / (1024 * 1024), 1)
                    break
    except (OSError, ValueError, IndexError):
        pass
    return {"cpus": os.cpu_count(), "cpu_model": model, "mem_gib": mem_gib,
            "python": platform.python_version(), "system": f"{platform.system()} "
            f"{platform.release()} {platform.machine()}"}


# --------------------------------------------------------------------------- helpers


def _progress(log: Optional[Callable[[str], None]], record: Dict[str, Any]) -> None:
    if log is None:
        return
    if record.get("error"):
        log(f"{record['name']}: ERROR {record['error']}")
    else:
        log(f"{record['name']}: {record['value']:.6g} {record['unit']}")


def _rate_loop(step: Callable[[], Any], n: int, cap: float, warmup: int = 3) -> Tuple[float, int]:
    """Run ``step`` up to ``n`` times (stopping at ``cap`` seconds); return (ops/s, ops)."""
    for _ in range(min(warmup, n)):
        step()
    done = 0
    start = time.perf_counter()
    deadline = start + cap
    while done < n:
        step()
        done += 1
        if done % 8 == 0 and time.perf_counter() > deadline:
            break
    return done / (time.perf_counter() - start), done


def _timed_reps(step: Callable[[], float], reps: int, cap: float) -> List[float]:
    """Call ``step`` (which returns the seconds it measured) ``reps`` times, at least once
    and no more once ``cap`` seconds have passed."""
    times = []
    deadline = time.perf_counter() + cap
    for _ in range(max(1, reps)):
        times.append(step())
        if time.perf_counter() > deadline:
            break
    return times


def _module_path_env(module: Any) -> Dict[str, str]:
    """The environment for a child Python that must import ``module`` as we did."""
    env = dict(os.environ)
    origin = getattr(module, "__file__", None)
    if origin:
        root = os.path.dirname(os.path.dirname(os.path.abspath(origin)))
        parts = [root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(parts))
    return env


_STARTUP_CODE = r"""
import json, sys, time
t0 = time.perf_counter()
import {module} as X
X.init(**json.loads(sys.argv[1]))
@X.remote
def f():
    return 1
assert X.get(f.remote()) == 1
t1 = time.perf_counter()
X.shutdown()
t2 = time.perf_counter()
print({marker!r} + json.dumps({{"startup": t1 - t0, "shutdown": t2 - t1}}), flush=True)
"""


def measure_startup(module: Any, num_cpus: int, timeout: float = 180.0,
                    python: Optional[str] = None) -> Dict[str, float]:
    """Time ``import X; X.init(); X.get(f.remote())`` in a fresh ``python -c``."""
    name = module.__name__
    code = _STARTUP_CODE.format(module=name, marker=RESULT_MARKER)
    start = time.perf_counter()
    proc = subprocess.run([python or sys.executable, "-c", code,
                           json.dumps(init_kwargs(name, num_cpus))],
                          capture_output=True, text=True, timeout=timeout,
                          env=_module_path_env(module))
    wall = time.perf_counter() - start
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_MARKER):
            out = json.loads(line[len(RESULT_MARKER):])
            out["process_wall"] = wall
            return out
    tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
    raise RuntimeError(f"start-up process exited {proc.returncode} without a result: {tail}")


# --------------------------------------------------------------------------- workloads


def _define(ray: Any) -> Dict[str, Any]:
    """The remote functions and actor class, made with ``ray.remote`` of the module
    under test.  Bodies are self-contained (imports inside) so they pickle by value."""

    @ray.remote
    def noop():
        return 1

    @ray.remote
    def nbytes(array):
        return int(array.nbytes)

    @ray.remote
    def child():
        return 1

    @ray.remote
    def parent(k):
        return sum(ray.get([child.remote() for _ in range(k)]))

    @ray.remote
    def leaf(i, size):
        import numpy as np
        return np.full(size // 8, float(i))

    @ray.remote
    def add(a, b):
        return a + b

    @ray.remote
    class Counter:
        def __init__(self):
            self.n = 0

        def inc(self):
            self.n += 1
            return self.n

    return {"noop": noop, "nbytes": nbytes, "parent": parent, "leaf": leaf, "add": add,
            "Counter": Counter}


def _w_tasks_sync(ray, fns, cfg):
    noop = fns["noop"]
    rate, n = _rate_loop(lambda: ray.get(noop.remote(), timeout=cfg.hang_timeout),
                         cfg.sync_tasks, cfg.cap)
    return rate, "tasks/s", n


def _batch_seconds(ray, make: Callable[[], Any], n: int, timeout: float) -> float:
    start = time.perf_counter()
    refs = [make() for _ in range(n)]
    ray.get(refs, timeout=timeout)
    return time.perf_counter() - start


def _w_tasks_async(ray, fns, cfg):
    noop = fns["noop"]
    seconds = _batch_seconds(ray, noop.remote, cfg.async_tasks, cfg.hang_timeout)
    return cfg.async_tasks / seconds, "tasks/s", cfg.async_tasks


def _w_small_put(ray, fns, cfg):
    rate, n = _rate_loop(lambda: ray.put(1), cfg.small_puts, cfg.cap)
    return rate, "puts/s", n


def _w_small_get(ray, fns, cfg):
    ref = ray.put(1)
    rate, n = _rate_loop(lambda: ray.get(ref, timeout=cfg.hang_timeout), cfg.small_gets, cfg.cap)
    return rate, "gets/s", n


def _big_array(nbytes: int):
    import numpy as np
    return np.ones(nbytes, dtype=np.uint8)  # every page touched, unlike np.zeros


def _w_big_put(ray, fns, cfg):
    array = _big_array(cfg.big_bytes)
    warm = ray.put(array)  # warm-up: first touch of store pages, code paths
    del warm

    def once() -> float:
        start = time.perf_counter()
        ref = ray.put(array)
        seconds = time.perf_counter() - start
        del ref
        return seconds
    times = _timed_reps(once, cfg.big_put_reps, cfg.cap)
    return cfg.big_bytes / GiB / statistics.median(times), "GiB/s", len(times)


def _w_big_get(ray, fns, cfg):
    ref = ray.put(_big_array(cfg.big_bytes))
    value = ray.get(ref, timeout=cfg.hang_timeout)  # warm-up
    assert value.nbytes == cfg.big_bytes
    del value

    def once() -> float:
        start = time.perf_counter()
        value = ray.get(ref, timeout=cfg.hang_timeout)
        seconds = time.perf_counter() - start
        del value
        return seconds
    times = _timed_reps(once, cfg.big_get_reps, cfg.cap)
    return cfg.big_bytes / GiB / statistics.median(times), "GiB/s", len(times)


def _w_ref_arg_tasks(ray, fns, cfg):
    nbytes = fns["nbytes"]
    ref = ray.put(_big_array(cfg.arg_bytes))
    assert ray.get(nbytes.remote(ref), timeout=cfg.hang_timeout) == cfg.arg_bytes  # warm-up
    seconds = _batch_seconds(ray, lambda: nbytes.remote(ref), cfg.arg_tasks, cfg.hang_timeout)
    return cfg.arg_tasks / seconds, "tasks/s", cfg.arg_tasks


def _w_actor_sync(ray, fns, cfg):
    counter = fns["Counter"].remote()
    rate, n = _rate_loop(lambda: ray.get(counter.inc.remote(), timeout=cfg.hang_timeout),
                         cfg.actor_sync_calls, cfg.cap)
    return rate, "calls/s", n


def _w_actor_async(ray, fns, cfg):
    counter = fns["Counter"].remote()
    ray.get(counter.inc.remote(), timeout=cfg.hang_timeout)  # the actor is up
    seconds = _batch_seconds(ray, counter.inc.remote, cfg.actor_async_calls, cfg.hang_timeout)
    return cfg.actor_async_calls / seconds, "calls/s", cfg.actor_async_calls


def _w_nested(ray, fns, cfg):
    parent, k = fns["parent"], cfg.nested_children
    assert ray.get(parent.remote(2), timeout=cfg.hang_timeout) == 2  # warm-up
    start = time.perf_counter()
    sums = ray.get([parent.remote(k) for _ in range(cfg.nested_parents)],
                   timeout=cfg.hang_timeout)
    seconds = time.perf_counter() - start
    assert sums == [k] * cfg.nested_parents, sums
    children = k * cfg.nested_parents
    return children / seconds, "children/s", children


def _w_tree_reduce(ray, fns, cfg):
    leaf, add = fns["leaf"], fns["add"]
    n = cfg.tree_leaves
    expected = sum(range(n)) * (cfg.leaf_bytes // 8)

    def once() -> float:
        start = time.perf_counter()
        refs = [leaf.remote(i, cfg.leaf_bytes) for i in range(n)]
        while len(refs) > 1:
            pairs = [add.remote(refs[i], refs[i + 1]) for i in range(0, len(refs) - 1, 2)]
            refs = pairs + refs[len(pairs) * 2:]
        total = ray.get(refs[0], timeout=cfg.hang_timeout)
        seconds = time.perf_counter() - start
        assert float(total.sum()) == expected, (float(total.sum()), expected)
        return seconds
    times = _timed_reps(once, cfg.tree_reps, cfg.cap)
    return statistics.median(times), "s", len(times)


def _w_wait_loop(ray, fns, cfg):
    noop = fns["noop"]
    start = time.perf_counter()
    pending = [noop.remote() for _ in range(cfg.wait_tasks)]
    while pending:
        ready, pending = ray.wait(pending, num_returns=1, timeout=cfg.hang_timeout)
        if not ready:
            raise TimeoutError(f"ray.wait returned nothing in {cfg.hang_timeout} s")
    return cfg.wait_tasks / (time.perf_counter() - start), "tasks/s", cfg.wait_tasks


def _w_scaling(n: int):
    def run(ray, fns, cfg):
        seconds = _batch_seconds(ray, fns["noop"].remote, n, max(cfg.hang_timeout, n / 100))
        return seconds / n * 1e6, "us/task", n
    return run


def _record(name: str, fn: Callable[[], Tuple[float, str, int]], unit_hint: str
            ) -> Dict[str, Any]:
    try:
        value, unit, count = fn()
        return {"name": name, "value": float(value), "unit": unit, "count": count}
    except Exception as exc:  # one broken workload must not hide the others
        return {"name": name, "value": None, "unit": unit_hint,
                "error": f"{type(exc).__name__}: {exc}"[:300]}


def run_all(ray: Any, quick: bool = False, *, smoke: bool = False,
            config: Optional[Config] = None, num_cpus: int = 2,
            log: Optional[Callable[[str], None]] = None) -> List[Dict[str, Any]]:
    """Run every workload against the module ``ray`` (``zray`` or ``ray``).

    Returns ``[{"name", "value", "unit", "count"}, ...]`` in ``workload_names``
    order; a failed workload has ``value`` None and an ``error``.  Starts and
    shuts down its own cluster; the start-up figure comes from a fresh process,
    and the queued-task figures from a second cluster, started after the first
    one's shutdown so that neither its leftovers nor a million queued tasks
    distort the other figures.
    """
    cfg = config or get_config(quick, smoke)
    names = workload_names(cfg)
    records: List[Dict[str, Any]] = []

    def add(record: Dict[str, Any]) -> None:
        records.append(record)
        _progress(log, record)

    startups: List[Dict[str, float]] = []

    def startup():
        for _ in range(cfg.startup_runs):
            startups.append(measure_startup(ray, num_cpus, timeout=cfg.hang_timeout))
        return statistics.median(s["startup"] for s in startups), "s", len(startups)
    add(_record(names[0], startup, "s"))

    ray.init(**init_kwargs(ray.__name__, num_cpus))
    try:
        fns = _define(ray)
        ray.get([fns["noop"].remote() for _ in range(2 * num_cpus)],
                timeout=cfg.hang_timeout)  # workers up
        workloads: Sequence[Tuple[Callable, str]] = [
            (_w_tasks_sync, "tasks/s"), (_w_tasks_async, "tasks/s"),
            (_w_small_put, "puts/s"), (_w_small_get, "gets/s"),
            (_w_big_put, "GiB/s"), (_w_big_get, "GiB/s"), (_w_ref_arg_tasks, "tasks/s"),
            (_w_actor_sync, "calls/s"), (_w_actor_async, "calls/s"),
            (_w_nested, "children/s"), (_w_tree_reduce, "s"), (_w_wait_loop, "tasks/s"),
        ] + [(_w_scaling(n), "us/task") for n in cfg.scales]
        for name, (work, unit) in zip(names[1:], workloads):
            add(_record(name, lambda work=work: work(ray, fns, cfg), unit))
    finally:
        def shutdown():
            start = time.perf_counter()
            ray.shutdown()
            return time.perf_counter() - start, "s", 1
        add(_record("shutdown", shutdown, "s"))
    for record in bq.queued_records(ray, cfg, init_kwargs(ray.__name__, num_cpus)):
        add(record)
    for record in bc.cluster_records(ray, cfg, init_kwargs(ray.__name__, num_cpus)):
        add(record)
    return records


# --------------------------------------------------------------------------- entry point


def run_target(target: str, mode: str = "full", num_cpus: int = 2,
               log: Optional[Callable[[str], None]] = None) -> Dict[str, Any]:
    """Import ``target`` and benchmark it; the result document a child process prints."""
    cfg = CONFIGS[mode]
    start = time.perf_counter()
    module = importlib.import_module(target)
    records = run_all(module, config=cfg, num_cpus=num_cpus, log=log)
    return {"target": target, "version": getattr(module, "__version__", "?"),
            "mode": mode, "num_cpus": num_cpus, "machine": describe_machine(),
            "config": asdict(cfg),
            "elapsed": time.perf_counter() - start, "results": records}


def _stderr_log(message: str) -> None:
    print(PROGRESS_MARKER + message, file=sys.stderr, flush=True)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark one Ray-like module.")
    parser.add_argument("--target", default="zray", help="module to benchmark: zray or ray")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="tiny plumbing run")
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--json", action="store_true",
                        help=f"print the result as one {RESULT_MARKER.strip()} JSON line")
    args = parser.parse_args(argv)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    doc = run_target(args.target, mode, args.num_cpus, log=_stderr_log)
    if args.json:
        print(RESULT_MARKER + json.dumps(doc), flush=True)
    else:
        for r in doc["results"]:
            shown = r.get("error") or f"{r['value']:.6g} {r['unit']}"
            print(f"{r['name']:<40} {shown}")
    return 0 if all(r.get("value") is not None for r in doc["results"]) else 1


if __name__ == "__main__":
    sys.exit(main())
