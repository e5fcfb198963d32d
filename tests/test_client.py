"""The client against a stand-in agent: what goes on the wire, and how batches
coming back are read.  One process, a ROUTER in a thread, ipc in a temp dir."""

import gc
import os
import threading

import pytest
import zmq

from zray import exceptions
from zray._private import ids, protocol, serialization, state
from zray._private.client import Client
from zray._private.protocol import ObjectKind, Op
from zray._private.worker_main import Worker
from zray.object_ref import ObjectRef

pytestmark = pytest.mark.timeout(30)


class FakeAgent:
    """Answers HELLO with WELCOME and records every other message it gets.

    ``answers[op]`` (set by a test) gives the reply frames for a request.
    """

    def __init__(self, address: str, arena: str = "") -> None:
        self.arena = arena
        self.answers = {}
        self.ctx = zmq.Context()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.bind(address)
        self.messages = []          # (op, body, raw frames)
        self.peer = None
        self.changed = threading.Condition()
        self.outbox = []            # frames to send to the peer, from the test thread
        self.running = True
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        while self.running:
            if dict(poller.poll(10)):
                ident, *frames = self.router.recv_multipart()
                op, body, raw = protocol.decode(frames)
                if op == Op.HELLO:
                    self.peer = ident
                    self.router.send_multipart([ident, *protocol.encode(Op.WELCOME, {
                        "node_id": b"n" * 16, "arena": self.arena, "arena_size": 0,
                        "session_dir": "", "pid": os.getpid(), "ip": "127.0.0.1"})])
                else:
                    with self.changed:
                        self.messages.append((op, body, raw))
                        self.changed.notify_all()
                    answer = self.answers.get(op)
                    if answer is not None:
                        self.router.send_multipart([ident, *answer(body)])
            with self.changed:
                while self.outbox:
                    self.router.send_multipart([self.peer, *self.outbox.pop(0)])

    def send(self, frames) -> None:
        with self.changed:
            self.outbox.append(frames)

    def wait_for(self, predicate, timeout: float = 10.0):
        with self.changed:
            assert self.changed.wait_for(lambda: predicate(self.messages), timeout), \
                self.messages
            return list(self.messages)

    def close(self) -> None:
        self.running = False
        self.thread.join()
        self.router.close(0)
        self.ctx.term()


@pytest.fixture
def arena():
    from zray._private.object_store import Arena

    arena = Arena.create(f"zray_test_client_{os.getpid()}", 1 << 20)
    try:
        yield arena
    finally:
        arena.close()
        arena.unlink()


@pytest.fixture
def connected(tmp_path, arena):
    agent = FakeAgent(f"ipc://{tmp_path}/agent.sock", arena.name)
    client = Client(f"ipc://{tmp_path}/agent.sock", "driver")
    client.connect(timeout=10)
    state.client = client  # refs made now are counted by this client
    try:
        yield agent, client
    finally:
        state.client = None
        client.close()
        agent.close()


def _spec(n: int = 0) -> dict:
    return protocol.task_spec(task_id=ids.new_id(), name=f"task{n}", function_id=b"f" * 16)


def _submitted(messages):
    return [spec for op, body, _ in messages if op == Op.SUBMIT for spec in body["tasks"]]


def test_a_lone_submit_is_sent_and_a_burst_is_batched(connected):
    agent, client = connected
    lone = client.submit(_spec())
    agent.wait_for(lambda m: len(_submitted(m)) == 1)
    specs = [_spec(i) for i in range(200)]
    refs = [client.submit(spec) for spec in specs]
    messages = agent.wait_for(lambda m: len(_submitted(m)) == 201)
    assert [s["task_id"] for s in _submitted(messages)[1:]] == \
        [s["task_id"] for s in specs]  # in order
    submits = [m for m in messages if m[0] == Op.SUBMIT]
    assert len(submits) <= 100, "a burst of 200 submissions went out one by one"
    del lone, refs


def test_inline_puts_travel_together_with_their_frames(connected):
    agent, client = connected
    refs = [client.put({"value": i}) for i in range(100)]
    messages = agent.wait_for(
        lambda m: sum(len(b["objects"]) for op, b, _ in m if op == Op.PUT) == 100)
    puts = [(body, raw) for op, body, raw in messages if op == Op.PUT]
    assert all(len(body["objects"]) == len(raw) for body, raw in puts)
    seen = [(entry[0], serialization.deserialize(memoryview(frame), entry[1]))
            for body, raw in puts for entry, frame in zip(body["objects"], raw)]
    assert seen == [(ref._id, {"value": i}) for i, ref in enumerate(refs)]
    assert client.get(refs[:3], timeout=5) == [{"value": 0}, {"value": 1}, {"value": 2}]


def test_a_batch_of_objects_resolves_every_ref(connected):
    agent, client = connected
    refs = [client.submit(_spec(i))[0] for i in range(3)]
    items = []
    for i, ref in enumerate(refs):
        ser = serialization.serialize(i * 10)
        items.append(({"object_id": ref._id, "kind": ObjectKind.INLINE, "layout": ser.layout,
                       "frame": 0}, [ser.to_bytes()]))
    body, frames = protocol.pack_batch(items)
    agent.send(protocol.encode(Op.OBJECT, body, *frames))
    assert client.get(refs, timeout=10) == [0, 10, 20]


def test_a_batch_of_tasks_is_queued_in_order(tmp_path):
    agent = FakeAgent(f"ipc://{tmp_path}/agent.sock")
    client = Client(f"ipc://{tmp_path}/agent.sock", "worker")
    worker = Worker(client)
    try:
        client.connect(timeout=10)
        specs = [_spec(i) for i in range(3)]
        body, frames = protocol.pack_batch([({"task": spec, "epoch": 0}, []) for spec in specs])
        agent.send(protocol.encode(Op.EXECUTE, body, *frames))
        got = [worker.next_task() for _ in specs]
        assert [(op, task["task"]["task_id"]) for op, task, _ in got] == \
            [(Op.EXECUTE, spec["task_id"]) for spec in specs]
    finally:
        client.close()
        agent.close()


def test_a_malformed_batch_is_ignored_and_the_client_lives_on(connected):
    agent, client = connected
    ref = client.submit(_spec())[0]
    agent.send(protocol.encode(Op.OBJECT, {"batch": [[{"object_id": ref._id}, 5]]}))  # no frames
    agent.send(protocol.encode(Op.OBJECT, {"object_id": ref._id}))  # no kind
    ser = serialization.serialize("fine")
    agent.send(protocol.encode(Op.OBJECT, {"object_id": ref._id, "kind": ObjectKind.INLINE,
                                           "layout": ser.layout, "frame": 0}, ser.to_bytes()))
    assert client.get([ref], timeout=10) == ["fine"]


def _ops(messages, op):
    return [body for got, body, _ in messages if got == op]


def _shared(arena, value, offset: int = 4096):
    """``value`` written into the arena as the agent would hold it."""
    ser = serialization.serialize(value)
    ser.write_into(arena.view(offset, ser.size))
    return {"kind": ObjectKind.SHARED, "layout": ser.layout, "offset": offset,
            "size": ser.size}


def test_get_of_a_shared_object_adopts_the_pin_its_fetch_asked_for(connected, arena):
    np = pytest.importorskip("numpy")
    agent, client = connected
    ref = ObjectRef(ids.object_id(ids.new_id(), 0))  # made elsewhere
    desc = _shared(arena, np.arange(1000))
    agent.answers[Op.FETCH] = lambda body: protocol.encode(
        Op.OBJECT, {"object_id": body["object_ids"][0], **desc, "pinned": body.get("pin", False)})
    value = client.get([ref], timeout=10)[0]
    assert value[-1] == 999 and not value.flags.writeable
    messages = agent.wait_for(lambda m: _ops(m, Op.FETCH))
    assert _ops(messages, Op.FETCH) == [{"object_ids": [ref._id], "pin": True}]
    again = client.get([ref], timeout=10)[0]  # the pin is still live: reused
    del value, again
    gc.collect()
    client.flush(releases=True)
    messages = agent.wait_for(lambda m: _ops(m, Op.UNPIN))
    assert not _ops(messages, Op.PIN)
    assert [oid for body in _ops(messages, Op.UNPIN) for oid in body["object_ids"]] == [ref._id]


def test_a_pin_nobody_reads_goes_back_with_the_lazy_unpin(connected, arena):
    agent, client = connected
    ref = ObjectRef(ids.object_id(ids.new_id(), 0))
    desc = _shared(arena, b"x" * 200_000)
    agent.answers[Op.FETCH] = lambda body: protocol.encode(
        Op.OBJECT, {"object_id": body["object_ids"][0], **desc, "pinned": True})
    with pytest.raises(exceptions.GetTimeoutError):  # the reply comes after the get gave up
        client.get([ref], timeout=0)
    oid = ref._id
    assert client.wait_until(lambda: client.is_ready(oid), timeout=10)
    del ref  # nobody read it: the pin goes back with the ref
    client.flush(releases=True)
    messages = agent.wait_for(lambda m: _ops(m, Op.UNPIN) and _ops(m, Op.DECREF))
    assert not _ops(messages, Op.PIN)


def test_wait_fetches_without_pinning(connected):
    agent, client = connected
    ref = ObjectRef(ids.object_id(ids.new_id(), 0))
    assert not client.wait_objects([ref._id], 1, timeout=0)
    messages = agent.wait_for(lambda m: _ops(m, Op.FETCH))
    assert _ops(messages, Op.FETCH) == [{"object_ids": [ref._id]}]


def test_an_error_reply_raises_the_exception_it_names(connected, arena):
    agent, client = connected
    ref = client.submit(_spec())[0]
    agent.send(protocol.encode(Op.OBJECT, {"object_id": ref._id, **_shared(arena, b"y" * 10)}))
    agent.answers[Op.PIN] = lambda body: protocol.encode(Op.ERROR, {
        "req": body["req"], "error_type": "ObjectLostError", "message": "gone"})
    with pytest.raises(exceptions.ObjectLostError, match="gone"):
        client.get([ref], timeout=10)
    agent.answers[Op.RESERVE_NAME] = lambda body: protocol.encode(
        Op.NAME_RESERVED, {"req": body["req"]})
    client.reserve_name("free", b"a" * 16, b"o" * 20, {"class_name": "A", "methods": {}})
    agent.answers[Op.RESERVE_NAME] = lambda body: protocol.encode(
        Op.ERROR, protocol.error_body(body["req"], ValueError("taken")))
    with pytest.raises(ValueError, match="taken"):
        client.reserve_name("taken", b"a" * 16, b"o" * 20, {})
    request = _ops(agent.messages, Op.RESERVE_NAME)[0]
    assert set(request) == {"req", "namespace", "name", "actor_id", "anchor", "meta",
                            "get_if_exists"}
    assert request["namespace"] == "anonymous-" + client.job_id.hex()


def test_verbs_put_their_fields_on_the_wire(connected):
    agent, client = connected
    client.cancel(b"t" * 16, force=True)
    client.kill_actor(b"a" * 16, no_restart=False)
    client.log(b"j" * 16, "task", ["line"], stderr=True)
    client.task_done({"task_id": b"t" * 16, "results": [], "error": ""}, [])
    messages = agent.wait_for(lambda m: _ops(m, Op.TASK_DONE))
    assert _ops(messages, Op.CANCEL) == [{"task_id": b"t" * 16, "force": True}]
    assert _ops(messages, Op.KILL) == [{"actor_id": b"a" * 16, "no_restart": False}]
    assert _ops(messages, Op.LOG) == [{"job_id": b"j" * 16, "name": "task", "pid": os.getpid(),
                                       "stderr": True, "lines": ["line"]}]
    assert _ops(messages, Op.TASK_DONE) == [{"task_id": b"t" * 16, "results": [], "error": ""}]


def test_a_worker_blocks_only_while_a_task_runs(tmp_path):
    agent = FakeAgent(f"ipc://{tmp_path}/agent.sock")
    client = Client(f"ipc://{tmp_path}/agent.sock", "worker")
    worker = Worker(client)
    try:
        client.connect(timeout=10)
        oid = ids.object_id(ids.new_id(), 0)
        client.wait_objects([oid], 1, timeout=0.01)
        worker.current_task = _spec()
        client.wait_objects([oid], 1, timeout=0)  # a mere look: nothing to lend
        client.wait_objects([oid], 1, timeout=0.01)
        messages = agent.wait_for(lambda m: _ops(m, Op.UNBLOCKED))
        assert [op for op, _, _ in messages if op in (Op.BLOCKED, Op.UNBLOCKED)] == \
            [Op.BLOCKED, Op.UNBLOCKED]
        assert worker.blocked_count == 1
    finally:
        client.close()
        agent.close()


def test_an_interrupt_skips_a_queued_task(tmp_path):
    agent = FakeAgent(f"ipc://{tmp_path}/agent.sock")
    client = Client(f"ipc://{tmp_path}/agent.sock", "worker")
    worker = Worker(client)
    try:
        client.connect(timeout=10)
        spec = _spec()
        agent.send(protocol.encode(Op.EXECUTE, {"task": spec, "args": []}))
        agent.send(protocol.encode(Op.INTERRUPT, {"task_id": spec["task_id"]}))
        client.wait_until(lambda: spec["task_id"] in worker.skip, timeout=10)
        assert worker.skip == {spec["task_id"]}
    finally:
        client.close()
        agent.close()
