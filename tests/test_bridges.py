"""The bridges to Python's parallel APIs: joblib's backend, multiprocessing.Pool,
concurrent.futures.Executor, and the seed-era ``zray.services.start_ray_local``.

One local session (two CPUs, a custom resource) for the module; the Pool's
two-node test stops it for a loopback cluster and starts it again.  Tests
that need one call to finish after another hold it behind a gate file the
test creates, not behind a sleep.
"""

import concurrent.futures
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

import psutil
import pytest

import zray
from zray.util.futures import Executor, RemoteTraceback
from zray.util.multiprocessing import Pool
from zray.util.state import list_tasks

from clusters import ROOT, running
from waiting import eventually, shutdown_leaving_nothing, wait_pid_gone

joblib = pytest.importorskip("joblib")
pytest.importorskip("sklearn")

pytestmark = pytest.mark.timeout(120)


def _start_session():
    return zray.init(num_cpus=2, resources={"bridge": 1})


@pytest.fixture(scope="module", autouse=True)
def session():
    state = {"ctx": _start_session()}
    yield state
    shutdown_leaving_nothing(state["ctx"])


# ---------------------------------------------------------------------- task bodies
def square(x):
    return x * x


def add(a, b):
    return a + b


def pid_of(_=None):
    return os.getpid()


def fail_on_three(x):
    if x == 3:
        raise KeyError(f"three: {x}")
    return x


def wait_for_file(path, timeout=60.0):
    import time

    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.01)


def gated(item):
    """(value, gate, done_marker): wait for ``gate`` (if any), then mark ``done``."""
    value, gate, done = item
    if gate:
        wait_for_file(gate)
    if done:
        open(done, "w").close()
    return value


def count_init(tag):
    os.environ["BRIDGE_INITS"] = str(int(os.environ.get("BRIDGE_INITS", "0")) + 1)
    os.environ["BRIDGE_TAG"] = tag


def init_state(_=None):
    return os.environ.get("BRIDGE_TAG"), os.environ.get("BRIDGE_INITS"), os.getpid()


def node_and_pid(_=None):
    return zray.get_runtime_context().get_node_id(), os.getpid()


# ---------------------------------------------------------------------- Pool
def test_pool_map_runs_in_worker_processes():
    with Pool() as pool:
        assert pool._processes == 2  # the cluster's CPUs
        assert pool.map(square, range(20)) == [x * x for x in range(20)]
        pids = set(pool.map(pid_of, range(8), chunksize=1))
    assert os.getpid() not in pids


def test_pool_starmap_apply_and_async_callbacks():
    with Pool(2) as pool:
        assert pool.starmap(add, [(1, 2), (3, 4), (5, 6)]) == [3, 7, 11]
        assert pool.apply(add, (1,), {"b": 41}) == 42
        seen = []
        result = pool.apply_async(square, (7,), callback=seen.append)
        assert result.get(timeout=60) == 49 and result.successful()
        assert seen == [49]
        mapped = pool.map_async(square, range(5), callback=seen.append)
        mapped.wait(60)
        assert mapped.ready() and mapped.get() == [0, 1, 4, 9, 16]
        assert seen[-1] == [0, 1, 4, 9, 16]
        assert pool.starmap_async(add, [(2, 2)]).get(60) == [4]
        assert pool.map([].append, []) == []


def test_pool_async_result_times_out_and_is_not_ready(tmp_path):
    gate = str(tmp_path / "gate")
    with Pool(1) as pool:
        result = pool.apply_async(gated, ((1, gate, None),))
        with pytest.raises(multiprocessing.TimeoutError):
            result.get(timeout=0.05)
        with pytest.raises(ValueError, match="not ready"):
            result.successful()
        open(gate, "w").close()
        assert result.get(60) == 1


def test_pool_imap_keeps_input_order(tmp_path):
    gate, done = str(tmp_path / "gate"), str(tmp_path / "second_done")
    with Pool(2) as pool:
        results = pool.imap(gated, [(0, gate, None), (1, None, done), (2, None, None)])
        assert eventually(lambda: os.path.exists(done), within=60)
        with pytest.raises(multiprocessing.TimeoutError):
            results.next(timeout=0.05)  # the second is done; the first is not
        open(gate, "w").close()
        assert list(results) == [0, 1, 2]
        assert list(pool.imap(square, iter(range(10)), chunksize=3)) == \
            [x * x for x in range(10)]


def test_pool_imap_unordered_yields_in_finishing_order(tmp_path):
    gate = str(tmp_path / "gate")
    with Pool(2) as pool:
        results = pool.imap_unordered(gated, [(0, gate, None), (1, None, None)])
        assert next(results) == 1  # the first waits for the gate, opened only now
        open(gate, "w").close()
        assert next(results) == 0
        with pytest.raises(StopIteration):
            next(results)
        assert sorted(pool.imap_unordered(square, range(10), chunksize=4)) == \
            sorted(x * x for x in range(10))


def test_pool_initializer_runs_once_per_process():
    with Pool(2, initializer=count_init, initargs=("ready",)) as pool:
        states = pool.map(init_state, range(10), chunksize=1)
    assert {(tag, inits) for tag, inits, _ in states} == {("ready", "1")}


def test_pool_maxtasksperchild_replaces_the_process():
    with Pool(1, initializer=count_init, initargs=("m",), maxtasksperchild=2) as pool:
        states = pool.map(init_state, range(6), chunksize=1)
    pids = [pid for _, _, pid in states]
    assert all(pids.count(pid) <= 2 for pid in pids)
    assert len(set(pids)) == 3
    assert {inits for _, inits, _ in states} == {"1"}  # each new process ran it once


def test_pool_chunksize_groups_calls():
    with Pool(2) as pool:
        pids = pool.map(pid_of, range(12), chunksize=6)
        for start in (0, 6):
            assert len(set(pids[start:start + 6])) == 1
        with pytest.raises(ValueError, match="chunksize"):
            pool.map(square, [1], chunksize=0)
        with pytest.raises(ValueError, match="chunksize"):
            pool.imap(square, [1], chunksize=0)


def test_pool_errors_keep_their_type():
    errors = []
    with Pool(2) as pool:
        with pytest.raises(KeyError, match="three") as info:
            pool.map(fail_on_three, range(6), chunksize=1)
        assert type(info.value) is KeyError
        assert isinstance(info.value.__cause__, RemoteTraceback)
        result = pool.apply_async(fail_on_three, (3,), error_callback=errors.append)
        with pytest.raises(KeyError):
            result.get(60)
        assert not result.successful() and type(errors[0]) is KeyError
        out = []
        for_each = pool.imap(fail_on_three, range(5))
        while True:
            try:
                out.append(next(for_each))
            except StopIteration:
                break
            except KeyError:
                out.append("error")
        assert out == [0, 1, 2, "error", 4]
        assert pool.map(square, [3]) == [9]  # the pool lives on


def test_pool_closed_and_terminated(tmp_path):
    pool = Pool(2)
    with pytest.raises(ValueError, match="still running"):
        pool.join()
    assert pool.map(square, [2]) == [4]
    pool.close()
    for use in (lambda: pool.map(square, [1]), lambda: pool.apply_async(square, (1,)),
                lambda: pool.imap(square, [1])):
        with pytest.raises(ValueError, match="Pool not running"):
            use()
    pool.join()

    gate = str(tmp_path / "gate")  # never opened: the call runs until terminated
    pool = Pool(1)
    (worker_pid,) = pool.map(pid_of, [0])
    pending = pool.apply_async(gated, ((0, gate, None),))
    queued = pool.imap(square, range(4))
    pool.terminate()
    with pytest.raises(ValueError, match="terminated"):
        pending.get(60)
    with pytest.raises(ValueError, match="terminated"):
        list(queued)
    wait_pid_gone(worker_pid)
    with pytest.raises(ValueError, match="Pool not running"):
        pool.map(square, [1])


# ---------------------------------------------------------------------- futures
def test_executor_submit_returns_a_future():
    with Executor() as executor:
        future = executor.submit(add, 2, b=40)
        assert isinstance(future, concurrent.futures.Future)
        assert future.result(timeout=60) == 42
        assert executor.submit(pid_of).result(60) != os.getpid()


def test_executor_map_keeps_order_with_chunks():
    with Executor(max_workers=2) as executor:
        assert list(executor.map(square, range(10))) == [x * x for x in range(10)]
        assert list(executor.map(add, range(7), range(7), chunksize=3)) == \
            [2 * x for x in range(7)]
        assert list(executor.map(square, [], timeout=5)) == []
        with pytest.raises(ValueError, match="chunksize"):
            executor.map(square, [1], chunksize=0)


def test_executor_task_options_reach_each_task():
    with Executor(num_cpus=1, resources={"bridge": 1}) as executor:
        assigned = executor.submit(
            lambda: zray.get_runtime_context().get_assigned_resources()).result(60)
    assert assigned.get("bridge") == 1


def test_executor_exception_keeps_its_type():
    with Executor() as executor:
        future = executor.submit(fail_on_three, 3)
        with pytest.raises(KeyError, match="three"):
            future.result(60)
        error = future.exception()
        assert type(error) is KeyError and isinstance(error.__cause__, RemoteTraceback)


def test_executor_as_completed_in_finishing_order(tmp_path):
    gate = str(tmp_path / "gate")
    with Executor() as executor:
        slow = executor.submit(gated, (0, gate, None))
        quick = executor.submit(gated, (1, None, None))
        finished = concurrent.futures.as_completed([slow, quick], timeout=60)
        assert next(finished) is quick
        open(gate, "w").close()
        assert next(finished) is slow and slow.result() == 0


def test_executor_shutdown(tmp_path):
    gate = str(tmp_path / "gate")
    executor = Executor(max_workers=1)
    running_one = executor.submit(gated, (0, gate, None))
    waiting = [executor.submit(square, x) for x in range(3)]
    done_callbacks = []
    running_one.add_done_callback(done_callbacks.append)
    executor.shutdown(wait=False, cancel_futures=True)
    assert all(f.cancelled() for f in waiting)
    with pytest.raises(RuntimeError, match="shutdown"):
        executor.submit(square, 1)
    open(gate, "w").close()
    assert running_one.result(60) == 0

    executor = Executor(max_workers=1)
    futures = [executor.submit(square, x) for x in range(4)]
    executor.shutdown(wait=True)
    assert [f.result(timeout=0) for f in futures] == [0, 1, 4, 9]
    assert eventually(lambda: done_callbacks == [running_one])


# ---------------------------------------------------------------------- joblib
def _batch_tasks():
    return [t for t in list_tasks(limit=10000) if t.get("name") == "joblib_batch"]


def test_joblib_backend_fits_sklearn_with_zray_tasks():
    from sklearn.datasets import load_iris
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import GridSearchCV
    from sklearn.svm import SVC

    from zray.util.joblib import register_zray

    register_zray()
    X, y = load_iris(return_X_y=True)
    grid = {"C": [0.1, 1.0, 10.0], "gamma": [0.1, 1.0]}
    expected = GridSearchCV(SVC(), grid, cv=3, n_jobs=1).fit(X, y)
    before = len(_batch_tasks())
    with joblib.parallel_backend("zray"):
        search = GridSearchCV(SVC(), grid, cv=3, n_jobs=2).fit(X, y)
        forest = RandomForestClassifier(n_estimators=8, n_jobs=2, random_state=0).fit(X, y)
    assert search.best_params_ == expected.best_params_
    assert search.best_score_ == pytest.approx(expected.best_score_)
    assert forest.score(X, y) > 0.9
    assert eventually(lambda: len(_batch_tasks()) > before, within=30)


def test_joblib_ray_alias_effective_jobs_and_errors():
    from zray.util.joblib import ZrayBackend, register_ray

    register_ray()
    assert ZrayBackend().effective_n_jobs(-1) == 2  # the cluster's CPUs
    assert ZrayBackend().effective_n_jobs(-2) == 1
    assert ZrayBackend().effective_n_jobs(5) == 5
    with joblib.parallel_backend("ray"):
        pids = joblib.Parallel(n_jobs=2)(joblib.delayed(pid_of)() for _ in range(6))
        assert os.getpid() not in pids
        with pytest.raises(KeyError, match="three"):
            joblib.Parallel(n_jobs=-1)(joblib.delayed(fail_on_three)(i) for i in range(6))
        assert joblib.Parallel(n_jobs=2)(joblib.delayed(square)(i) for i in range(5)) == \
            [0, 1, 4, 9, 16]


def test_joblib_bridge_without_joblib_names_the_extra(monkeypatch):
    import importlib

    monkeypatch.setitem(sys.modules, "joblib", None)  # as if it were not installed
    for name in ("zray.util.joblib", "zray.util.joblib.backend"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    with pytest.raises(ImportError, match=r"zray\[joblib\]"):
        importlib.import_module("zray.util.joblib")


# ---------------------------------------------------------------------- services
START_RAY_LOCAL = textwrap.dedent("""
    import json, os
    import zray as ray
    from zray.util.state import list_workers

    info = ray.services.start_ray_local(num_workers=3)

    @ray.remote
    def add(a, b):
        return a + b

    workers = [w for w in list_workers() if w["actor_id"] is None]
    print(json.dumps({"session_dir": info["session_dir"], "workers": len(workers),
                      "cpus": ray.cluster_resources()["CPU"],
                      "sum": ray.get(add.remote(1, ray.put(2)))}))
""")


def test_start_ray_local_starts_workers_and_ends_with_the_interpreter():
    session_tmp = tempfile.mkdtemp(prefix="zbs", dir="/tmp")  # short: it holds socket paths
    env = dict(os.environ, ZRAY_TMPDIR=session_tmp,
               PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    try:
        proc = subprocess.run([sys.executable, "-c", START_RAY_LOCAL], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=90)
    finally:
        shutil.rmtree(session_tmp, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["workers"] == 3 and report["cpus"] == 3 and report["sum"] == 3
    session_dir = report["session_dir"]

    def nothing_left():
        for p in psutil.process_iter(["cmdline", "environ"]):
            try:
                text = " ".join(p.info["cmdline"] or []) + str(p.info["environ"] or "")
            except psutil.Error:
                continue
            if session_dir in text:
                return False
        return True

    assert eventually(nothing_left, within=20)
    tag = "zray_" + os.path.basename(session_dir)[-12:]
    assert not [n for n in os.listdir("/dev/shm") if n.startswith(tag)]


# ---------------------------------------------------------------------- two nodes
def test_pool_map_spreads_over_two_nodes(session):
    shutdown_leaving_nothing(session["ctx"])
    try:
        with running("zbr", ["--num-cpus", "1", "--no-dashboard"], [["--num-cpus", "1"]],
                     cpus=2):
            cluster_nodes = {node["NodeID"] for node in zray.nodes()}
            assert len(cluster_nodes) == 2
            with Pool() as pool:
                placed = pool.map(node_and_pid, range(16), chunksize=1)
                assert pool.map(square, range(50)) == [x * x for x in range(50)]
            assert {node for node, _ in placed} == cluster_nodes
    finally:
        session["ctx"] = _start_session()
