"""The state API, timeline and computation graph on one shared session.

Tasks, actors and objects made here must show up in ``zray.util.state``'s
listings with the right states, parents, sizes and nodes; ``timeline()`` and
``visualize_computation_graph()`` are built from the same records.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

import zray
from zray.util import state

pytestmark = pytest.mark.timeout(90)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module", autouse=True)
def session():
    ctx = zray.init(num_cpus=2)
    yield ctx
    zray.shutdown()


@zray.remote
def square(x):
    return x * x


@zray.remote(max_retries=0)
def broken():
    raise ValueError("broken on purpose")


@zray.remote
def parent(n):
    return sum(zray.get([square.remote(i) for i in range(n)]))


@zray.remote
class Counter:
    def __init__(self):
        self.n = 0

    def add(self):
        self.n += 1
        return self.n


def tasks_named(name, **kwargs):
    return [t for t in state.list_tasks(limit=100_000, **kwargs) if t.name == name]


def test_tasks_are_listed_with_their_states_and_places():
    zray.get([square.remote(i) for i in range(5)])
    with pytest.raises(ValueError):
        zray.get(broken.remote())
    done = tasks_named("square")
    assert len(done) >= 5 and {t.state for t in done} == {"FINISHED"}
    me = zray.get_runtime_context()
    task = done[0]
    assert task.node_id == me.get_node_id() and task.job_id == me.get_job_id()
    assert task.worker_pid and task.started_at <= task.finished_at
    assert task["returns"][0]["size"] > 0  # dict and attribute access alike
    (failed,) = tasks_named("broken")
    assert failed.state == "FAILED" and "broken on purpose" in failed.error


def test_filters_limits_and_detail():
    zray.get(square.remote(3))
    failed = state.list_tasks(filters=[("state", "=", "failed")])
    assert failed and all(t.state == "FAILED" for t in failed)
    others = state.list_tasks(filters=[("state", "!=", "FAILED")], limit=100_000)
    assert all(t.state != "FAILED" for t in others)
    assert len(state.list_tasks(limit=2)) == 2
    assert "events" not in state.list_tasks(limit=1)[0]
    detailed = state.list_tasks(limit=1, detail=True)[0]
    assert [e["state"] for e in detailed.events][0] == "SUBMITTED"
    assert state.get_task(detailed.task_id).task_id == detailed.task_id
    with pytest.raises(ValueError, match="colour"):
        state.list_tasks(filters=[("colour", "=", "red")])


def test_nested_tasks_know_their_parent():
    zray.get(parent.remote(3))
    (outer,) = tasks_named("parent")
    children = [t for t in tasks_named("square") if t.parent_task_id == outer.task_id]
    assert len(children) == 3
    assert outer.parent_task_id is None  # submitted by the driver


def test_summary_counts_by_function_and_state():
    summary = state.summarize_tasks()
    assert summary["summary"]["square"]["state_counts"]["FINISHED"] >= 5
    assert summary["summary"]["broken"]["state_counts"]["FAILED"] >= 1
    assert summary["recording"]["tasks"] >= 6 and summary["recording"]["dropped_events"] == 0


def test_actors_workers_nodes_and_jobs():
    counter = Counter.options(name="listed-counter").remote()
    assert zray.get(counter.add.remote()) == 1
    actors = [a for a in state.list_actors(limit=1000) if a.name == "listed-counter"]
    assert len(actors) == 1 and actors[0].state == "ALIVE" and actors[0].class_name == "Counter"
    assert state.get_actor(actors[0].actor_id).pid == actors[0].pid
    assert state.summarize_actors()["summary"]["Counter"]["state_counts"]["ALIVE"] >= 1
    workers = state.list_workers()
    assert actors[0].pid in {w.pid for w in workers}
    (node,) = state.list_nodes()
    assert node.alive and node.resources_total["CPU"] == 2
    jobs = {j.job_id: j for j in state.list_jobs()}
    mine = jobs[zray.get_runtime_context().get_job_id()]
    assert mine.status == "RUNNING" and mine.driver_pid == os.getpid() and mine.tasks > 0
    zray.kill(counter)


def test_objects_are_listed_largest_first():
    big = zray.put(np.zeros(2_000_000, dtype=np.uint8))
    rows = state.list_objects(limit=5)
    assert rows[0].object_id == big.hex() and rows[0].size >= 2_000_000
    assert rows[0].kind == "SHARED" and rows[0].ref_count >= 1
    assert state.summarize_objects()["total_size"] >= 2_000_000
    del big


def test_timeline_is_a_chrome_trace(tmp_path):
    zray.get([square.remote(i) for i in range(4)])
    events = zray.timeline()
    boxes = [e for e in events if e["ph"] == "X" and e["name"] == "square"]
    assert len(boxes) >= 4 and all(e["dur"] >= 0 and e["ts"] > 0 for e in boxes)
    names = {e["args"]["name"] for e in events if e["ph"] == "M"}
    assert any(n.startswith("worker") for n in names)
    path = tmp_path / "trace.json"
    assert zray.timeline(str(path)) is None
    assert len(json.loads(path.read_text())) == len(zray.timeline())


def _edges(dot):
    return re.findall(r'"([^"]+)" -> "([^"]+)"(?: \[style=(\w+)\])?', dot)


def test_computation_graph_of_the_seed_examples(tmp_path):
    """Seed 002: ten sleeps in parallel, and zeros, zeros -> dot."""
    script = tmp_path / "graph.py"
    script.write_text(
        "import time, numpy as np, zray\n"
        "zray.init(num_cpus=2)\n"
        "@zray.remote\n"
        "def f():\n    time.sleep(0.01)\n"
        "zray.get([f.remote() for _ in range(10)])\n"
        "@zray.remote\n"
        "def zeros(shape):\n    return np.zeros(shape)\n"
        "@zray.remote\n"
        "def dot(a, b):\n    return np.dot(a, b)\n"
        "zray.get(dot.remote(zeros.remote([10, 10]), zeros.remote([10, 10])))\n"
        "print(zray.visualize_computation_graph(filename=%r))\n"
        "zray.shutdown()\n" % str(tmp_path / "graph.dot"))
    env = dict(os.environ, PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    dot = out.stdout
    assert (tmp_path / "graph.dot").read_text().strip() == dot.strip()
    labels = dict(re.findall(r'"([^"]+)" \[label="([^"]+)"', dot))
    tasks = {name: [i for i, label in labels.items() if label == name and i.startswith("t_")]
             for name in ("f", "zeros", "dot")}
    assert len(tasks["f"]) == 10 and len(tasks["zeros"]) == 2 and len(tasks["dot"]) == 1
    edges = _edges(dot)
    dashed = {(a, b) for a, b, style in edges if style == "dashed"}
    solid = {(a, b) for a, b, style in edges if style != "dashed"}
    every = tasks["f"] + tasks["zeros"] + tasks["dot"]
    assert {("op-root", t) for t in every} <= dashed
    for t in tasks["f"]:
        assert sum(1 for a, _ in solid if a == t) == 1  # its one result
    made = {b for a, b in solid if a in tasks["zeros"]}
    assert len(made) == 2 and {(o, tasks["dot"][0]) for o in made} <= solid
    assert any(a == tasks["dot"][0] for a, _ in solid)


def test_state_api_without_a_session_finds_no_cluster_clearly():
    code = ("import zray.util.state as s\n"
            "try:\n    s.list_tasks()\nexcept Exception as e:\n"
            "    print(type(e).__name__, e)\n")
    empty = tempfile.mkdtemp(prefix="zo", dir="/tmp")  # short: it would hold socket paths
    env = dict(os.environ, PYTHONPATH=ROOT, ZRAY_TMPDIR=empty)
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=60, env=env)
    finally:
        shutil.rmtree(empty, ignore_errors=True)
    assert "RaySystemError" in out.stdout and "no cluster" in out.stdout


def test_recording_can_be_turned_off(tmp_path):
    code = ("import zray\nfrom zray.util import state\nzray.init(num_cpus=1)\n"
            "@zray.remote\ndef f():\n    return 1\n"
            "zray.get([f.remote() for _ in range(3)])\n"
            "print(len(state.list_tasks()))\nzray.shutdown()\n")
    env = dict(os.environ, PYTHONPATH=ROOT, ZRAY_EVENT_BUFFER="0")
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "0", (out.stdout, time.monotonic() - start)
