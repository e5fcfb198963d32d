"""Dask on zray: zray_dask_get runs Dask graphs as zray tasks.

One local session (two CPUs) for the module; the last test stops it for a
two-node loopback cluster and starts it again.
"""

import operator
import os
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

import zray
from zray.object_ref import ObjectRef

dask = pytest.importorskip("dask")
da = pytest.importorskip("dask.array")
dd = pytest.importorskip("dask.dataframe")

from zray.util.dask import (  # noqa: E402  (after the skip when dask is missing)
    disable_dask_on_ray, disable_dask_on_zray, enable_dask_on_ray, enable_dask_on_zray,
    ray_dask_get, zray_dask_get,
)
from zray.util.state import list_tasks  # noqa: E402

from clusters import running  # noqa: E402
from waiting import eventually, shutdown_leaving_nothing  # noqa: E402

pytestmark = pytest.mark.timeout(120)


def _start_session():
    return zray.init(num_cpus=2)


@pytest.fixture(scope="module", autouse=True)
def session():
    state = {"ctx": _start_session()}
    yield state
    shutdown_leaving_nothing(state["ctx"])


class Boom(Exception):
    """A user's exception type, to see it reach the caller of dask.compute."""


def _fail(x):
    raise Boom(f"no value for {x}")


def _pid_of(*_):
    return os.getpid()


def _log_run(path, name, value):
    """Appends one line per run (O_APPEND: whole lines from any process)."""
    with open(path, "a") as f:
        f.write(name + "\n")
    return value


def _runs(path):
    with open(path) as f:
        return f.read().split()


def test_ray_names_are_the_same_functions():
    assert ray_dask_get is zray_dask_get
    assert enable_dask_on_ray is enable_dask_on_zray
    assert disable_dask_on_ray is disable_dask_on_zray


def test_dask_is_imported_only_by_this_package_and_its_absence_names_the_extra():
    probe = ("import sys, zray, zray.util\n"
             "assert 'dask' not in sys.modules, 'import zray loaded dask'\n"
             "sys.modules['dask'] = None  # as if dask were not installed\n"
             "import zray.util.dask\n")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode != 0
    assert "ImportError" in proc.stderr and "zray[dask]" in proc.stderr, proc.stderr


def test_array_reductions_match_numpy():
    x = da.random.random((4000, 4000), chunks=(1000, 1000))
    total, mean, std = dask.compute(x.sum(), x.mean(), x.std(), scheduler=zray_dask_get)
    reference = x.compute(scheduler="sync")  # the same random chunks, in one array
    assert np.isclose(total, reference.sum())
    assert np.isclose(mean, reference.mean())
    assert np.isclose(std, reference.std())
    assert np.isclose(total, x.sum().compute(scheduler="sync"))


def test_array_result_keeps_its_shape():
    x = da.arange(100, chunks=10).reshape((10, 10)).rechunk((5, 5))
    y = (x.T + 1)[2:7, 3:9]
    want = np.arange(100).reshape(10, 10).T[2:7, 3:9] + 1
    assert np.array_equal(y.compute(scheduler=zray_dask_get), want)


def test_dataframe_groupby_aggregate_matches_pandas():
    rng = np.random.default_rng(7)
    pdf = pd.DataFrame({"key": rng.integers(0, 13, 5000), "a": rng.random(5000),
                        "b": rng.integers(0, 100, 5000)})
    ddf = dd.from_pandas(pdf, npartitions=6)
    got = ddf.groupby("key").agg({"a": "mean", "b": ["sum", "max"]}).compute(
        scheduler=zray_dask_get)
    want = pdf.groupby("key").agg({"a": "mean", "b": ["sum", "max"]})
    pd.testing.assert_frame_equal(got.sort_index(), want.sort_index())


def test_config_set_scheduler_runs_in_zray_workers():
    task = dask.delayed(_pid_of)(1)
    with dask.config.set(scheduler=zray_dask_get):
        assert task.compute() != os.getpid()
    with enable_dask_on_zray():
        assert dask.config.get("dataframe.shuffle.method") == "tasks"
        assert task.compute() != os.getpid()
        with disable_dask_on_zray():
            assert task.compute() == os.getpid()  # dask's own scheduler, in this process
    assert dask.config.get("scheduler", None) is None


def test_shared_dependencies_run_once(tmp_path):
    log = str(tmp_path / "runs")
    run = dask.delayed(_log_run, pure=False)
    shared = run(log, "shared", 10)
    left = run(log, "left", dask.delayed(operator.add)(shared, 1))
    right = run(log, "right", dask.delayed(operator.mul)(shared, 2))
    both = dask.delayed(operator.add)(left, right)
    assert dask.compute(both, left, shared, scheduler=zray_dask_get) == (31, 11, 10)
    assert sorted(_runs(log)) == ["left", "right", "shared"]


def test_tasks_are_zray_tasks_in_workers():
    marker = f"dask_marker_{os.getpid()}"

    def named(i):
        return os.getpid()

    named.__name__ = named.__qualname__ = marker
    parts = [dask.delayed(named)(i) for i in range(6)]
    pids = dask.compute(*parts, scheduler=zray_dask_get)
    assert os.getpid() not in pids
    rows = []

    def all_recorded():  # the head hears of finished tasks a little after the driver
        rows[:] = list_tasks(filters=[("name", "=", marker)], detail=True)
        return len(rows) == 6 and {row["state"] for row in rows} == {"FINISHED"}

    assert eventually(all_recorded)
    assert {row["worker_pid"] for row in rows} == set(pids)


def test_driver_fetches_only_requested_keys(monkeypatch):
    fetched = []
    real_get = zray.get

    def counting_get(refs, **kwargs):
        fetched.append(len(refs) if isinstance(refs, list) else 1)
        return real_get(refs, **kwargs)

    monkeypatch.setattr(zray, "get", counting_get)
    x = da.ones((2000, 2000), chunks=(500, 500))
    assert (x + 1).sum().compute(scheduler=zray_dask_get) == 2 * 2000 * 2000
    assert fetched == [1]


def _big_block(_):
    return np.full(2_000_000, 3.0)


def _view_flags(block):
    return block.flags.writeable, float(block.sum())


def test_large_intermediates_arrive_zero_copy():
    # A shared-memory object is read in place: the reader gets a read-only view.
    block = dask.delayed(_big_block)(0)
    writeable, total = dask.compute(dask.delayed(_view_flags)(block),
                                    scheduler=zray_dask_get)[0]
    assert not writeable and total == 6_000_000.0


def _first(block):
    return float(block[0])


def _sum_once_big_objects_are_gone(*values):
    """Waits (up to 20 s) until the store holds no object of 1 MB or more."""
    from zray.util.state import list_objects

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if all(row["size"] < 1 << 20 for row in list_objects()):
            return sum(values), True
        time.sleep(0.05)
    return sum(values), False


def test_intermediates_are_freed_while_the_graph_runs():
    # Each 16 MB block has one reader; once the readers are done, nothing holds
    # the blocks, though the graph's last task still runs.
    firsts = [dask.delayed(_first)(dask.delayed(_big_block)(i)) for i in range(4)]
    last = dask.delayed(_sum_once_big_objects_are_gone)(*firsts)
    assert dask.compute(last, scheduler=zray_dask_get)[0] == (12.0, True)


def test_error_reaches_caller_with_its_type():
    failing = dask.delayed(_fail)("x")
    downstream = dask.delayed(operator.add)(failing, 1)
    with pytest.raises(Boom, match="no value for x"):
        dask.compute(downstream, scheduler=zray_dask_get)
    with pytest.raises(ZeroDivisionError):
        dask.compute(dask.delayed(operator.truediv)(1, 0), scheduler=zray_dask_get)


def test_legacy_tuple_graph_with_nested_keys():
    dsk = {"x": 1, "y": (operator.add, "x", 10),
           "z": (sum, ["x", "y", (operator.add, "y", 1)]),
           "w": (dict, [["a", "z"], ["b", ["x", "y"]]])}
    assert zray_dask_get(dsk, "z") == 24
    assert zray_dask_get(dsk, [["z"], "y", [["w"]]]) == [[24], 11, [[{"a": 24, "b": [1, 11]}]]]
    assert zray_dask_get({"a": (operator.add, "b", 1)}, "a", cache={"b": 41}) == 42


def test_options_remote_args_persist_and_ignored_keywords():
    resources = dask.delayed(lambda _: zray.get_runtime_context().get_assigned_resources())(0)
    assert dask.compute(resources, scheduler=zray_dask_get,
                        zray_remote_args={"num_cpus": 2})[0] == {"CPU": 2.0}
    assert dask.compute(resources, scheduler=zray_dask_get,
                        ray_remote_args={"num_cpus": 0.5})[0] == {"CPU": 0.5}
    with pytest.raises(ValueError, match="num_cpuz"):
        dask.compute(resources, scheduler=zray_dask_get, zray_remote_args={"num_cpuz": 1})
    with pytest.raises(TypeError, match="zray_callbacks"):
        dask.compute(resources, scheduler=zray_dask_get, zray_callbacks=[])
    assert dask.compute(dask.delayed(operator.add)(1, 2), scheduler=zray_dask_get,
                        num_workers=7, pool=None) == (3,)

    (ref,) = zray_dask_get({"a": (operator.mul, 6, 7)}, ["a"], zray_persist=True)
    assert isinstance(ref, ObjectRef) and zray.get(ref) == 42
    assert zray_dask_get({"p": ref, "q": (operator.add, "p", 1)}, "q") == 43


def test_array_sum_on_two_nodes(session):
    shutdown_leaving_nothing(session["ctx"])
    try:
        with running("zdk", ["--num-cpus", "1", "--no-dashboard"], [["--num-cpus", "1"]],
                     cpus=2):
            x = da.random.random((2000, 2000), chunks=(500, 500))
            total = x.sum().compute(scheduler=zray_dask_get,
                                    zray_remote_args={"scheduling_strategy": "SPREAD"})
            assert np.isclose(total, x.sum().compute(scheduler="sync"))
            cluster_nodes = {node["NodeID"] for node in zray.nodes()}
            seen = set()

            def both_nodes_ran_tasks():
                seen.update(row["node_id"] for row in list_tasks(detail=True))
                return seen == cluster_nodes

            assert len(cluster_nodes) == 2
            assert eventually(both_nodes_ran_tasks), (seen, cluster_nodes)
    finally:
        session["ctx"] = _start_session()
