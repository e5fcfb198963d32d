"""The direct path's bookkeeping without processes: the caller's offer handling
(client/direct.py) and the agent's (agent/direct.py)."""

import pytest

from zray._private import ids, protocol
from zray._private.agent.direct import DirectPath
from zray._private.agent.tasks import RUNNING, WAITING, Task
from zray._private.client.direct import DirectCalls

pytestmark = pytest.mark.timeout(30)


class Transport:
    def __init__(self):
        self.sockets = []
        self.released = []
        self.outbox = type("Outbox", (), {"direct": None, "send": lambda _, frames:
                                          self.released.append(protocol.decode(frames)[1])})()

    def add_socket(self, kind, handler):
        sock = Socket()
        self.sockets.append(sock)
        return sock

    def remove_socket(self, sock, linger=0):
        self.sockets.remove(sock)

    def defer(self, callback):
        callback()


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
    assert actor not in calls.channels and not calls.transport.sockets and not calls.sockets
    assert not calls.route({"actor_id": actor})


def test_a_lease_routes_plain_tasks_of_its_function_and_says_how_many_went():
    calls = _calls()
    fid, worker = ids.new_id(), ids.new_id()
    plain = {"task_id": ids.new_id(), "function_id": fid, "num_returns": 1}
    assert not calls.route_task(dict(plain))
    calls.on_lease({"function_id": fid, "worker_id": worker})
    for _ in range(3):
        spec = dict(plain, task_id=ids.new_id())
        assert calls.route_task(spec) and spec["direct"] == worker
        assert not calls.route_task(dict(plain, task_id=ids.new_id()))  # one at a time
        calls.on_reply(protocol.encode(protocol.Op.DIRECT_REPLY, {
            "task_id": spec["task_id"], "results": []}))
    assert not calls.route_task(dict(plain, deps=[b"x" * 20]))  # not leasable: the agent's way
    assert not calls.route_task(dict(plain, function_id=ids.new_id()))
    other = ids.new_id()
    calls.on_lease({"function_id": fid, "worker_id": other})  # a second one: declined
    assert calls.transport.released == [{"function_id": fid, "worker_id": other, "sent": 0}]
    calls.on_lease({"function_id": fid, "worker_id": b""})  # taken back
    assert calls.transport.released[-1] == {"function_id": fid, "worker_id": worker, "sent": 3}
    assert not calls.leases and not calls.transport.sockets
    assert not calls.route_task(dict(plain))


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


# ---------------------------------------------------------------------- leases, in an agent
def test_a_worker_is_lent_after_a_task_and_taken_back_when_others_wait(tmp_path):
    from agent_parts import DRIVER, add_worker, done, export, make_agent, results_for, sent
    from agent_parts import spec as task_spec

    from zray._private.protocol import Op

    agent = make_agent(tmp_path, cpus=1, direct=True)
    wid = add_worker(agent, 101)
    export(agent)
    first = task_spec()
    agent.on_submit(DRIVER, {"tasks": [first]}, [])
    agent.dispatch()
    done(agent, wid, first["task_id"])
    fid = first["function_id"]
    assert sent(agent, Op.LEASE, DRIVER) == [{"function_id": fid, "worker_id": wid}]
    assert agent.resources.available["CPU"] == 0  # the lent worker keeps its CPU
    executes = len(sent(agent, Op.EXECUTE))
    direct = dict(task_spec(), direct=wid)
    agent.on_submit(DRIVER, {"tasks": [direct]}, [])
    agent.dispatch()
    assert agent.tasks.get(direct["task_id"]).state is RUNNING
    assert len(sent(agent, Op.EXECUTE)) == executes  # the caller sent it to the worker
    done(agent, wid, direct["task_id"])
    oid = ids.object_id(direct["task_id"], 0)
    assert agent.objects.get(oid) is not None and oid not in results_for(agent)  # answered
    waiting = task_spec(name="g", resources={"CPU": 1.0})  # another kind: it must wait
    agent.on_submit(DRIVER, {"tasks": [waiting]}, [])
    agent.dispatch()
    assert sent(agent, Op.LEASE, DRIVER)[-1] == {"function_id": fid, "worker_id": b""}
    assert agent.tasks.get(waiting["task_id"]).state is not RUNNING
    agent.handlers[Op.RELEASED](DRIVER, {"function_id": fid, "worker_id": wid, "sent": 1}, [])
    agent.dispatch()
    assert agent.tasks.get(waiting["task_id"]).state is RUNNING  # on the worker given back
