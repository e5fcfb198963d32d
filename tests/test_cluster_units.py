"""Cluster pieces that need no cluster: tokens and keys, addresses, status text, the head."""

from __future__ import annotations

import os
import time

import pytest
import zmq

from zray._private import ids, protocol, security, services
from zray._private import status as status_text
from zray._private.head import Head
from zray._private.protocol import Op

pytestmark = pytest.mark.timeout(30)


def test_token_is_hex_of_fixed_size_and_random():
    a, b = security.new_token(), security.new_token()
    assert a != b and len(a) == 2 * security.TOKEN_BYTES
    assert security.check_token(f"  {a}\n") == a


@pytest.mark.parametrize("bad", ["", "abc", "zz" * security.TOKEN_BYTES, "ab" * 10])
def test_bad_tokens_are_named(bad):
    with pytest.raises(security.TokenError, match="hex digits"):
        security.check_token(bad)


def test_keys_derive_from_the_token_alone():
    token = security.new_token()
    k1, k2 = security.Keys(token), security.Keys(token)
    assert k1.server_public == k2.server_public and k1.peer_secret == k2.peer_secret
    other = security.Keys(security.new_token())
    assert other.server_public != k1.server_public
    assert k1.server_public != k1.peer_public
    assert zmq.curve_public(k1.server_secret) == k1.server_public


def _roundtrip(server_keys, client_keys, timeout_ms=1500):
    ctx = zmq.Context()
    guard = security.Guard(ctx, server_keys, "test server")
    server = ctx.socket(zmq.ROUTER)
    server.setsockopt(zmq.LINGER, 0)
    server_keys.serve(server)
    port = server.bind_to_random_port("tcp://127.0.0.1")
    client = ctx.socket(zmq.DEALER)
    client.setsockopt(zmq.LINGER, 0)
    if client_keys is not None:
        client_keys.join(client)
    client.connect(f"tcp://127.0.0.1:{port}")
    try:
        client.send(b"hello")
        if not server.poll(timeout_ms):
            return None
        return server.recv_multipart()[1]
    finally:
        client.close(0)
        server.close(0)
        guard.stop()
        ctx.term()


def test_curve_admits_a_peer_with_the_token():
    token = security.new_token()
    assert _roundtrip(security.Keys(token), security.Keys(token)) == b"hello"


def test_curve_refuses_a_wrong_token_and_a_plain_peer():
    keys = security.Keys(security.new_token())
    assert _roundtrip(keys, security.Keys(security.new_token())) is None
    assert _roundtrip(keys, None) is None


@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:6380", ("127.0.0.1", 6380)),
    ("tcp://10.0.0.2:7000", ("10.0.0.2", 7000)),
    (" head.example:1 ", ("head.example", 1)),
])
def test_split_address(text, expected):
    assert services.split_address(text) == expected


@pytest.mark.parametrize("text", ["6380", "host:", ":80", "host:port", "host:70000"])
def test_split_address_rejects(text):
    with pytest.raises(services.ClusterError, match="HOST:PORT"):
        services.split_address(text)


def test_local_endpoints_match():
    assert services._same_endpoint("127.0.0.1:6380", "localhost:6380")
    assert not services._same_endpoint("127.0.0.1:6380", "127.0.0.1:6381")


def _reply():
    node = {"node_id": "aa" * 16, "alive": True, "node_ip": "127.0.0.1",
            "resources": {"CPU": 2.0, "alpha": 1.0}, "available": {"CPU": 0.5, "alpha": 1.0},
            "store_used": 1 << 20, "store_capacity": 1 << 30, "queued": 3, "running": 2,
            "actors": 1}
    dead = {"node_id": "bb" * 16, "alive": False, "node_ip": "10.0.0.9",
            "resources": {"CPU": 4.0}, "available": {"CPU": 4.0}, "store_used": 0,
            "store_capacity": 1 << 30, "queued": 0, "running": 0, "actors": 0}
    return {"nodes": [node, dead], "unplaced": ["needs_tpu"]}


def test_summary_counts_alive_nodes_only():
    s = status_text.summarize(_reply())
    assert s["alive_nodes"] == 1 and s["dead_nodes"] == 1
    assert s["resources"]["total"] == {"CPU": 2.0, "alpha": 1.0}
    assert s["resources"]["in_use"] == {"CPU": 1.5, "alpha": 0.0}
    assert s["tasks"] == {"pending": 4, "running": 2, "unplaceable": ["needs_tpu"]}
    assert s["actors_alive"] == 1
    assert s["object_store"] == {"used": 1 << 20, "capacity": 1 << 30}


def test_status_text_reads_at_a_glance():
    text = status_text.format_status(status_text.summarize(_reply()), "127.0.0.1:6380")
    assert text.startswith("zray cluster at 127.0.0.1:6380: 1 node(s) alive, 1 dead")
    assert "1.5/2 CPU" in text and "DEAD" in text and "10.0.0.9" in text
    assert "1.0 MiB/1.0 GiB object store" in text
    assert "Tasks: 2 running, 4 pending" in text and "needs_tpu" in text
    assert "Actors: 1 alive" in text


def test_status_shows_the_memory_resource_in_bytes():
    reply = _reply()
    reply["nodes"][0]["resources"]["memory"] = float(8 << 30)
    reply["nodes"][0]["available"]["memory"] = float(6 << 30)
    text = status_text.format_status(status_text.summarize(reply), "127.0.0.1:6380")
    assert "2.0 GiB/8.0 GiB memory" in text and "8589934592" not in text


def test_a_too_long_session_root_is_named(monkeypatch):
    monkeypatch.setenv("ZRAY_TMPDIR", "/tmp/" + "d" * 80)
    with pytest.raises(ValueError, match="ZRAY_TMPDIR"):
        services.session_root()


@pytest.fixture
def short_tmp(monkeypatch):
    """ZRAY_TMPDIR in a folder short enough for socket paths."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="zr", dir="/tmp") as folder:
        monkeypatch.setenv("ZRAY_TMPDIR", folder)
        yield folder


def test_zray_head_finds_the_head_that_died_while_its_node_runs_on(short_tmp):
    import json

    import psutil

    from zray._private import restore

    alive = {"pid": os.getpid(), "created": psutil.Process().create_time()}
    dead = {"pid": os.getpid(), "created": 1.0}   # the same pid once: another process

    def record(name, procs, port, started, logs=True, **extra):
        folder = os.path.join(services.session_root(), name)
        os.makedirs(os.path.join(folder, "logs") if logs else folder)
        with open(os.path.join(folder, services.RECORD), "w") as f:
            json.dump(dict({"kind": "head", "address": f"127.0.0.1:{port}", "token": "t",
                            "procs": procs, "started": started}, **extra), f)

    record("running", [alive, alive], 7001, 5)
    record("all_gone", [dead, dead], 7002, 4)
    assert restore.find_restorable() == (None, [])    # nothing to restore: as always
    record("broken", [dead], 7003, 3)
    record("no_folder", [dead, alive], 7004, 2, logs=False)
    record("wanted", [dead, alive], 7005, 1)
    found, why_not = restore.find_restorable()
    assert found["address"] == "127.0.0.1:7005"
    assert why_not == ["the head at 127.0.0.1:7003: its record names its processes in a "
                       "form this zray does not read",
                       "the head at 127.0.0.1:7004: its session folder is gone"]
    assert restore.find_restorable(7005)[0]["address"] == "127.0.0.1:7005"
    found, why_not = restore.find_restorable(7009)
    assert found is None and "another port than 7009" in why_not[-1]
    with pytest.raises(services.ClusterError, match="cannot be restored: its record names"):
        restore.dead_head("127.0.0.1:7003")
    with pytest.raises(services.ClusterError, match="is running: nothing to restore"):
        restore.dead_head("127.0.0.1:7001")


# ---------------------------------------------------------------------- the head
# A real Head on ipc sockets in this process, driven one poll at a time; each
# DEALER stands for a node agent (identity = node ID, as the agent sets it).


class Peer:
    def __init__(self, ctx: zmq.Context, head: Head, node_id: bytes) -> None:
        self.head = head
        self.node_id = node_id
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.IDENTITY, node_id)
        self.sock.connect(head.addresses[0])

    def send(self, op: Op, body: dict, *raw: bytes) -> None:
        self.sock.send_multipart(protocol.encode(op, body, *raw))
        deadline = time.monotonic() + 5
        while not self.head.poll_once(100):
            assert time.monotonic() < deadline, "the head never saw the message"

    def recv(self, timeout_ms: int = 2000):
        assert self.sock.poll(timeout_ms), f"nothing came to {self.node_id!r}"
        return protocol.decode(self.sock.recv_multipart())

    def expect(self, op: Op) -> dict:
        got, body, _ = self.recv()
        assert got == op, (got, body)
        return body

    def quiet(self) -> bool:
        return not self.sock.poll(50)

    def register(self, resources: dict) -> dict:
        info = {"node_id": self.node_id, "ip": "127.0.0.1", "address": "ipc://agent",
                "resources": resources, "store_capacity": 1 << 30, "pid": 1,
                "transfer_address": f"tcp://127.0.0.1:{len(self.node_id)}", "hostname": "h"}
        self.send(Op.REGISTER, info)
        return self.expect(Op.REGISTERED)


class Rig:
    """A bound Head and the peers that talk to it."""

    def __init__(self, tmp_path) -> None:
        self.head = Head([f"ipc://{tmp_path}/head.sock"], f"ipc://{tmp_path}/pub.sock")
        self.head.bind()
        self.ctx = zmq.Context()
        self.peers: list = []

    def peer(self, name: bytes) -> Peer:
        self.peers.append(Peer(self.ctx, self.head, name.ljust(ids.ID_SIZE, b".")))
        return self.peers[-1]

    def close(self) -> None:
        for p in self.peers:
            p.sock.close(0)
        self.ctx.term()
        self.head.close()


@pytest.fixture
def rig(tmp_path):
    r = Rig(tmp_path)
    yield r
    r.close()


def forward(origin: Peer, raw=(b"pickled function",), **task) -> dict:
    spec = protocol.task_spec(task_id=ids.new_id(), name=task.pop("name", "f"), **task)
    body = {"task": spec, "origin": origin.node_id, "inline": {}, "locations": {},
            "function_frame": 0, "sys_path": []}
    origin.send(Op.FORWARD, body, *raw)
    return spec


def heartbeat(peer: Peer, **load) -> dict:
    peer.send(Op.HEARTBEAT, dict({"node_id": peer.node_id, "available": {"CPU": 1.0},
                                  "store_used": 0, "queued": 0, "running": 0, "workers": 1,
                                  "actors": 0}, **load))
    return peer.expect(Op.HEARTBEAT_ACK)


def test_head_acks_every_heartbeat_even_from_a_node_it_does_not_know(rig):
    a = rig.peer(b"a")
    assert heartbeat(a)["unknown"] is True
    a.send(Op.HEARTBEAT, {"node_id": ["not", "an", "id"]})
    assert a.expect(Op.HEARTBEAT_ACK)["unknown"] is True
    registered = a.register({"CPU": 1.0})
    assert registered["pub_address"] == rig.head.pub_address and registered["seq"] >= 1
    ack = heartbeat(a, store_used=123, queued=2)
    assert "unknown" not in ack
    (entry,) = ack["nodes"]
    assert entry["node_id"] == a.node_id.hex() and entry["alive"]
    assert entry["transfer"] == "tcp://127.0.0.1:16" and entry["store_capacity"] == 1 << 30
    assert entry["store_used"] == 123 and entry["queued"] == 2


def test_an_unplaceable_task_waits_then_runs_where_it_fits(rig):
    a, b = rig.peer(b"a"), rig.peer(b"b")
    a.register({"CPU": 1.0})
    spec = forward(a, resources={"special": 1.0})
    waiting = a.expect(Op.TASK_UNPLACEABLE)
    assert waiting["task_id"] == spec["task_id"] and "special: 1" in waiting["message"]
    b.register({"CPU": 1.0, "special": 1.0})
    op, body, raw = b.recv()
    assert op == Op.FORWARD and body["task"] == spec and raw == [b"pickled function"]
    oid = ids.object_id(spec["task_id"], 0)
    result = {"task_id": spec["task_id"], "origin": a.node_id, "node_id": b.node_id,
              "results": [{"object_id": oid, "kind": int(protocol.ObjectKind.SHARED),
                           "layout": [[0, 10]], "size": 4096, "contained": []}], "error": ""}
    b.send(Op.RESULT, result)
    assert a.expect(Op.RESULT) == result
    a.send(Op.HEAD_QUERY, {"req": 3, "what": "snapshot"})
    snapshot = a.expect(Op.HEAD_REPLY)
    assert snapshot["req"] == 3 and snapshot["directory"] == {oid: [b.node_id]}
    a.send(Op.OBJECTS_FREED, {"node_id": a.node_id, "object_ids": [oid]})
    a.send(Op.HEAD_QUERY, {"req": 4, "what": "snapshot"})
    assert a.expect(Op.HEAD_REPLY)["directory"] == {}


def test_a_dead_nodes_tasks_are_placed_again_or_failed(rig):
    a, b, c = rig.peer(b"a"), rig.peer(b"b"), rig.peer(b"c")
    a.register({"CPU": 1.0})
    b.register({"CPU": 1.0, "x": 1.0})
    fragile = forward(a, resources={"x": 1.0}, max_retries=0, name="fragile")
    sturdy = forward(a, resources={"x": 1.0}, max_retries=1, name="sturdy")
    assert [b.expect(Op.FORWARD)["task"]["name"] for _ in range(2)] == ["fragile", "sturdy"]
    rig.head.nodes[b.node_id].last_seen -= 60  # silent for far longer than the liveness
    rig.head.purge_expired()
    assert not rig.head.nodes[b.node_id].alive
    failed = a.expect(Op.TASK_FAILED)
    assert failed["task_id"] == fragile["task_id"] and failed["error_type"] == "NodeDiedError"
    assert "no retries left" in failed["message"]
    assert a.expect(Op.TASK_UNPLACEABLE)["task_id"] == sturdy["task_id"]  # nowhere else has x
    c.register({"CPU": 1.0, "x": 1.0})
    again = c.expect(Op.FORWARD)["task"]
    assert again["task_id"] == sturdy["task_id"] and again["max_retries"] == 0


def test_actor_calls_and_kills_go_where_the_actor_lives(rig):
    a, b = rig.peer(b"a"), rig.peer(b"b")
    a.register({"CPU": 1.0})
    b.register({"CPU": 1.0, "x": 1.0})
    actor_id = ids.new_id()
    forward(a, resources={"x": 1.0}, actor_id=actor_id, new_actor=True, name="A.__init__")
    assert b.expect(Op.FORWARD)["task"]["new_actor"] is True
    call = forward(a, resources={}, actor_id=actor_id, method="incr", name="A.incr")
    assert b.expect(Op.FORWARD)["task"]["task_id"] == call["task_id"]
    a.send(Op.KILL_ACTOR, {"actor_id": actor_id, "no_restart": True})
    assert b.expect(Op.KILL_ACTOR) == {"actor_id": actor_id, "no_restart": True}
    stray = forward(a, actor_id=ids.new_id(), method="incr", name="B.incr")
    failed = a.expect(Op.TASK_FAILED)
    assert failed["task_id"] == stray["task_id"] and failed["error_type"] == "ActorDiedError"
    assert b.quiet()


def test_log_lines_pass_to_the_named_node(rig):
    a, b = rig.peer(b"a"), rig.peer(b"b")
    a.register({"CPU": 1.0})
    b.register({"CPU": 1.0})
    log = {"job_id": b"j" * 16, "name": "f", "pid": 9, "stderr": False, "lines": ["hi"],
           "to_node": a.node_id}
    b.send(Op.LOG, log)
    assert a.expect(Op.LOG) == log


@pytest.mark.parametrize("frames, fragment", [
    ([protocol.encode(Op.HEAD_QUERY, {"req": 5, "what": "locate"})[0]], "unknown query"),
    ([protocol.encode(Op.SUBMIT, {"req": 5, "tasks": []})[0]], "does not serve SUBMIT"),
    ([b"\xff junk"], "malformed"),
])
def test_head_answers_what_it_cannot_serve_with_an_error(rig, frames, fragment):
    a = rig.peer(b"a")
    a.sock.send_multipart(frames)
    deadline = time.monotonic() + 5
    while not rig.head.poll_once(100):
        assert time.monotonic() < deadline
    reply = a.expect(Op.HEAD_REPLY)
    assert fragment in reply["error"]
    a.send(Op.HEAD_QUERY, {"req": 6, "what": "status"})  # and it still serves
    status = a.expect(Op.HEAD_REPLY)
    assert status["req"] == 6 and status["unplaced"] == [] and status["head_pid"] == os.getpid()


def test_actor_names_are_the_clusters_and_go_with_their_node(rig):
    a, b = rig.peer(b"a"), rig.peer(b"b")
    a.register({"CPU": 1.0})
    b.register({"CPU": 1.0})
    claim = {"what": "claim_name", "namespace": "app", "name": "counter", "actor_id": b"A" * 16,
             "anchor": b"anchor".ljust(20, b"."), "meta": {"class_name": "C"}, "node_id": a.node_id}
    a.send(Op.HEAD_QUERY, dict(claim, req=1))
    assert a.expect(Op.HEAD_REPLY)["existing"] is False
    b.send(Op.HEAD_QUERY, dict(claim, req=2, actor_id=b"B" * 16, node_id=b.node_id))
    assert "already exists" in b.expect(Op.HEAD_REPLY)["error"]
    b.send(Op.HEAD_QUERY, dict(claim, req=3, actor_id=b"B" * 16, get_if_exists=True))
    reply = b.expect(Op.HEAD_REPLY)
    assert reply["existing"] is True and reply["entry"]["actor_id"] == b"A" * 16
    b.send(Op.HEAD_QUERY, {"req": 4, "what": "actor", "namespace": "app", "name": "counter"})
    assert b.expect(Op.HEAD_REPLY)["entry"]["anchor"] == claim["anchor"]
    b.send(Op.HEAD_QUERY, {"req": 5, "what": "named_actors", "all_namespaces": True})
    assert b.expect(Op.HEAD_REPLY)["actors"] == [{"namespace": "app", "name": "counter"}]
    rig.head.nodes[a.node_id].last_seen -= 60
    rig.head.purge_expired()
    b.send(Op.HEAD_QUERY, {"req": 6, "what": "actor", "namespace": "app", "name": "counter"})
    assert "no live actor" in b.expect(Op.HEAD_REPLY)["error"]


def test_a_spread_task_and_a_pinned_task_land_where_their_strategy_says(rig):
    a, b = rig.peer(b"a"), rig.peer(b"b")
    a.register({"CPU": 2.0})
    b.register({"CPU": 2.0})
    pinned = forward(a, scheduling_strategy=["NODE", b.node_id, False], name="pinned")
    assert b.expect(Op.FORWARD)["task"]["task_id"] == pinned["task_id"]
    for i in range(2):
        forward(a, scheduling_strategy=["SPREAD"], name=f"spread{i}")
    got = [a.expect(Op.FORWARD)["task"]["name"], b.expect(Op.FORWARD)["task"]["name"]]
    assert sorted(got) == ["spread0", "spread1"] and a.quiet() and b.quiet()  # one each
    gone = forward(a, scheduling_strategy=["NODE", b"nowhere".ljust(16, b"."), False])
    failed = a.expect(Op.TASK_FAILED)
    assert failed["task_id"] == gone["task_id"]
    assert failed["error_type"] == "TaskUnschedulableError"


def test_a_heartbeat_for_a_node_from_another_socket_does_not_take_its_traffic(rig):
    a, b = rig.peer(b"a"), rig.peer(b"mallory")
    a.register({"CPU": 1.0})
    b.send(Op.HEARTBEAT, {"node_id": a.node_id, "available": {"CPU": 1.0}, "store_used": 0,
                          "queued": 0, "running": 0, "workers": 1, "actors": 0})
    assert b.expect(Op.HEARTBEAT_ACK)["unknown"] is True
    forward(a, name="still_mine")        # placed on a's node: it must reach a, not b
    assert a.expect(Op.FORWARD)["task"]["name"] == "still_mine"
    assert b.quiet()


def test_a_result_for_a_node_not_registered_yet_waits_for_it(rig):
    """After a head restart, a RESULT may come before its origin registers again."""
    ran, origin = rig.peer(b"ran"), rig.peer(b"origin")
    ran.register({"CPU": 1.0})
    task_id = ids.new_id()
    ran.send(Op.RESULT, {"task_id": task_id, "origin": origin.node_id, "node_id": ran.node_id,
                         "results": [], "error": ""})
    assert origin.quiet()
    origin.send(Op.REGISTER, {"node_id": origin.node_id, "ip": "127.0.0.1",
                              "address": "ipc://agent", "resources": {"CPU": 1.0},
                              "store_capacity": 1 << 30, "pid": 1, "transfer_address": "",
                              "hostname": "h"})
    got, body, _ = origin.recv()
    assert got == Op.RESULT and body["task_id"] == task_id   # before its REGISTERED
    assert origin.expect(Op.REGISTERED)["pub_address"]


def test_a_lost_object_is_asked_of_its_owner_and_the_answer_goes_back(rig):
    owner, maker, reader = rig.peer(b"owner"), rig.peer(b"maker"), rig.peer(b"reader")
    for peer in (owner, maker, reader):
        peer.register({"CPU": 1.0})
    task_id = ids.new_id()
    made, nested = ids.object_id(task_id, 0), ids.object_id(ids.new_id(), 0)
    shared = {"kind": int(protocol.ObjectKind.SHARED), "layout": [[0, 10]], "size": 4096,
              "contained": []}
    maker.send(Op.RESULT, {"task_id": task_id, "origin": owner.node_id, "node_id": maker.node_id,
                           "error": "", "results": [dict(shared, object_id=made),
                                                    dict(shared, object_id=nested, inner=True)]})
    owner.expect(Op.RESULT)
    ask = {"object_id": made, "node_id": reader.node_id, "unreachable": [maker.node_id]}
    reader.send(Op.REBUILD, ask)
    assert owner.expect(Op.REBUILD) == ask
    answer = {"object_id": made, "node_id": reader.node_id, "holders": [owner.node_id],
              "error_type": "", "message": ""}
    owner.send(Op.REBUILT, answer)
    assert reader.expect(Op.REBUILT) == answer
    reader.send(Op.REBUILD, dict(ask, object_id=nested))   # a put nested in a result
    lost = reader.expect(Op.REBUILT)
    assert lost["holders"] == [] and lost["error_type"] == "ObjectLostError"
    assert "zray.put" in lost["message"]
    reader.send(Op.REBUILD, ask)
    owner.expect(Op.REBUILD)
    rig.head.nodes[owner.node_id].last_seen -= 60   # the owner dies while making it again
    rig.head.purge_expired()
    died = reader.expect(Op.REBUILT)
    assert died["error_type"] == "OwnerDiedError" and "died" in died["message"]
    reader.send(Op.REBUILD, ask)                    # asked again: its owner is dead
    assert reader.expect(Op.REBUILT)["error_type"] == "OwnerDiedError"
    assert maker.quiet()


def test_a_chunk_is_written_only_inside_its_object():
    from zray._private.agent.transfer import chunk_problem

    def shared(size, offset, n):
        return {"kind": 1, "layout": [[0, size]], "size": size, "offset": offset}, [b"x" * n]

    assert chunk_problem(*shared(100, 0, 100), -1) == ""
    assert chunk_problem(*shared(100, 90, 10), 100) == ""
    assert "does not fit" in chunk_problem(*shared(100, 95, 10), 100)
    assert "does not fit" in chunk_problem(*shared(100, -1, 1), -1)
    assert "its first said" in chunk_problem(*shared(200, 0, 10), 100)
    assert chunk_problem({"kind": 0, "layout": [[0, 2]]}, [b"ab"], -1) == ""
    assert chunk_problem({"kind": 1, "layout": [[0, 2]]}, [b"ab"], -1)
    assert chunk_problem({"kind": 7, "layout": []}, [b""], -1)
