"""The validation layer alone: no processes.

Well-formed messages are made by the real code paths (a node agent's parts
and a head with their sockets replaced by lists) and must all pass; each kind
of malformation must be refused with a message naming the op and the field.
"""

from __future__ import annotations

import logging
import os
import sys
import time

import pytest

from agent_parts import add_worker, make_agent
from zray import exceptions
from zray._private import ids, protocol, ratelog, security, serialization, validate
from zray._private.head import Head
from zray._private.protocol import ObjectKind, Op
from zray._private.worker_main import Worker

pytestmark = pytest.mark.timeout(60)

JOB = ids.new_id()
FID = ids.new_id()
DRIVER = b"d" * 16   # says HELLO through Agent.handle, with a real job ID


class _frame:
    """What a ROUTER hands its owner: frames with ``bytes`` and ``buffer``."""

    def __init__(self, data: bytes) -> None:
        self.bytes = data
        self.buffer = memoryview(data)


def wire_form(op: Op, body: dict, raw=()) -> tuple:
    """``(op, body, raw)`` as a receiver decodes it (msgpack turns enums into ints...)."""
    header, *frames = protocol.encode(op, body, *raw)
    return protocol.decode([header, *frames])


def refusal(op: Op, body: dict, raw=()) -> str:
    """The refusal of a message, as it would arrive."""
    op, body, raw = wire_form(op, body, raw)
    with pytest.raises(protocol.ProtocolError) as info:
        validate.check(op, body, raw)
    return str(info.value)


def oid() -> bytes:
    return ids.object_id(ids.new_id(), 0)


def spec(args=None, **extra) -> dict:
    return protocol.task_spec(task_id=ids.new_id(), job_id=JOB, name="f", function_id=FID,
                              args=args or {"args": b"xy", "args_layout": [[0, 2]]}, **extra)


# ---------------------------------------------------------------------- real traffic passes
def to_agent(agent, ident: bytes, op: Op, body: dict, *raw: bytes) -> None:
    header, *frames = protocol.encode(op, body, *raw)
    agent.handle([_frame(ident), _frame(header), *frames])


def agent_traffic(agent) -> None:
    """A driver and a worker talk to ``agent`` through ``Agent.handle``, as over the wire."""
    agent.head.start(time.monotonic())
    agent.head.tick(time.monotonic())
    to_agent(agent, DRIVER, Op.HELLO, {"kind": "driver", "pid": os.getpid(), "job_id": JOB})
    wid = add_worker(agent, os.getpid())
    ser = serialization.serialize({"a": list(range(10))})
    put_id, shared_id, aborted = oid(), oid(), oid()
    to_agent(agent, DRIVER, Op.EXPORT, {"function_id": FID, "name": "f",
                                        "sys_path": [p for p in sys.path if p]}, b"pickled")
    to_agent(agent, DRIVER, Op.PUT, {"objects": [[put_id, ser.layout, ser.contained]]},
             ser.to_bytes())
    to_agent(agent, DRIVER, Op.ALLOC, {"req": 1, "object_id": shared_id, "size": ser.size})
    to_agent(agent, DRIVER, Op.SEAL, {"object_id": shared_id, "offset": 0, "size": ser.size,
                                      "layout": ser.layout, "contained": ser.contained})
    to_agent(agent, DRIVER, Op.ALLOC, {"req": 2, "object_id": aborted, "size": 64})
    to_agent(agent, DRIVER, Op.ABORT, {"object_id": aborted})
    to_agent(agent, DRIVER, Op.PIN, {"req": 3, "object_id": shared_id})
    to_agent(agent, DRIVER, Op.UNPIN, {"object_ids": [shared_id]})
    to_agent(agent, DRIVER, Op.FETCH, {"object_ids": [put_id, shared_id], "pin": True})
    to_agent(agent, DRIVER, Op.ADDREF, {"object_ids": [put_id]})
    actor_id = ids.new_id()
    specs = [spec(), spec(args={"deps": [put_id], "contained": [shared_id]}),
             spec(resources={"special": 1.0}),                      # forwarded to the head
             spec(scheduling_strategy=["SPREAD"], max_retries=-1),  # so is this one
             spec(resources={}, actor_id=actor_id, new_actor=True, max_restarts=-1,
                  max_concurrency=1, class_name="A", namespace="ns", detached=False),
             protocol.task_spec(task_id=ids.new_id(), job_id=JOB, name="A.m", resources={},
                                actor_id=actor_id, method="m", namespace="ns",
                                concurrency_group="io", generator="streaming")]
    to_agent(agent, DRIVER, Op.SUBMIT, {"tasks": specs})
    agent.dispatch()
    agent.wire.flush_outgoing()
    executed = [item["task"] for ident, op, body, raw in agent.wire.sent
                if op == Op.EXECUTE and ident == wid
                for item, _ in protocol.unpack_batch(body, list(raw))]
    assert executed, "the worker was given nothing to run"
    running = executed[0]
    returns = protocol.returns_of(running)
    inline = {"object_id": returns[0], "kind": ObjectKind.INLINE, "layout": [[0, 2]],
              "frame": 0}
    results, frames = Worker.error_results(returns, serialization.system_error(
        exceptions.ZrayError("boom")))
    done, raw = protocol.pack_batch([
        ({"task_id": running["task_id"], "results": [inline], "error": "",
          "run_seconds": 0.0001}, [b"ok"]),
        ({"task_id": ids.new_id(), "results": results, "error": "ZrayError: boom",
          "retryable": True}, frames)])
    to_agent(agent, wid, Op.TASK_DONE, done, *raw)
    to_agent(agent, wid, Op.YIELDED, {"task_id": running["task_id"], "results": [inline]},
             b"it")
    to_agent(agent, wid, Op.BLOCKED, {})
    to_agent(agent, wid, Op.UNBLOCKED, {})
    to_agent(agent, wid, Op.LOG, {"job_id": JOB, "name": "f", "pid": 7, "stderr": False,
                                  "lines": ["hello"]})
    for what in ("resources", "nodes", "errors", "scheduler", "store", "head"):
        to_agent(agent, DRIVER, Op.QUERY, {"req": 10, "what": what})
    to_agent(agent, DRIVER, Op.QUERY, {"req": 11, "what": "state", "kind": "tasks",
                                       "filters": [["state", "=", "FAILED"]], "limit": 10,
                                       "detail": False, "job": JOB.hex()})
    to_agent(agent, DRIVER, Op.RESERVE_NAME, {
        "req": 12, "namespace": "ns", "name": "counter", "actor_id": actor_id,
        "anchor": ids.object_id(specs[4]["task_id"], 0), "meta": {"class_name": "A"},
        "get_if_exists": False})
    to_agent(agent, DRIVER, Op.CANCEL, {"task_id": specs[1]["task_id"], "force": False})
    to_agent(agent, DRIVER, Op.KILL, {"actor_id": ids.new_id(), "no_restart": True})
    to_agent(agent, DRIVER, Op.DECREF, {"object_ids": [put_id]})
    agent.recorder.send(collect=1)
    to_agent(agent, DRIVER, Op.BYE, {})
    agent.wire.flush_outgoing()


@pytest.fixture
def agent(tmp_path):
    agent = make_agent(tmp_path, token=security.new_token())
    yield agent
    agent.workers.template.close()


def test_what_clients_send_passes_and_what_the_agent_sends_is_well_formed(agent):
    agent_traffic(agent)
    errors = [body for _, op, body, _ in agent.wire.sent if op == Op.ERROR]
    assert errors == []
    seen = set()
    for _, op, body, raw in agent.wire.sent:
        validate.check(*wire_form(op, body, raw))
        seen.add(op)
    for op, body, raw in agent.wire.to_head:
        validate.check(*wire_form(op, body, raw))
        seen.add(op)
    assert {Op.WELCOME, Op.EXECUTE, Op.OBJECT, Op.ALLOC_REPLY, Op.PIN_REPLY, Op.QUERY_REPLY,
            Op.REGISTER, Op.HEARTBEAT, Op.FORWARD, Op.HEAD_QUERY, Op.EVENTS, Op.KILL_ACTOR,
            Op.JOB_ENDED} <= seen


class Captured:
    """A head's sockets, replaced by a list of what it sent: ``(ident, op, body, raw)``."""

    def __init__(self, head: Head) -> None:
        self.sent: list = []
        head.reply = lambda ident, op, body, *raw: self.sent.append((ident, op, body, raw)) \
            or True
        head.pub = self

    def send_multipart(self, frames) -> None:
        op, body, raw = protocol.decode(frames[1:])
        self.sent.append((b"PUB", op, body, raw))


def to_head(head: Head, ident: bytes, op: Op, body: dict, raw=()) -> None:
    header, *frames = protocol.encode(op, body, *raw)
    head.handle([_frame(ident), _frame(header), *frames])


def test_what_agents_send_passes_at_the_head_and_what_it_answers_is_well_formed(agent):
    agent_traffic(agent)
    head = Head(["ipc:///nowhere"], "ipc:///nowhere-pub")
    captured = Captured(head)
    node = agent.node_id
    other = ids.new_id()
    to_head(head, other, Op.REGISTER, dict(agent.node_info(), node_id=other,
                                           resources={"CPU": 2.0, "special": 1.0}))
    for op, body, raw in agent.wire.to_head:
        to_head(head, node, op, body, raw)
    to_head(head, node, Op.HEARTBEAT, agent.load_info())
    to_head(head, node, Op.HEARTBEAT, dict(agent.load_info(), node_id=ids.new_id()))
    forwarded = [body for _, op, body, _ in captured.sent if op == Op.FORWARD]
    assert forwarded, "the head placed nothing"
    task = forwarded[0]["task"]
    to_head(head, other, Op.RESULT, {
        "task_id": task["task_id"], "origin": node, "node_id": other, "error": "",
        "results": [{"object_id": protocol.returns_of(task)[0], "kind": ObjectKind.SHARED,
                     "layout": [[0, 10]], "size": 4096, "contained": []}]})
    to_head(head, other, Op.OBJECTS_FREED, {"node_id": other, "object_ids": [oid()]})
    to_head(head, other, Op.LOG, {"job_id": JOB, "name": "f", "pid": 3, "stderr": True,
                                  "lines": ["x"], "to_node": node})
    for req, what in enumerate(("nodes", "status", "snapshot", "named_actors", "actor")):
        to_head(head, node, Op.HEAD_QUERY, {"req": req + 1, "what": what, "name": "counter",
                                            "namespace": "ns"})
    to_head(head, node, Op.HEAD_QUERY, {"req": 9, "what": "state", "kind": "nodes"})
    agent.recorder.send(collect=max(head.state.collects, default=0))
    op, body, raw = agent.wire.to_head[-1]
    to_head(head, node, op, body, raw)
    errors = [body for _, op, body, _ in captured.sent if body.get("error")]
    assert errors == []
    seen = set()
    for _, op, body, raw in captured.sent:
        validate.check(*wire_form(op, body, raw))
        seen.add(op)
    assert {Op.REGISTERED, Op.HEARTBEAT_ACK, Op.HEAD_REPLY, Op.FORWARD, Op.RESULT, Op.LOG,
            Op.COLLECT, Op.PUB_NODE, Op.PUB_OBJECT} <= seen


def test_the_ops_no_scenario_sends_have_well_formed_examples_too():
    tid = ids.new_id()
    for op, body, raw in [
            (Op.INTERRUPT, {"task_id": tid}, ()),
            (Op.WARN, {"message": "careful"}, ()),
            (Op.ERROR, protocol.error_body(4, ValueError("no")), ()),
            (Op.PULL, {"object_id": oid(), "offset": 0, "length": protocol.CHUNK_BYTES}, ()),
            (Op.CHUNK, {"object_id": oid(), "kind": 1, "layout": [[0, 3]], "size": 3,
                        "offset": 0}, (b"abc",)),
            (Op.CHUNK, {"object_id": oid(), "error": "not on this node"}, (b"",)),
            (Op.TASK_FAILED, {"task_id": tid, "error_type": "NodeDiedError", "message": "m"}, ()),
            (Op.TASK_UNPLACEABLE, {"task_id": tid, "message": "m"}, ()),
            (Op.PUB_NODE, {"seq": 1, "event": "died", "node_id": ids.new_id()}, ()),
            (Op.PUB_OBJECT, {"seq": 2, "node_id": ids.new_id(), "freed": [oid()]}, ()),
            (Op.REBUILD, {"object_id": oid(), "node_id": tid, "unreachable": [tid]}, ()),
            (Op.REBUILT, {"object_id": oid(), "node_id": tid, "holders": [], "message": "m",
                          "error_type": "OwnerDiedError"}, ())]:
        validate.check(*wire_form(op, body, raw))


def test_every_declared_op_has_a_check_and_every_field_a_rule():
    assert set(validate.CHECKS) == set(protocol.BODIES)
    assert validate.UNCHECKED == []


# ---------------------------------------------------------------------- malformations
@pytest.mark.parametrize("op, body, raw, expected", [
    (Op.SUBMIT, {"tasks": [spec(), {k: v for k, v in spec().items() if k != "function_id"}]},
     (), "SUBMIT: tasks[1].function_id: missing"),
    (Op.SUBMIT, {"tasks": [dict(spec(), function_id=5)]}, (),
     "SUBMIT: tasks[0].function_id: expected bytes, got int"),
    (Op.SUBMIT, {"tasks": [dict(spec(), task_id=b"short")]}, (),
     "SUBMIT: tasks[0].task_id: expected 16 bytes, got 5"),
    (Op.SUBMIT, {"tasks": [spec(num_returns=10**6)]}, (), "tasks[0].num_returns: 1000000 is "
     "outside [0, 10000]"),
    (Op.SUBMIT, {"tasks": [spec(resources={"CPU": -1})]}, (), "tasks[0].resources.CPU"),
    (Op.SUBMIT, {"tasks": [spec(resources={"CPU": "x"})]}, (), "tasks[0].resources.CPU"),
    (Op.SUBMIT, {"tasks": [spec(resources={"CPU": float("nan")})]}, (), "resources.CPU"),
    (Op.SUBMIT, {"tasks": [spec(scheduling_strategy=["NODE"])]}, (),
     "tasks[0].scheduling_strategy: expected"),
    (Op.SUBMIT, {"tasks": [spec(new_actor=True)]}, (), "tasks[0].actor_id: missing"),
    (Op.SUBMIT, {"tasks": [dict(spec(), args_layout=[[0]])]}, (), "tasks[0].args_layout[0]"),
    (Op.SUBMIT, {"tasks": [dict(spec(), deps=[oid(), b"x" * 16])]}, (),
     "tasks[0].deps[1]: expected 20 bytes, got 16"),
    (Op.SUBMIT, {"tasks": [5]}, (), "SUBMIT: tasks[0]: expected a map, got int"),
    (Op.SUBMIT, {"tasks": {"a": 1}}, (), "SUBMIT: tasks: expected a list, got a map"),
    (Op.SUBMIT, {}, (), "SUBMIT: tasks: missing"),
    (Op.SUBMIT, {"tasks": []}, (b"extra",), "SUBMIT: came with 1 frames; it takes 0"),
    (Op.HELLO, {"kind": "driver", "pid": 1, "job_id": JOB}, (b"",) * 5, "came with 5 frames"),
    (Op.EXPORT, {"function_id": FID, "name": "f", "sys_path": []}, (), "came with 0 frames"),
    (Op.TASK_DONE, {"task_id": ids.new_id(), "results": [{"object_id": oid(), "kind": 0,
                                                          "layout": [], "frame": 3}]},
     (b"x",), "TASK_DONE: results[0].frame: names frame 3, but 1 came"),
    (Op.TASK_DONE, {"task_id": ids.new_id(), "results": [{"object_id": oid(), "kind": 1,
                                                          "layout": [], "size": 8}]},
     (), "TASK_DONE: results[0].offset: missing"),
    (Op.TASK_DONE, {"task_id": ids.new_id(), "results": [{"object_id": oid(), "kind": 0,
                                                          "layout": []}]},
     (), "TASK_DONE: results[0].frame: missing"),
    (Op.TASK_DONE, {"task_id": ids.new_id(), "results": [{"object_id": oid(), "kind": 7,
                                                          "layout": [], "frame": 0}]},
     (b"x",), "results[0].kind: 7 is outside [0, 2]"),
    (Op.TASK_DONE, {"batch": [[{"task_id": ids.new_id(), "results": []}, 10**9]]}, (),
     "TASK_DONE: batch: a batch counts"),
    (Op.TASK_DONE, {"batch": [[{"task_id": ids.new_id(), "results": []}, 0],
                              [{"task_id": 5, "results": []}, 0]]}, (),
     "TASK_DONE: batch[1].task_id: expected bytes, got int"),
    (Op.TASK_DONE, {"batch": "lots"}, (), "TASK_DONE: batch: a batch entry"),
    (Op.PUT, {"objects": [[oid(), [[0, 1]], []]]}, (), "PUT: 1 objects came with 0 frames"),
    (Op.PUT, {"objects": [[oid(), [[0, 1]]]]}, (b"x",), "PUT: objects[0]: expected 3 entries"),
    (Op.PUT, {"objects": [[oid(), [[0, -1]], []]]}, (b"x",), "PUT: objects[0][1][0]"),
    (Op.ALLOC, {"req": 1, "object_id": oid(), "size": -5}, (), "ALLOC: size: -5 is outside"),
    (Op.FETCH, {"object_ids": [oid()] * (validate.MAX_ITEMS + 1)}, (),
     "FETCH: object_ids: 1000001 entries, more than 1000000"),
    (Op.FETCH, {"pin": True}, (), "FETCH: object_ids: missing"),
    (Op.QUERY, {"req": 1, "what": "state", "limit": "all"}, (),
     "QUERY: limit: expected int, got str"),
    (Op.QUERY, {"req": 1, "what": "state", "filters": [["state", "="]]}, (), "QUERY: filters[0]"),
    (Op.REGISTER, {"node_id": "not bytes", "ip": "h", "address": "a", "resources": {},
                   "store_capacity": 0, "pid": 1, "transfer_address": "", "hostname": "h"}, (),
     "REGISTER: node_id: expected bytes, got str"),
    (Op.REGISTER, {"node_id": ids.new_id()}, (), "REGISTER: address: missing"),
    (Op.HEARTBEAT, {"node_id": ids.new_id(), "available": {"CPU": "lots"}, "store_used": 0,
                    "queued": 0, "running": 0, "workers": 0, "actors": 0}, (),
     "HEARTBEAT: available.CPU"),
    (Op.HEAD_QUERY, {"req": 1, "what": ["status"]}, (), "HEAD_QUERY: what: expected str"),
    (Op.HEAD_QUERY, {"req": 1, "what": "claim_name", "name": "n", "actor_id": ids.new_id()},
     (), "HEAD_QUERY: anchor: missing"),
    (Op.HEAD_REPLY, {"req": 1, "nodes": [{"node_id": "zz", "alive": True}]}, (),
     "HEAD_REPLY: nodes[0].node_id: expected 16 bytes in hex"),
    (Op.HEARTBEAT_ACK, {"nodes": [{"alive": True}]}, (), "nodes[0].node_id: missing"),
    (Op.HEAD_REPLY, {"req": 1, "directory": {b"x": [ids.new_id()]}}, (),
     "HEAD_REPLY: directory.78: expected 20 bytes, got 1"),
    (Op.EVENTS, {"node_id": ids.new_id(), "count": 1, "state": {"drivers": [{"pid": 1}]}},
     (b"",), "EVENTS: state.drivers[0].job_id: missing"),
    (Op.EVENTS, {"node_id": ids.new_id(), "count": -1}, (b"",), "EVENTS: count: -1"),
    (Op.FORWARD, {"task": spec(), "origin": ids.new_id(),
                  "inline": {oid(): [0, [], 4]}}, (b"f",), "FORWARD: inline."),
    (Op.FORWARD, {"task": spec(), "origin": ids.new_id(), "locations": {oid(): [b"n"]}}, (),
     "FORWARD: locations."),
    (Op.RESULT, {"task_id": ids.new_id(), "results": [{"object_id": oid(), "kind": 1,
                                                       "layout": []}]}, (),
     "RESULT: results[0].size: missing"),
])
def test_a_malformed_message_is_refused_naming_the_field(op, body, raw, expected):
    assert expected in refusal(op, body, raw)


def test_unknown_fields_pass_and_ops_without_a_body_take_anything():
    validate.check(*wire_form(Op.SUBMIT, {"tasks": [dict(spec(), future_field=[1, 2])]}))
    validate.check(Op.BLOCKED, {"anything": 1}, [b"x"])
    validate.check(Op.BYE, {}, [])


def test_req_of_answers_only_a_sane_request_number():
    assert validate.req_of({"req": 7}) == 7
    assert validate.req_of({"req": "7"}) == 0
    assert validate.req_of({"req": -1}) == 0
    assert validate.req_of({"req": True}) == 0
    assert validate.req_of([]) == 0


def test_checking_costs_about_a_microsecond_per_spec():
    op, body, raw = wire_form(Op.SUBMIT, {"tasks": [spec() for _ in range(64)]})
    validate.check(op, body, raw)
    start = time.perf_counter()
    for _ in range(100):
        validate.check(op, body, raw)
    per_spec = (time.perf_counter() - start) / 6400
    assert per_spec < 50e-6  # a sanity bound only: bench_validate measures it (~1 µs)


# ---------------------------------------------------------------------- the agent and head refuse
def test_the_agent_refuses_a_spec_without_its_function_and_holds_nothing(agent):
    to_agent(agent, DRIVER, Op.HELLO, {"kind": "driver", "pid": os.getpid(), "job_id": JOB})
    before = agent.resources.as_amounts()
    bad = {k: v for k, v in spec().items() if k != "function_id"}
    to_agent(agent, DRIVER, Op.SUBMIT, {"tasks": [spec(), bad]})
    agent.dispatch()
    (error,) = [body for _, op, body, _ in agent.wire.sent if op == Op.ERROR]
    assert error["error_type"] == "ProtocolError" and "function_id: missing" in error["message"]
    assert agent.tasks.tasks == {}  # refused whole: not even the good spec was taken
    assert agent.resources.as_amounts() == before


class FakeHeadSocket:
    def __init__(self, messages) -> None:
        self.messages = list(messages)

    def recv_multipart(self, flags=0):
        import zmq

        if not self.messages:
            raise zmq.Again()
        return self.messages.pop(0)


def test_a_refused_head_reply_still_answers_its_asker(agent):
    answers = []
    agent.head.request({"what": "actor", "name": "x"}, answers.append)
    req = agent.wire.to_head[-1][1]["req"]
    agent.head_sock = FakeHeadSocket([
        [b"\x00junk"],
        protocol.encode(Op.HEARTBEAT_ACK, {"nodes": [{"node_id": 5}]}),
        protocol.encode(Op.HEAD_REPLY, {"req": req, "entry": "not a map"})])
    agent.drain_head()
    assert len(answers) == 1 and "entry: expected a map" in answers[0]["error"]
    assert agent.head.nodes == []


def test_the_head_refuses_a_bad_register_and_acks_a_bad_heartbeat():
    head = Head(["ipc:///nowhere"], "ipc:///nowhere-pub")
    captured = Captured(head)
    to_head(head, b"n" * 16, Op.REGISTER, {"node_id": 12345, "ip": "h", "address": "a",
                                           "resources": {}, "store_capacity": 0, "pid": 1,
                                           "transfer_address": "", "hostname": "h"})
    to_head(head, b"n" * 16, Op.HEARTBEAT, {"node_id": ["not", "an", "id"]})
    to_head(head, b"n" * 16, Op.HEAD_QUERY, {"req": 3, "what": 5})
    assert head.nodes == {}
    assert [(op, body.get("unknown"), body.get("req")) for _, op, body, _ in captured.sent] == [
        (Op.HEARTBEAT_ACK, True, None), (Op.HEAD_REPLY, None, 3)]
    head.purge_expired(time.monotonic() + 60)  # and nothing bogus is there to expire


# ---------------------------------------------------------------------- the rate-limited log
class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_one_line_per_kind_per_interval_and_the_rest_are_counted(caplog):
    clock = Clock()
    log = ratelog.RateLimitedLog(logging.getLogger("zray.test"), interval=1.0, clock=clock)
    with caplog.at_level(logging.WARNING, "zray.test"):
        for _ in range(1000):
            log.warning("junk", "refused a message")
        log.warning("other", "another kind")
        clock.now = 1.5
        log.warning("junk", "refused a message")
    assert [r.getMessage() for r in caplog.records] == [
        "refused a message", "another kind", "refused a message (and 999 more like it held back)"]


def test_only_the_first_of_each_distinct_error_brings_its_traceback(caplog):
    clock = Clock()
    log = ratelog.RateLimitedLog(logging.getLogger("zray.test"), interval=1.0, clock=clock)

    def fail():
        try:
            {}["x"]
        except KeyError as exc:
            return exc

    with caplog.at_level(logging.WARNING, "zray.test"):
        for step in range(3):
            clock.now = step * 2.0
            log.warning("failed", "handler failed", fail())
        log.warning("long", "x" * 10_000)
    assert [r.exc_info is not None for r in caplog.records] == [True, False, False, False]
    assert len(caplog.records[-1].getMessage()) < 500


def test_many_kinds_at_once_still_make_few_lines(caplog):
    clock = Clock()
    log = ratelog.RateLimitedLog(logging.getLogger("zray.test"), interval=1.0, clock=clock)
    with caplog.at_level(logging.WARNING, "zray.test"):
        for kind in range(100):
            log.warning(f"kind {kind}", f"problem {kind}")
        clock.now = 1.0
        log.warning("kind 50", "problem 50")
    assert len(caplog.records) == ratelog.MAX_LINES + 1
    assert caplog.records[-1].getMessage() == "problem 50 (and 1 more like it held back)"
