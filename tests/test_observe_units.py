"""Observability's pure logic: event buffers, the task store, the timeline, the graph, tables."""

from __future__ import annotations

import json

import pytest

from zray._private import ids
from zray._private.observe import graph, tables, trace
from zray._private.observe.events import (
    FAILED,
    FINISHED,
    PENDING_NODE_ASSIGNMENT,
    RUNNING,
    SUBMITTED,
    TASK_STATES,
    EventBuffer,
    TaskStore,
)

pytestmark = pytest.mark.timeout(30)

JOB = bytes.fromhex("01" * 16)
OTHER_JOB = bytes.fromhex("02" * 16)
NODE_A = bytes.fromhex("aa" * 16)
NODE_B = bytes.fromhex("bb" * 16)
WORKER_1 = bytes.fromhex("11" * 16)
WORKER_2 = bytes.fromhex("22" * 16)


def submitted(name="f", job=JOB, parent=None, args=(), returns=None, node=NODE_A,
              kind="NORMAL_TASK", task_id=None):
    task_id = task_id or ids.new_id()
    info = {"name": name, "job_id": job, "type": kind, "parent_task_id": parent,
            "actor_id": None, "args": [list(arg) for arg in args],
            "returns": returns if returns is not None else [ids.object_id(task_id, 0)],
            "node_id": node}
    return task_id, info


def running(node=NODE_B, worker=WORKER_1, pid=4242):
    return {"node_id": node, "worker_id": worker, "pid": pid}


# ------------------------------------------------------------------ EventBuffer


def test_task_states_in_lifecycle_order():
    assert TASK_STATES == ("SUBMITTED", "PENDING_NODE_ASSIGNMENT", "RUNNING", "FINISHED", "FAILED")


def test_buffer_drains_in_order_and_empties():
    buf = EventBuffer()
    for i in range(5):
        buf.record(bytes([i]), SUBMITTED, float(i))
    assert len(buf) == 5
    assert buf.drain(2) == [(b"\x00", SUBMITTED, 0.0, None), (b"\x01", SUBMITTED, 1.0, None)]
    assert len(buf) == 3
    assert [event[0] for event in buf.drain()] == [b"\x02", b"\x03", b"\x04"]
    assert len(buf) == 0 and buf.drain() == []


def test_buffer_keeps_info():
    buf = EventBuffer()
    buf.record(b"t", FAILED, 1.5, {"error": "boom"})
    assert buf.drain() == [(b"t", FAILED, 1.5, {"error": "boom"})]


def test_buffer_is_bounded_and_counts_drops():
    buf = EventBuffer(limit=3)
    for i in range(10):
        buf.record(bytes([i]), SUBMITTED, float(i))
    assert len(buf) == 3 and buf.dropped == 7
    assert [event[0] for event in buf.drain()] == [b"\x00", b"\x01", b"\x02"]
    buf.record(b"x", RUNNING, 11.0)
    assert len(buf) == 1 and buf.dropped == 7      # room again after a drain; total kept


def test_disabled_buffer_records_nothing():
    buf = EventBuffer()
    buf.enabled = False
    buf.record(b"t", SUBMITTED, 1.0)
    assert len(buf) == 0 and buf.dropped == 0
    buf.enabled = True
    buf.record(b"t", SUBMITTED, 1.0)
    assert len(buf) == 1


def test_buffer_rejects_negative_limits():
    with pytest.raises(ValueError):
        EventBuffer(limit=-1)
    with pytest.raises(ValueError):
        EventBuffer().drain(-1)


# -------------------------------------------------------------------- TaskStore


def test_store_folds_a_task_across_nodes_in_any_order():
    task_id, info = submitted(args=[(b"\x07" * 20, 100)])
    result = ids.object_id(task_id, 0)
    events = [
        (task_id, FINISHED, 13.0, {"returns": [[result, 2048]]}),
        (task_id, RUNNING, 12.0, running()),
        (task_id, SUBMITTED, 10.0, info),
        (task_id, PENDING_NODE_ASSIGNMENT, 11.0, {"node_id": NODE_A}),
    ]
    store = TaskStore()
    for event in events:            # one at a time, as if from different nodes
        store.add_events([event])
    rec = store.get(task_id.hex())
    assert rec["state"] == FINISHED
    assert rec["name"] == "f" and rec["type"] == "NORMAL_TASK" and rec["job_id"] == JOB.hex()
    assert rec["node_id"] == NODE_B.hex()       # where it ran, not where it was submitted
    assert rec["worker_id"] == WORKER_1.hex() and rec["worker_pid"] == 4242
    assert rec["parent_task_id"] is None and rec["actor_id"] is None and rec["error"] is None
    assert rec["args"] == [{"object_id": (b"\x07" * 20).hex(), "size": 100}]
    assert rec["returns"] == [{"object_id": result.hex(), "size": 2048}]
    assert (rec["submitted_at"], rec["scheduled_at"], rec["started_at"], rec["finished_at"]) == (
        10.0, 11.0, 12.0, 13.0)
    assert [e["state"] for e in rec["events"]] == list(TASK_STATES[:4])
    json.dumps(rec)     # JSON-able as it stands


def test_store_state_never_goes_backwards():
    task_id, info = submitted()
    store = TaskStore()
    store.add_events([(task_id, RUNNING, 2.0, running())])
    assert store.get(task_id.hex())["state"] == RUNNING
    assert store.get(task_id.hex())["name"] is None         # missing until SUBMITTED arrives
    store.add_events([(task_id, SUBMITTED, 1.0, info), (task_id, PENDING_NODE_ASSIGNMENT, 1.5,
                                                        None)])
    rec = store.get(task_id.hex())
    assert rec["state"] == RUNNING and rec["name"] == "f"
    assert rec["node_id"] == NODE_B.hex()       # SUBMITTED's node does not displace RUNNING's


def test_store_submitted_node_stands_in_until_run():
    task_id, info = submitted(node=NODE_A)
    store = TaskStore()
    store.add_events([(task_id, SUBMITTED, 1.0, info)])
    assert store.get(task_id.hex())["node_id"] == NODE_A.hex()
    store.add_events([(task_id, RUNNING, 2.0, running(node=NODE_B))])
    assert store.get(task_id.hex())["node_id"] == NODE_B.hex()


def test_store_failed_is_terminal_with_its_error():
    task_id, info = submitted()
    store = TaskStore()
    store.add_events([(task_id, FAILED, 3.0, {"error": "ZeroDivisionError"}),
                      (task_id, RUNNING, 2.0, running()), (task_id, SUBMITTED, 1.0, info)])
    rec = store.get(task_id.hex())
    assert rec["state"] == FAILED and rec["error"] == "ZeroDivisionError"
    assert rec["finished_at"] == 3.0 and rec["started_at"] == 2.0


def test_store_later_terminal_event_wins():
    task_id, _ = submitted()
    store = TaskStore()
    store.add_events([(task_id, FINISHED, 5.0, None), (task_id, FAILED, 4.0, {"error": "x"})])
    assert store.get(task_id.hex())["state"] == FINISHED
    store.add_events([(task_id, FAILED, 6.0, {"error": "y"})])
    rec = store.get(task_id.hex())
    assert rec["state"] == FAILED and rec["finished_at"] == 6.0


def test_store_ignores_duplicates_and_malformed_events():
    task_id, info = submitted()
    store = TaskStore()
    store.add_events([(task_id, SUBMITTED, 1.0, info)] * 3)
    assert len(store.get(task_id.hex())["events"]) == 1
    store.add_events([(task_id, "EXPLODED", 2.0, None), ("not-bytes", RUNNING, 2.0, None),
                      (task_id, RUNNING), (task_id, RUNNING, 2.0, ["not", "a", "dict"])])
    assert store.stats()["ignored_events"] == 4
    assert store.get(task_id.hex())["state"] == SUBMITTED and len(store) == 1


def test_store_counts_dropped_events():
    store = TaskStore()
    store.add_events([], dropped=5)
    store.add_events([], dropped=2)
    assert store.stats()["dropped_events"] == 7


def test_store_filters_by_job_in_submission_order():
    store = TaskStore()
    tasks = []
    for i, job in enumerate([JOB, OTHER_JOB, JOB, JOB]):
        task_id, info = submitted(name=f"f{i}", job=job)
        tasks.append((task_id, SUBMITTED, 10.0 + i, info))
    # The last submitted arrives first: the order is by submission, not arrival.
    store.add_events([tasks[3], tasks[0], tasks[1], tasks[2]])
    assert [r["name"] for r in store.records()] == ["f0", "f1", "f2", "f3"]
    assert [r["name"] for r in store.records(job_id=JOB.hex())] == ["f0", "f2", "f3"]
    assert [r["name"] for r in store.records(job_id=OTHER_JOB.hex())] == ["f1"]
    assert store.records(job_id="03" * 16) == [] and store.records(job_id="zz") == []


def test_store_records_are_copies():
    task_id, info = submitted()
    store = TaskStore()
    store.add_events([(task_id, SUBMITTED, 1.0, info)])
    store.records()[0]["state"] = "TAMPERED"
    store.get(task_id.hex())["events"].clear()
    rec = store.get(task_id.hex())
    assert rec["state"] == SUBMITTED and len(rec["events"]) == 1
    assert store.get("nothex") is None and store.get("00" * 16) is None


def test_store_evicts_oldest_finished_first():
    store = TaskStore(limit=3)
    live, old_done, new_done = (ids.new_id() for _ in range(3))
    store.add_events([
        (live, RUNNING, 1.0, running()),            # oldest record, but still running
        (new_done, FINISHED, 9.0, None),
        (old_done, FINISHED, 5.0, None),            # arrived later, finished earlier
    ])
    assert len(store) == 3 and store.evicted == 0
    store.add_events([(ids.new_id(), SUBMITTED, 10.0, None)])
    assert store.get(old_done.hex()) is None
    assert store.get(live.hex()) is not None and store.get(new_done.hex()) is not None
    store.add_events([(ids.new_id(), SUBMITTED, 11.0, None)])
    assert store.get(new_done.hex()) is None and store.get(live.hex()) is not None
    assert store.stats() == {"tasks": 3, "limit": 3, "dropped_events": 0, "ignored_events": 0,
                             "evicted": 2}


def test_store_evicts_oldest_of_any_kind_when_none_finished():
    store = TaskStore(limit=2)
    first, second, third = (ids.new_id() for _ in range(3))
    store.add_events([(first, SUBMITTED, 1.0, None), (second, RUNNING, 2.0, running()),
                      (third, SUBMITTED, 3.0, None)])
    assert store.get(first.hex()) is None
    assert {r["task_id"] for r in store.records()} == {second.hex(), third.hex()}
    assert store.evicted == 1


def test_store_shares_repeated_values():
    store = TaskStore()
    for _ in range(2):
        task_id, info = submitted(job=bytes.fromhex("01" * 16))   # equal, not the same object
        store.add_events([(task_id, SUBMITTED, 1.0, info)])
    first, second = store._tasks.values()
    assert first.job_id is second.job_id


# ------------------------------------------------------------------------ trace


def trace_records():
    def rec(task, node, worker, pid, start, end, state=FINISHED, error=None):
        return {"task_id": task, "name": f"task_{task}", "type": "NORMAL_TASK", "state": state,
                "node_id": node, "worker_id": worker, "worker_pid": pid,
                "args": [{"object_id": "ab", "size": 10}, {"object_id": "cd", "size": 5}],
                "started_at": start, "finished_at": end, "error": error}
    return [
        rec("t1", "aaaaaaaa11", "w1", 101, 100.0, 100.5),
        rec("t2", "aaaaaaaa11", "w2", 102, 100.25, 101.0),
        rec("t3", "bbbbbbbb22", "w3", 201, 100.0, None, state=RUNNING),
        rec("t4", "aaaaaaaa11", "w1", 101, 101.0, 102.0, state=FAILED, error="boom"),
        {"task_id": "t5", "name": "waiting", "state": SUBMITTED, "started_at": None},
    ]


def test_chrome_trace_is_json_with_one_complete_event_per_started_task():
    events = json.loads(json.dumps(trace.chrome_trace(trace_records(), now=103.0)))
    spans = {e["args"]["task_id"]: e for e in events if e["ph"] == "X"}
    assert set(spans) == {"t1", "t2", "t3", "t4"}
    assert spans["t1"]["ts"] == pytest.approx(100_000_000.0)
    assert spans["t1"]["dur"] == pytest.approx(500_000.0)
    assert spans["t2"]["dur"] == pytest.approx(750_000.0)
    assert spans["t3"]["dur"] == pytest.approx(3_000_000.0)      # still running: ends at now
    assert spans["t1"]["name"] == "task_t1" and spans["t1"]["cat"] == "NORMAL_TASK"
    assert spans["t1"]["args"] == {"task_id": "t1", "node_id": "aaaaaaaa11", "worker_pid": 101,
                                   "state": FINISHED, "args_size": 15, "error": None}
    assert spans["t4"]["cname"] == "terrible" and spans["t4"]["args"]["error"] == "boom"
    assert "cname" not in spans["t1"]


def test_chrome_trace_one_process_per_node_one_thread_per_worker():
    events = trace.chrome_trace(trace_records(), now=103.0)
    spans = {e["args"]["task_id"]: e for e in events if e["ph"] == "X"}
    assert spans["t1"]["pid"] == spans["t2"]["pid"] == spans["t4"]["pid"] != spans["t3"]["pid"]
    assert spans["t1"]["tid"] == spans["t4"]["tid"] != spans["t2"]["tid"]
    meta = [e for e in events if e["ph"] == "M"]
    processes = {e["pid"]: e["args"]["name"] for e in meta if e["name"] == "process_name"}
    assert processes == {spans["t1"]["pid"]: "node aaaaaaaa", spans["t3"]["pid"]: "node bbbbbbbb"}
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in meta if e["name"] == "thread_name"}
    assert threads == {(1, 1): "worker 101", (1, 2): "worker 102", (2, 1): "worker 201"}
    assert events.index(meta[-1]) < min(events.index(span) for span in spans.values())


def test_write_trace(tmp_path):
    path = trace.write_trace(trace_records(), str(tmp_path / "timeline.json"), now=103.0)
    with open(path) as f:
        assert sum(e["ph"] == "X" for e in json.load(f)) == 4


# ------------------------------------------------------------------------ graph


def run_tasks(store, calls):
    """Submit and finish ``calls`` [(name, [arg object IDs])] from the driver; their task IDs."""
    task_ids = []
    for name, args in calls:
        task_id, info = submitted(name=name, args=[(arg, 8) for arg in args])
        store.add_events([(task_id, SUBMITTED, 1.0, info), (task_id, RUNNING, 2.0, running()),
                          (task_id, FINISHED, 3.0, {"returns": [[ids.object_id(task_id, 0), 80]]})])
        task_ids.append(task_id)
    return task_ids


def test_graph_of_ten_tasks_from_the_driver():
    store = TaskStore()
    task_ids = run_tasks(store, [("f", [])] * 10)
    model = graph.graph_model(store.records())
    boxes = [n for n in model["nodes"] if n["shape"] == "box"]
    ovals = [n for n in model["nodes"] if n["shape"] == "ellipse"]
    assert len(boxes) == 11 and len(ovals) == 10
    assert {"id": "op-root", "label": "op-root", "shape": "box", "state": None} in boxes
    expected = set()
    for task_id in task_ids:
        task, obj = f"t_{task_id.hex()}", f"o_{ids.object_id(task_id, 0).hex()}"
        expected |= {("op-root", task, "dashed"), (task, obj, "solid")}
    assert {(e["from"], e["to"], e["style"]) for e in model["edges"]} == expected
    assert len(model["edges"]) == 20
    assert all(n["label"] == "f" and n["state"] == FINISHED for n in boxes if n["id"] != "op-root")
    assert len({n["label"] for n in ovals}) == 10       # one driver's IDs still tell apart
    assert all(n["label"].startswith("obj ") and n["label"].endswith(" (80 B)") for n in ovals)


def test_graph_of_zeros_zeros_dot():
    store = TaskStore()
    zeros_a, zeros_b = run_tasks(store, [("zeros", []), ("zeros", [])])
    a, b = ids.object_id(zeros_a, 0), ids.object_id(zeros_b, 0)
    (dot,) = run_tasks(store, [("dot", [a, b])])
    c = ids.object_id(dot, 0)
    model = graph.graph_model(store.records())
    edges = {(e["from"], e["to"], e["style"]) for e in model["edges"]}
    t, o = (lambda x: f"t_{x.hex()}"), (lambda x: f"o_{x.hex()}")
    assert edges == {
        ("op-root", t(zeros_a), "dashed"), ("op-root", t(zeros_b), "dashed"),
        ("op-root", t(dot), "dashed"),
        (t(zeros_a), o(a), "solid"), (t(zeros_b), o(b), "solid"),
        (o(a), t(dot), "solid"), (o(b), t(dot), "solid"),
        (t(dot), o(c), "solid"),
    }
    assert len(model["edges"]) == len(edges)
    assert sorted(n["label"] for n in model["nodes"] if n["shape"] == "box") == [
        "dot", "op-root", "zeros", "zeros"]
    dot_text = graph.to_dot(model)
    assert dot_text.startswith("digraph ") and dot_text.rstrip().endswith("}")
    for src, dst, style in edges:
        assert f'"{src}" -> "{dst}" [style={style}];' in dot_text
    assert f'"{t(dot)}" [label="dot", shape=box' in dot_text
    assert f'"{o(c)}" [label="obj ' in dot_text and "shape=ellipse" in dot_text


def test_graph_nested_tasks_hang_off_their_parent():
    store = TaskStore()
    (outer,) = run_tasks(store, [("outer", [])])
    inner, info = submitted(name="inner", parent=outer)
    orphan, orphan_info = submitted(name="orphan", parent=ids.new_id())
    store.add_events([(inner, SUBMITTED, 1.5, info), (orphan, SUBMITTED, 1.6, orphan_info),
                      (ids.new_id(), RUNNING, 2.0, running())])    # SUBMITTED not seen yet
    model = graph.graph_model(store.records())
    dashed = {(e["from"], e["to"]) for e in model["edges"] if e["style"] == "dashed"}
    parent = f"t_{orphan_info['parent_task_id'].hex()}"
    assert dashed == {("op-root", f"t_{outer.hex()}"), (f"t_{outer.hex()}", f"t_{inner.hex()}"),
                      (parent, f"t_{orphan.hex()}")}
    assert parent in {n["id"] for n in model["nodes"]}      # no edge left dangling


def test_dot_escapes_labels():
    model = {"nodes": [{"id": "t_1", "label": 'say "hi"\\n\nnow', "shape": "box",
                        "state": FAILED}], "edges": []}
    text = graph.to_dot(model)
    assert '"t_1" [label="say \\"hi\\"\\\\n\\nnow", shape=box, style=filled' in text
    assert "\nnow" not in text


def test_render_without_graphviz_returns_none(monkeypatch, tmp_path):
    monkeypatch.setattr(graph.shutil, "which", lambda name: None)
    assert graph.render("digraph g {}", str(tmp_path / "g")) is None
    with pytest.raises(ValueError):
        graph.render("digraph g {}", str(tmp_path / "g"), fmt="svg -o /etc/x")


def test_render_runs_dot_when_present(monkeypatch, tmp_path):
    calls = []

    class Done:
        returncode, stderr = 0, b""

    monkeypatch.setattr(graph.shutil, "which", lambda name: "/usr/bin/dot")
    monkeypatch.setattr(graph.subprocess, "run", lambda argv, **kw: calls.append((argv, kw))
                        or Done())
    path = graph.render("digraph g {}", str(tmp_path / "g"), fmt="png")
    assert path == str(tmp_path / "g.png")
    assert calls[0][0] == ["/usr/bin/dot", "-Tpng", "-o", path]
    assert calls[0][1]["input"] == b"digraph g {}"


# ----------------------------------------------------------------------- tables


ROWS = [
    {"task_id": "t1", "name": "f", "state": "FINISHED", "type": "NORMAL_TASK", "pid": 7},
    {"task_id": "t2", "name": "f", "state": "FAILED", "type": "NORMAL_TASK", "pid": 8},
    {"task_id": "t3", "name": "g", "state": "RUNNING", "type": "ACTOR_TASK", "pid": 7},
]


def ids_of(rows):
    return [row["task_id"] for row in rows]


def test_filters_equal_and_not_equal():
    assert ids_of(tables.apply_filters(ROWS, [("name", "=", "f")])) == ["t1", "t2"]
    assert ids_of(tables.apply_filters(ROWS, [("name", "!=", "f")])) == ["t3"]
    assert ids_of(tables.apply_filters(ROWS, [("name", "=", "f"), ("state", "!=", "FAILED")])) == [
        "t1"]
    assert ids_of(tables.apply_filters(ROWS, [("pid", "=", "7")])) == ["t1", "t3"]
    assert tables.apply_filters(ROWS, None) == ROWS and tables.apply_filters(ROWS, []) == ROWS


def test_filters_on_states_ignore_case_and_others_do_not():
    assert ids_of(tables.apply_filters(ROWS, [("state", "=", "failed")])) == ["t2"]
    assert ids_of(tables.apply_filters(ROWS, [("state", "!=", "Failed")])) == ["t1", "t3"]
    assert tables.apply_filters(ROWS, [("name", "=", "F")]) == []


def test_filter_errors_name_the_problem():
    with pytest.raises(ValueError, match="'colour'.*name, pid, state, task_id, type"):
        tables.apply_filters(ROWS, [("colour", "=", "red")])
    with pytest.raises(ValueError, match="predicate '>'"):
        tables.apply_filters(ROWS, [("pid", ">", "7")])
    with pytest.raises(ValueError, match="'colour'"):
        tables.apply_filters([], [("colour", "=", "red")], valid_keys=["state"])


def test_parse_filter():
    assert tables.parse_filter("state=FAILED") == ("state", "=", "FAILED")
    assert tables.parse_filter(" name != f ") == ("name", "!=", "f")
    assert tables.parse_filter("expr=a=b") == ("expr", "=", "a=b")
    for bad in ("state", "=x", ""):
        with pytest.raises(ValueError):
            tables.parse_filter(bad)


def test_limit_rows():
    assert ids_of(tables.limit_rows(ROWS, 2)) == ["t1", "t2"]
    assert tables.limit_rows(ROWS, None) == ROWS and tables.limit_rows(ROWS, 0) == []
    with pytest.raises(ValueError):
        tables.limit_rows(ROWS, -1)


def test_summarize_tasks():
    summary = tables.summarize_tasks(ROWS + [dict(ROWS[0], task_id="t4")])
    assert summary["total_tasks"] == 4 and summary["total_actor_tasks"] == 1
    assert summary["summary"]["f"]["state_counts"] == {"FINISHED": 2, "FAILED": 1}
    assert summary["summary"]["f"]["type"] == "NORMAL_TASK"
    assert summary["summary"]["g"]["state_counts"] == {"RUNNING": 1}
    assert summary["state_counts"] == {"FINISHED": 2, "FAILED": 1, "RUNNING": 1}


def test_summarize_actors():
    rows = [{"class_name": "Counter", "state": "ALIVE"}, {"class_name": "Counter", "state": "DEAD"},
            {"class_name": "Counter", "state": "ALIVE"}, {"class_name": "Queue", "state": "ALIVE"}]
    summary = tables.summarize_actors(rows)
    assert summary["total_actors"] == 4
    assert summary["summary"]["Counter"]["state_counts"] == {"ALIVE": 2, "DEAD": 1}
    assert summary["summary"]["Queue"]["state_counts"] == {"ALIVE": 1}


def test_summarize_objects():
    rows = [{"object_id": "a", "object_size": 100, "node_id": "n1"},
            {"object_id": "b", "object_size": 50, "node_id": "n1", "spilled": True},
            {"object_id": "c", "size": 7, "node_id": "n2", "state": "spilled"},
            {"object_id": "d", "object_size": None, "node_id": "n2"}]
    summary = tables.summarize_objects(rows)
    assert summary["total_objects"] == 4 and summary["total_size"] == 157
    assert summary["by_node"] == {"n1": {"count": 2, "size": 150}, "n2": {"count": 2, "size": 7}}
    assert summary["spilled"] == {"count": 2, "size": 57}


def test_format_size():
    assert tables.format_size(0) == "0 B"
    assert tables.format_size(1023) == "1023 B"
    assert tables.format_size(1024) == "1.0 KiB"
    assert tables.format_size(int(1.5 * 1024 * 1024)) == "1.5 MiB"
    assert tables.format_size(3 * 1024 ** 3) == "3.0 GiB"
    assert tables.format_size(1024 * 1024 - 1) == "1.0 MiB"     # not "1024.0 KiB"
    assert tables.format_size(5 * 1024 ** 6) == "5120.0 PiB"


def test_format_table_aligns_columns_and_truncates():
    rows = [{"name": "f", "state": "FINISHED", "pid": 7},
            {"name": "x" * 100, "state": None, "pid": 12345}]
    lines = tables.format_table(rows).splitlines()
    assert lines[0].split() == ["NAME", "STATE", "PID"]
    assert len(lines) == 3
    assert lines[0].index("STATE") == lines[1].index("FINISHED")    # columns line up
    assert lines[0].index("PID") == lines[1].index("7") == lines[2].index("12345")
    long_cell = lines[2].split()[0]
    assert long_cell.endswith("…") and len(long_cell) == tables.MAX_CELL_WIDTH


def test_format_table_picks_columns():
    text = tables.format_table(ROWS, columns=["task_id", "state"])
    assert text.splitlines() == ["TASK_ID  STATE", "t1       FINISHED", "t2       FAILED",
                                 "t3       RUNNING"]
    assert tables.format_table([]) == ""
    assert tables.format_table([], columns=["a"]) == "A"


# ------------------------------------------------------------------ packed events


def test_packed_buffer_packs_in_order_and_bounds_itself():
    from zray._private.observe.events import PackedEventBuffer, unpack_events

    buffer = PackedEventBuffer(limit=3)
    for i in range(5):
        buffer.record((b"t%d" % i, 0, float(i), "f", None))
    assert len(buffer) == 3 and buffer.dropped == 2
    data, count = buffer.drain()
    assert count == 3 and len(buffer) == 0
    assert [e[0] for e in unpack_events(data)] == [b"t0", b"t1", b"t2"]
    assert buffer.drain() == (b"", 0)
    assert not PackedEventBuffer(limit=0).enabled


def test_the_heads_store_folds_packed_events_only_when_read():
    from zray._private.head_state import ClusterState
    from zray._private.ids import object_id
    from zray._private.observe.events import PackedEventBuffer

    node, task, worker = b"n" * 16, b"t" * 16, b"w" * 16
    buffer = PackedEventBuffer()
    buffer.record((task, 0, 1.0, "f", b"j" * 16, 0, None, None, ((b"o" * 20, 7),), 1))
    buffer.record((task, 2, 2.0, worker, 42))
    buffer.record((task, 3, 3.0, (5,)))
    buffer.record((b"x" * 16, 9, 1.0))           # an unknown state: ignored
    state = ClusterState(lambda: [], limit=10)
    data, count = buffer.drain()
    state.add_events({"node_id": node, "count": count}, [data])
    assert len(state.tasks) == 0 and state.pending_count == 4   # not folded yet
    (record,) = state.rows("tasks", {"detail": True})
    assert record["state"] == "FINISHED" and record["worker_pid"] == 42
    assert record["args"] == [{"object_id": (b"o" * 20).hex(), "size": 7}]
    assert record["returns"] == [{"object_id": object_id(task, 0).hex(), "size": 5}]
    assert state.stats()["ignored_events"] == 1


def test_the_heads_store_drops_the_oldest_batches_past_its_limit():
    from zray._private.head_state import ClusterState
    from zray._private.observe.events import PackedEventBuffer

    state = ClusterState(lambda: [], limit=2)   # at most 6 events waiting
    for batch in range(4):
        buffer = PackedEventBuffer()
        for i in range(3):
            buffer.record((bytes([batch, i]) * 8, 0, 1.0, "f", b"j" * 16, 0, None, None,
                           None, 1))
        data, count = buffer.drain()
        state.add_events({"node_id": b"n" * 16, "count": count}, [data])
    assert state.pending_count == 6 and state.stats()["dropped_events"] == 6


def test_an_end_carries_its_start_when_no_running_event_went_out():
    from zray._private.head_state import ClusterState
    from zray._private.observe.events import PackedEventBuffer

    buffer = PackedEventBuffer()
    task = b"t" * 16
    buffer.record((task, 0, 1.0, "f", b"j" * 16, 0, None, None, None, 1))
    buffer.record((task, 4, 3.0, "ValueError: no", 2.0, b"w" * 16, 7))
    state = ClusterState(lambda: [], limit=10)
    data, count = buffer.drain()
    state.add_events({"node_id": b"n" * 16, "count": count}, [data])
    (record,) = state.rows("tasks", {"detail": True})
    assert record["state"] == "FAILED" and record["error"] == "ValueError: no"
    assert record["started_at"] == 2.0 and record["worker_pid"] == 7
    assert record["node_id"] == (b"n" * 16).hex()


def test_state_queries_during_a_collection_join_it_instead_of_starting_another():
    from zray._private.head_state import ClusterState

    state = ClusterState(lambda: [], limit=10)
    nodes = {b"a" * 16, b"b" * 16}
    first = state.start_collect(b"asker-1", {"req": 1}, nodes, now=0.0)
    assert first and state.start_collect(b"asker-2", {"req": 2}, nodes, now=0.1) == 0
    assert state.add_events({"node_id": b"a" * 16, "collect": first}) is None
    done = state.add_events({"node_id": b"b" * 16, "collect": first})
    assert [ident for ident, _ in done.askers] == [b"asker-1", b"asker-2"]
    assert state.start_collect(b"asker-3", {"req": 3}, nodes, now=1.0) > first   # a new round
