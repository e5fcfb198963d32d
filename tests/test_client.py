"""The client against a stand-in agent: what goes on the wire, and how batches
coming back are read.  One process, a ROUTER in a thread, ipc in a temp dir."""

import os
import threading

import pytest
import zmq

from zray._private import protocol, serialization, state
from zray._private.client import Client
from zray._private.protocol import ObjectKind, Op

pytestmark = pytest.mark.timeout(30)


class FakeAgent:
    """Answers HELLO with WELCOME and records every other message it gets."""

    def __init__(self, address: str) -> None:
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
                        "node": b"n" * 16, "pid": os.getpid(), "arena": ""})])
                else:
                    with self.changed:
                        self.messages.append((op, body, raw))
                        self.changed.notify_all()
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
def connected(tmp_path):
    agent = FakeAgent(f"ipc://{tmp_path}/agent.sock")
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
    return {"t": protocol.new_id(), "f": b"f" * 16, "n": f"task{n}", "r": 1}


def _submitted(messages):
    return [spec for op, body, _ in messages if op == Op.SUBMIT for spec in body["t"]]


def test_a_lone_submit_is_sent_and_a_burst_is_batched(connected):
    agent, client = connected
    lone = client.submit(_spec(), 1)
    agent.wait_for(lambda m: len(_submitted(m)) == 1)
    specs = [_spec(i) for i in range(200)]
    refs = [client.submit(spec, 1) for spec in specs]
    messages = agent.wait_for(lambda m: len(_submitted(m)) == 201)
    assert [s["t"] for s in _submitted(messages)[1:]] == [s["t"] for s in specs]  # in order
    submits = [m for m in messages if m[0] == Op.SUBMIT]
    assert len(submits) <= 100, "a burst of 200 submissions went out one by one"
    del lone, refs


def test_inline_puts_travel_together_with_their_frames(connected):
    agent, client = connected
    refs = [client.put({"value": i}) for i in range(100)]
    messages = agent.wait_for(
        lambda m: sum(len(b["p"]) for op, b, _ in m if op == Op.PUT) == 100)
    puts = [(body, raw) for op, body, raw in messages if op == Op.PUT]
    assert all(len(body["p"]) == len(raw) for body, raw in puts)
    seen = [(entry[0], serialization.deserialize(memoryview(frame), entry[1]))
            for body, raw in puts for entry, frame in zip(body["p"], raw)]
    assert seen == [(ref._id, {"value": i}) for i, ref in enumerate(refs)]
    assert client.get(refs[:3], timeout=5) == [{"value": 0}, {"value": 1}, {"value": 2}]


def test_a_batch_of_objects_resolves_every_ref(connected):
    agent, client = connected
    refs = [client.submit(_spec(i), 1)[0] for i in range(3)]
    items = []
    for i, ref in enumerate(refs):
        ser = serialization.serialize(i * 10)
        items.append(({"o": ref._id, "k": ObjectKind.INLINE, "l": ser.layout},
                      [ser.to_bytes()]))
    body, frames = protocol.pack_batch(items)
    agent.send(protocol.encode(Op.OBJECT, body, *frames))
    assert client.get(refs, timeout=10) == [0, 10, 20]


def test_a_batch_of_tasks_is_queued_in_order(tmp_path):
    agent = FakeAgent(f"ipc://{tmp_path}/agent.sock")
    worker = Client(f"ipc://{tmp_path}/agent.sock", "worker")
    try:
        worker.connect(timeout=10)
        specs = [_spec(i) for i in range(3)]
        body, frames = protocol.pack_batch([({"s": spec, "ep": 0}, []) for spec in specs])
        agent.send(protocol.encode(Op.EXECUTE, body, *frames))
        got = [worker.next_task() for _ in specs]
        assert [(op, task["s"]["t"]) for op, task, _ in got] == \
            [(Op.EXECUTE, spec["t"]) for spec in specs]
    finally:
        worker.close()
        agent.close()


def test_a_malformed_batch_is_ignored_and_the_client_lives_on(connected):
    agent, client = connected
    ref = client.submit(_spec(), 1)[0]
    agent.send(protocol.encode(Op.OBJECT, {"batch": [[{"o": ref._id}, 5]]}))  # no frames
    ser = serialization.serialize("fine")
    agent.send(protocol.encode(Op.OBJECT, {"o": ref._id, "k": ObjectKind.INLINE,
                                           "l": ser.layout}, ser.to_bytes()))
    assert client.get([ref], timeout=10) == ["fine"]
