"""The direct path's bookkeeping without processes: the caller's offer handling
(client/direct.py) and the agent's (agent/direct.py)."""

import pytest

from zray._private import ids
from zray._private.agent.direct import DirectPath
from zray._private.agent.tasks import RUNNING, WAITING, Task
from zray._private.client.direct import DirectCalls

pytestmark = pytest.mark.timeout(30)


class Transport:
    def __init__(self):
        self.sockets = []
        self.outbox = type("Outbox", (), {"direct": None})()

    def add_socket(self, kind, handler):
        sock = Socket()
        self.sockets.append(sock)
        return sock

    def remove_socket(self, sock):
        self.sockets.remove(sock)


class Socket:
    def connect(self, endpoint):
        self.endpoint = endpoint


def _calls():
    return DirectCalls(Transport(), "ipc:///tmp/s/zray_agent_x.sock", lambda r, f: None)


def test_an_offer_is_taken_only_when_it_counts_every_call_sent_the_agents_way():
    calls = _calls()
    actor, worker = ids.new_id(), ids.new_id()
    for _ in range(3):
        assert not calls.route({"actor_id": actor})
    calls.on_offer({"actor_id": actor, "worker_id": worker, "seen": 2})
    assert actor not in calls.channels  # a call of ours is still on its way
    calls.on_offer({"actor_id": actor, "worker_id": worker, "seen": 3})
    assert calls.transport.sockets[0].endpoint == f"ipc:///tmp/s/zray_w_{worker.hex()}.sock"
    spec = {"actor_id": actor}
    assert calls.route(spec) and spec["direct"] == worker
    calls.on_offer({"actor_id": actor, "worker_id": b"", "seen": 0})  # withdrawn
    assert actor not in calls.channels and not calls.transport.sockets
    assert not calls.route({"actor_id": actor})


class Wire:
    def __init__(self):
        self.sent = []

    def send(self, ident, op, body):
        self.sent.append((ident, op, body))


class Objects:
    def __init__(self):
        self.refs = {}

    def incref(self, oid):
        if oid not in self.refs:
            return False
        self.refs[oid] += 1
        return True

    def decref(self, oid):
        self.refs[oid] -= 1


class Actor:
    def __init__(self, worker):
        self.aid = ids.new_id()
        self.worker = worker
        self.queue, self.inflight = [], {}
        self.callers, self.direct = {}, {}
        self.exiting = False


class Worker:
    def __init__(self):
        self.wid = ids.new_id()


def _task(actor, owner, **extra):
    return Task(dict({"task_id": ids.new_id(), "name": "A.f", "actor_id": actor.aid,
                      "method": "f"}, **extra), owner)


def test_the_agent_offers_after_a_call_and_runs_direct_calls_without_an_execute():
    wire = Wire()
    path = DirectPath(wire, Objects(), "ipc:///tmp/s/zray_agent_x.sock")
    actor = Actor(Worker())
    caller = b"c" * 16
    first = _task(actor, caller)
    path.counted(actor, first)
    path.offer(actor, first)
    assert wire.sent[-1][2] == {"actor_id": actor.aid, "worker_id": actor.worker.wid, "seen": 1}
    call = _task(actor, caller, direct=actor.worker.wid)
    assert path.admit(actor, call, alive=True)
    assert call.state is RUNNING and actor.inflight[call.tid] is call
    path.offer(actor, call)
    assert len(wire.sent) == 1  # already direct: no new offer
    stale = _task(actor, caller, direct=ids.new_id())  # sent to a worker since replaced
    assert not path.admit(actor, stale, alive=True) and stale.state is WAITING
    path.withdraw(actor)
    assert wire.sent[-1] == (caller, wire.sent[-1][1], {"actor_id": actor.aid,
                                                         "worker_id": b"", "seen": 0})


def test_a_task_done_before_its_submit_is_applied_when_the_submit_comes():
    objects = Objects()
    path = DirectPath(Wire(), objects, "ipc:///tmp/s/zray_agent_x.sock")
    inner = ids.object_id(ids.new_id(), 0)
    objects.refs[inner] = 1  # put by the worker, which lets go of it after the call
    finished = []
    path.call_done = lambda worker, body, raw: finished.append(body["task_id"])
    actor = Actor(Worker())
    call = _task(actor, b"c" * 16, direct=actor.worker.wid)
    result = {"object_id": call.returns[0], "kind": 1, "contained": [inner]}
    path.early_done(actor.worker, {"task_id": call.tid, "results": [result], "direct": True}, [])
    objects.decref(inner)
    path.run_due()
    assert not finished and objects.refs[inner] == 1  # held until the call is finished
    assert path.admit(actor, call, alive=True)
    path.run_due()
    assert finished == [call.tid] and not path.early and objects.refs[inner] == 0
