"""Fuzz a live session: ~20,000 malformed messages at its node agent, ~5,000 at its head.

Random bytes, empty and truncated frames, headers of the wrong version or op,
bodies of the wrong type, fields missing or of the wrong type (specs without
their function among them), absurd frame counts and batches, requests about
IDs nobody knows, from connections that said HELLO first and from ones that
did not; at the head, REGISTERs whose node ID is not an ID, heartbeats from
unknown nodes, queries of the wrong types.  Afterwards
nothing may be lost or stuck: both processes live, every CPU and every byte
of the store comes back, the logs grew by little and without a traceback per
message, and a normal job runs.
"""

from __future__ import annotations

import copy
import os
import random
import time
from typing import Any, Callable, List, Tuple

import msgpack
import numpy as np
import psutil
import pytest
import zmq

import zray
from zray._private import ids, protocol, state, validate
from zray._private.protocol import ObjectKind, Op

pytestmark = pytest.mark.timeout(120)

AGENT_MESSAGES = 20_000
HEAD_MESSAGES = 5_000
CONNECTIONS = 8
WRONG = [None, -1, 1 << 63, "x", b"x", b"\x00" * 17, [], {}, [1, "a"], {"a": [1]}, 1.5, True]


@pytest.fixture(scope="module")
def session():
    context = zray.init(num_cpus=2)
    try:
        yield context
    finally:
        zray.shutdown()


def spec(**extra: Any) -> dict:
    return protocol.task_spec(task_id=ids.new_id(), job_id=ids.new_id(), name="f",
                              function_id=ids.new_id(), args={"args": b"xy",
                                                              "args_layout": [[0, 2]]}, **extra)


def oid() -> bytes:
    return ids.object_id(ids.new_id(), 0)


def result(kind: int = ObjectKind.INLINE) -> dict:
    return {"object_id": oid(), "kind": kind, "layout": [[0, 2]], "frame": 0}


# ---------------------------------------------------------------------- what is sent
def agent_bodies() -> List[Tuple[Op, dict, list]]:
    """Well-formed client messages: the fuzz breaks them one field at a time."""
    return [
        (Op.HELLO, {"kind": "driver", "pid": os.getpid(), "job_id": ids.new_id()}, []),
        (Op.SUBMIT, {"tasks": [spec(), spec(resources={"CPU": 1.0}, scheduling_strategy=[
            "SPREAD"]), spec(actor_id=ids.new_id(), new_actor=True, max_restarts=1)]}, []),
        (Op.EXPORT, {"function_id": ids.new_id(), "name": "f", "sys_path": ["/x"]}, [b"fn"]),
        (Op.ADDREF, {"object_ids": [oid(), oid()]}, []),
        (Op.FETCH, {"object_ids": [oid()], "pin": True}, []),
        (Op.PUT, {"objects": [[oid(), [[0, 2]], [oid()]]]}, [b"xy"]),
        (Op.ALLOC, {"req": 1, "object_id": oid(), "size": 1 << 20}, []),
        (Op.SEAL, {"object_id": oid(), "offset": 0, "size": 64, "layout": [[0, 64]],
                   "contained": []}, []),
        (Op.TASK_DONE, {"task_id": ids.new_id(), "results": [result()], "error": "",
                        "run_seconds": 0.1}, [b"ok"]),
        (Op.TASK_DONE, *protocol.pack_batch([({"task_id": ids.new_id(), "results": [result()]},
                                              [b"ok"])] * 3)),
        (Op.YIELDED, {"task_id": ids.new_id(), "results": [result()]}, [b"it"]),
        (Op.LOG, {"job_id": ids.new_id(), "name": "f", "pid": 1, "stderr": False,
                  "lines": ["a", "b"]}, []),
        (Op.CANCEL, {"task_id": ids.new_id(), "force": True}, []),
        (Op.QUERY, {"req": 2, "what": "state", "kind": "tasks", "filters": [["a", "=", 1]],
                    "limit": 5}, []),
        (Op.RESERVE_NAME, {"req": 3, "namespace": "n", "name": "a", "actor_id": ids.new_id(),
                           "anchor": oid(), "meta": {}}, []),
        (Op.KILL, {"actor_id": ids.new_id(), "no_restart": True}, []),
        (Op.PIN, {"req": 4, "object_id": oid()}, []),
    ]


def head_bodies() -> List[Tuple[Op, dict, list]]:
    """Well-formed agent-to-head messages, from a node the head has never heard of."""
    node = ids.new_id()
    return [
        (Op.REGISTER, {"node_id": node, "ip": "127.0.0.1", "address": "ipc:///x",
                       "resources": {"CPU": 1.0}, "store_capacity": 1 << 20, "pid": 1,
                       "transfer_address": "", "hostname": "h"}, []),
        (Op.HEARTBEAT, {"node_id": node, "available": {"CPU": 1.0}, "store_used": 0,
                        "queued": 0, "running": 0, "workers": 1, "actors": 0}, []),
        (Op.HEAD_QUERY, {"req": 5, "what": "claim_name", "namespace": "n", "name": "a",
                         "actor_id": ids.new_id(), "anchor": oid(), "node_id": node}, []),
        (Op.HEAD_QUERY, {"req": 6, "what": "state", "kind": "tasks", "filters": [],
                         "limit": 1, "detail": False}, []),
        (Op.EVENTS, {"node_id": node, "count": 1, "dropped": 0, "collect": 1,
                     "state": {"drivers": [{"job_id": "00", "pid": 1}],
                               "objects": [{"size": 1}]}}, [b"events"]),
        (Op.FORWARD, {"task": spec(), "origin": node, "inline": {oid(): [0, [[0, 1]], 0]},
                      "locations": {oid(): [node]}, "function_frame": 0, "sys_path": []},
         [b"fn"]),
        (Op.RESULT, {"task_id": ids.new_id(), "origin": node, "node_id": node,
                     "results": [result()], "error": ""}, [b"ok"]),
        (Op.OBJECTS_FREED, {"node_id": node, "object_ids": [oid()]}, []),
        (Op.KILL_ACTOR, {"actor_id": ids.new_id(), "no_restart": True}, []),
        (Op.JOB_ENDED, {"job_id": ids.new_id(), "reason": "gone"}, []),
    ]


def broken(rng: random.Random, op: Op, body: dict, raw: list) -> List[bytes]:
    """One field somewhere in ``body`` removed or given a wrong value: refused for sure."""
    for _ in range(100):
        mutant = copy.deepcopy(body)
        where: Any = mutant
        while True:
            keys = list(where) if isinstance(where, dict) else list(range(len(where)))
            if not keys:
                break
            key = rng.choice(keys)
            inner = where[key]
            if isinstance(inner, (dict, list)) and inner and rng.random() < 0.5:
                where = inner
                continue
            if isinstance(where, dict) and rng.random() < 0.3:
                del where[key]
            else:
                where[key] = rng.choice(WRONG)
            break
        frames = protocol.encode(op, mutant, *raw)
        try:
            validate.check(*protocol.decode(frames))  # as the receiver will see it
        except protocol.ProtocolError:
            return frames
    return [b"\xc1"]  # msgpack's one byte that never decodes


def junk(rng: random.Random) -> List[bytes]:
    """Frames no op accepts: random, empty, cut short, of the wrong version or op."""
    header = protocol.encode(Op.SUBMIT, {"tasks": [spec()]})[0]
    choice = rng.randrange(9)
    if choice == 0:
        return [rng.randbytes(rng.randrange(0, 300))]
    if choice == 1:
        return [b""] * rng.randrange(1, 4)
    if choice == 2:
        return [header[:rng.randrange(0, len(header))]]
    if choice == 3:
        code = rng.choice([0, 39, 99, 1000, -1, 1 << 62, "SUBMIT", None, 2.5, b"\x03"])
        return [msgpack.packb([protocol.VERSION, code, {}])]
    if choice == 4:
        return [msgpack.packb([rng.choice([0, 1, 3, "2", None]), int(Op.HELLO), {}])]
    if choice == 5:
        return [msgpack.packb([protocol.VERSION, int(rng.choice(list(Op))),
                               rng.choice([[], "x", 5, None, b"x"])])]
    if choice == 6:
        return [msgpack.packb([protocol.VERSION, int(Op.HELLO)])]
    if choice == 7:
        nested: Any = 1
        for _ in range(rng.randrange(10, 500)):
            nested = [nested]
        return [msgpack.packb([protocol.VERSION, int(Op.SUBMIT), {"tasks": nested}])]
    return [header, *[b""] * rng.randrange(1, 2000)]  # a frame count no op takes


def absurd(rng: random.Random) -> List[bytes]:
    """The issue's cases and absurd counts, each refused."""
    no_function = {k: v for k, v in spec().items() if k != "function_id"}
    cases = [
        protocol.encode(Op.SUBMIT, {"tasks": [spec(), no_function]}),
        protocol.encode(Op.SUBMIT, {"tasks": [dict(spec(), function_id=7)]}),
        protocol.encode(Op.SUBMIT, {"tasks": [spec(num_returns=1 << 40)]}),
        protocol.encode(Op.SUBMIT, {"tasks": [spec(resources={"CPU": -2.0})]}),
        protocol.encode(Op.TASK_DONE, {"batch": [[{"task_id": ids.new_id(), "results": []},
                                                  1 << 40]]}),
        protocol.encode(Op.TASK_DONE, {"batch": [[{"task_id": ids.new_id()}, -1]]}),
        protocol.encode(Op.TASK_DONE, {"batch": [["x", 0], [{}, "1"]]}),
        protocol.encode(Op.PUT, {"objects": [[oid(), [[0, 2]], []]] * 3}, b"xy"),
        protocol.encode(Op.FETCH, {"object_ids": [oid()] * (validate.MAX_ITEMS + 1)}),
        protocol.encode(Op.ALLOC, {"req": 9, "object_id": oid(), "size": -1}),
    ]
    return rng.choice(cases[:-2] * 50 + cases[-2:])  # the million-ID one, seldom


def unknown_ids(rng: random.Random) -> List[bytes]:
    """Well-formed requests about objects and queries nobody knows: each answered."""
    choice = rng.randrange(3)
    if choice == 0:
        return protocol.encode(Op.PIN, {"req": 7, "object_id": oid()})  # ObjectLostError
    if choice == 1:
        return protocol.encode(Op.FETCH, {"object_ids": [oid()]})  # an OBJECT that is an error
    return protocol.encode(Op.QUERY, {"req": 8, "what": "no such question"})


def head_junk(rng: random.Random) -> List[bytes]:
    """The issue's REGISTER, heartbeats from nowhere, queries of the wrong types."""
    info = head_bodies()[0][1]
    choice = rng.randrange(4)
    if choice == 0:
        bad_id = rng.choice(["node", 12345, None, [1, 2], {"id": 1}, b"short", 1.5])
        return protocol.encode(Op.REGISTER, dict(info, node_id=bad_id))
    if choice == 1:  # well-formed, from a node the head does not know: acked "unknown"
        return protocol.encode(Op.HEARTBEAT, dict(head_bodies()[1][1], node_id=ids.new_id()))
    if choice == 2:
        return protocol.encode(Op.HEAD_QUERY, {"req": rng.choice([1, "1", -5, None]),
                                               "what": rng.choice([5, None, ["status"], b"x"]),
                                               "limit": "all", "filters": "state=FAILED"})
    return junk(rng)


# ---------------------------------------------------------------------- sending
class Peer:
    """Our own DEALER to one of the session's ROUTERs."""

    def __init__(self, ctx: zmq.Context, address: str) -> None:
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 0)
        self.sock.connect(address)
        self.replies = 0

    def send(self, frames: List[bytes]) -> None:
        self.sock.send_multipart(frames)

    def drain(self) -> None:
        while self.sock.poll(0):
            self.count(protocol.decode(self.sock.recv_multipart())[1])

    def count(self, reply: dict) -> None:
        """One answer, or several: OBJECTs of one loop pass come in one batch."""
        self.replies += len(reply["batch"]) if "batch" in reply else 1

    def ask(self, op: Op, body: dict, timeout: float = 30.0) -> dict:
        """Send a request; read (and count) everything before its reply, which is returned."""
        self.send(protocol.encode(op, body))
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0 and self.sock.poll(int(left * 1000)), f"no reply to {op.name}"
            _, reply, _ = protocol.decode(self.sock.recv_multipart())
            if reply.get("req") == body["req"]:
                return reply
            self.count(reply)

    def close(self) -> None:
        self.sock.close(0)


def fuzz(peer: Peer, rng: random.Random, count: int,
         makers: List[Callable[[random.Random], List[bytes]]]) -> None:
    for i in range(count):
        peer.send(rng.choice(makers)(rng))
        if i % 200 == 0:
            peer.drain()


def log_sizes(session_dir: str) -> dict:
    logs = os.path.join(session_dir, "logs")
    return {name: os.path.getsize(os.path.join(logs, name)) for name in os.listdir(logs)}


def new_log_text(session_dir: str, before: dict) -> str:
    text = ""
    for name in sorted(log_sizes(session_dir)):
        with open(os.path.join(session_dir, "logs", name), "rb") as f:
            f.seek(before.get(name, 0))
            text += f.read().decode(errors="replace")
    return text


def wait_for_cpus(expected: float, timeout: float = 15.0) -> float:
    deadline = time.monotonic() + timeout
    while True:
        cpus = zray.available_resources().get("CPU", 0)
        if cpus == expected or time.monotonic() > deadline:
            return cpus
        time.sleep(0.05)


# ---------------------------------------------------------------------- the test
def test_malformed_messages_leave_nothing_lost_or_stuck(session):
    session_dir = session.address_info["session_dir"]
    ctx = zmq.Context()
    head_probe = Peer(ctx, session.address_info["address"])
    agent_probe = Peer(ctx, session.address_info["agent_address"])
    try:
        assert wait_for_cpus(2.0) == 2.0
        head_pid = head_probe.ask(Op.HEAD_QUERY, {"req": 1, "what": "status"})["head_pid"]
        agent_pid = state.client.welcome["pid"]
        store = agent_probe.ask(Op.QUERY, {"req": 1, "what": "store"})
        before = log_sizes(session_dir)
        rng = random.Random(20240613)
        breakers = [lambda r, m=m: broken(r, *m) for m in agent_bodies()]
        sent = 0
        for n in range(CONNECTIONS):
            peer = Peer(ctx, session.address_info["agent_address"])
            hello = n % 2 == 0  # half are clients: the paths behind HELLO are reached
            if hello:
                peer.send(protocol.encode(*agent_bodies()[0][:2]))
            count = AGENT_MESSAGES // CONNECTIONS
            fuzz(peer, rng, count, [junk, absurd, unknown_ids] + breakers * 2)
            reply = peer.ask(Op.QUERY, {"req": 1 << 40, "what": "store"})
            assert reply["used"] == store["used"]  # every message read; nothing allocated
            assert peer.replies >= count  # each answered (and HELLO with a WELCOME)
            if hello:
                peer.send(protocol.encode(Op.BYE, {}))
            peer.close()
            sent += count
        head_breakers = [lambda r, m=m: broken(r, *m) for m in head_bodies()]
        head_peer = Peer(ctx, session.address_info["address"])
        fuzz(head_peer, rng, HEAD_MESSAGES, [head_junk, head_junk] + head_breakers)
        status = head_peer.ask(Op.HEAD_QUERY, {"req": 1 << 40, "what": "status"})
        head_peer.close()
        sent += HEAD_MESSAGES
        assert sent >= 25_000

        # Both live, and the head holds no bogus node.
        for pid in (agent_pid, head_pid):
            proc = psutil.Process(pid)
            assert proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
        assert len(status["nodes"]) == 1 and status["nodes"][0]["alive"]
        time.sleep(3.5)  # past the head's expiry of silent nodes: nothing bogus to expire
        assert psutil.Process(head_pid).is_running()
        assert len(head_probe.ask(Op.HEAD_QUERY, {"req": 2, "what": "status"})["nodes"]) == 1
        assert wait_for_cpus(2.0) == 2.0  # nothing held
        assert agent_probe.ask(Op.QUERY, {"req": 2, "what": "store"})["used"] == store["used"]

        # A normal job runs.
        @zray.remote
        def square(x):
            return x * x

        @zray.remote
        class Counter:
            def __init__(self):
                self.n = 0

            def add(self, k):
                self.n += k
                return self.n

        assert zray.get([square.remote(i) for i in range(100)], timeout=60) == \
            [i * i for i in range(100)]
        counter = Counter.remote()
        assert zray.get(counter.add.remote(5), timeout=30) == 5
        array = np.arange(1_000_000, dtype=np.int64)
        assert np.array_equal(zray.get(zray.put(array)), array)
        del counter
        assert wait_for_cpus(2.0) == 2.0

        # The logs: a few rate-limited lines, not one (let alone a traceback) per message.
        grown = sum(log_sizes(session_dir).values()) - sum(before.values())
        text = new_log_text(session_dir, before)
        assert grown < 100_000, f"the logs grew by {grown} bytes:\n{text[-3000:]}"
        assert text.count("Traceback") <= 5, text[-3000:]
        assert "refused a message" in text  # the refusals were seen, and said so
    finally:
        ctx.destroy(linger=0)  # every socket, even one a failed assertion left open
