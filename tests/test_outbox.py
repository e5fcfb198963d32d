"""The client's outbox alone: what it sends, when, and in which order.  No sockets:
it sends into a list, and a fake clock decides what is a burst."""

import threading

import pytest

from zray._private import ids, protocol
from zray._private.client.objects import ObjectCache, PinEntry
from zray._private.client.outbox import BURST_GAP, FLUSH_AT, Outbox
from zray._private.protocol import Op

pytestmark = pytest.mark.timeout(30)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def tick(self, seconds: float) -> None:
        self.now += seconds


class Wire:
    """Collects what the outbox sends, decoded."""

    def __init__(self) -> None:
        self.sent = []
        self.lock = threading.Lock()

    def __call__(self, frames) -> None:
        assert self.lock.locked(), "the outbox sent without holding the lock"
        op, body, raw = protocol.decode(frames)
        self.sent.append((op, body, list(raw)))

    def ops(self):
        return [op for op, _, _ in self.sent]


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def wire():
    return Wire()


def _outbox(wire, clock, **kwargs):
    return Outbox(wire, lock=wire.lock, clock=clock, **kwargs)


def _spec(i: int) -> dict:
    return protocol.task_spec(task_id=ids.new_id(), name=f"t{i}")


def test_a_lone_item_is_sent_at_once(wire, clock):
    outbox = _outbox(wire, clock)
    spec = _spec(0)
    outbox.submit(spec)
    assert wire.sent == [(Op.SUBMIT, {"tasks": [spec]}, [])]
    clock.tick(1.0)
    outbox.put([b"o" * 20, [[0, 3]], []], b"abc")
    assert wire.sent[-1] == (Op.PUT, {"objects": [[b"o" * 20, [[0, 3]], []]]}, [b"abc"])


def test_a_burst_is_batched_in_order(wire, clock):
    woken = []
    outbox = _outbox(wire, clock, wake=lambda: woken.append(1))
    specs = [_spec(i) for i in range(1 + FLUSH_AT + 10)]
    outbox.submit(specs[0])                 # lone: sent
    for spec in specs[1:]:
        clock.tick(BURST_GAP / 10)          # a burst: queued, sent FLUSH_AT at a time
        outbox.submit(spec)
    assert woken, "a burst must ask the I/O thread to send it"
    assert outbox.has_queued
    outbox.flush()                          # what the I/O thread does a moment later
    assert not outbox.has_queued
    batches = [body["tasks"] for op, body, _ in wire.sent]
    assert [len(b) for b in batches] == [1, FLUSH_AT, 10]
    assert [s["task_id"] for b in batches for s in b] == [s["task_id"] for s in specs]


def test_kinds_keep_their_order_and_puts_keep_their_frames(wire, clock):
    outbox = _outbox(wire, clock)
    outbox.submit(_spec(0))
    clock.tick(BURST_GAP / 10)
    outbox.put([b"a" * 20, [[0, 1]], []], b"A")
    outbox.put([b"b" * 20, [[0, 1]], []], b"B")
    outbox.submit(_spec(1))
    outbox.send(protocol.encode(Op.FETCH, {"object_ids": [b"c" * 20]}))
    assert wire.ops() == [Op.SUBMIT, Op.PUT, Op.SUBMIT, Op.FETCH]
    assert wire.sent[1][1]["objects"][1][0] == b"b" * 20 and wire.sent[1][2] == [b"A", b"B"]


def test_finished_tasks_go_back_together_as_one_batch(wire, clock):
    outbox = _outbox(wire, clock)
    outbox.task_done({"task_id": b"1", "results": [], "error": ""}, [b"x"])
    clock.tick(BURST_GAP / 10)
    outbox.task_done({"task_id": b"2", "results": [], "error": ""}, [b"y", b"z"])
    outbox.task_done({"task_id": b"3", "results": [], "error": ""}, [])
    outbox.flush()
    assert wire.sent[0] == (Op.TASK_DONE, {"task_id": b"1", "results": [], "error": ""}, [b"x"])
    op, body, raw = wire.sent[1]
    assert [(b["task_id"], list(f)) for b, f in protocol.unpack_batch(body, raw)] == \
        [(b"2", [b"y", b"z"]), (b"3", [])]


def test_releases_wait_and_an_addref_stays_behind_earlier_releases(wire, clock):
    outbox = _outbox(wire, clock)
    outbox.decref(b"x")
    outbox.decref(b"y")
    outbox.send(protocol.encode(Op.FETCH, {"object_ids": [b"z"]}))
    assert wire.ops() == [Op.FETCH]         # a send does not take the releases along
    outbox.addref(b"x")                     # x again: its DECREF must go first
    outbox.flush()
    assert wire.sent[1:] == [(Op.DECREF, {"object_ids": [b"x", b"y"]}, []),
                             (Op.ADDREF, {"object_ids": [b"x"]}, [])]


def test_many_releases_are_sent_without_waiting(wire, clock):
    outbox = _outbox(wire, clock)
    for i in range(FLUSH_AT):
        outbox.decref(bytes([i]))
    assert wire.sent == [(Op.DECREF, {"object_ids": [bytes([i]) for i in range(FLUSH_AT)]}, [])]


def test_a_release_never_waits_for_the_lock(wire, clock):
    woken = []
    outbox = _outbox(wire, clock, wake=lambda: woken.append(1))
    with wire.lock:  # e.g. a finalizer running in the middle of a send
        for i in range(FLUSH_AT):
            outbox.decref(bytes([i]))
    assert not wire.sent and woken
    outbox.flush(releases=True)
    assert len(wire.sent[0][1]["object_ids"]) == FLUSH_AT


def test_an_unpin_taken_over_by_a_read_is_not_sent(wire, clock):
    cache = ObjectCache(pin_at_agent=lambda oid: 0, give_back=lambda oid, pin: None,
                        attach_arena=lambda: None)
    outbox = _outbox(wire, clock, unpin_due=cache.unpin_due)
    reused, dropped = PinEntry(64), PinEntry(128)
    outbox.unpin(b"r", reused)
    outbox.unpin(b"d", dropped)
    for pin in (reused, dropped):
        pin.count = 0                       # their last views are gone ...
    reused.count = 1                        # ... and a new read took this one over
    outbox.flush(releases=True)
    assert wire.sent == [(Op.UNPIN, {"object_ids": [b"d"]}, [])]
    assert reused.live and not dropped.live
    reused.count = 0
    outbox.unpin(b"r", reused)
    outbox.flush(releases=True)
    assert wire.sent[-1] == (Op.UNPIN, {"object_ids": [b"r"]}, [])


def test_nothing_is_sent_once_closed(wire, clock):
    outbox = _outbox(wire, clock)
    outbox.decref(b"x")
    with wire.lock:
        outbox.close_locked()               # what is left goes first
    outbox.submit(_spec(0))
    outbox.send(protocol.encode(Op.BYE, {}))
    outbox.flush(releases=True)
    assert wire.ops() == [Op.DECREF]


# ---------------------------------------------------------------------- direct calls
def _call(actor: bytes, **extra) -> dict:
    spec = protocol.task_spec(task_id=ids.new_id(), name="A.f", actor_id=actor, method="f",
                              args=extra)
    spec["direct"] = actor  # (its worker: one per actor here)
    return spec


def _direct_outbox(wire, clock):
    outbox = _outbox(wire, clock)
    outbox.direct = lambda specs: wire.sent.append(("CALL", [s["task_id"] for s in specs], []))
    return outbox


def test_a_direct_call_goes_now_and_its_submit_waits_for_the_next_message(wire, clock):
    outbox = _direct_outbox(wire, clock)
    call = _call(ids.new_id())
    outbox.submit_direct(call)
    assert wire.ops() == ["CALL"]
    outbox.flush()  # what a get does first: nothing for the agent yet
    assert wire.ops() == ["CALL"]
    outbox.send(protocol.encode(Op.FETCH, {"object_ids": []}))
    assert wire.ops() == ["CALL", Op.SUBMIT, Op.FETCH]  # the SUBMIT goes ahead of it
    assert wire.sent[1][1]["tasks"][0]["task_id"] == call["task_id"]


def test_releases_never_overtake_a_waiting_submit(wire, clock):
    outbox = _direct_outbox(wire, clock)
    call = _call(ids.new_id())
    outbox.submit_direct(call)
    outbox.decref(protocol.returns_of(call)[0])
    outbox.flush(releases=True)
    assert wire.ops() == ["CALL", Op.SUBMIT, Op.DECREF]


def test_a_call_with_ref_arguments_is_submitted_before_it_goes(wire, clock):
    outbox = _direct_outbox(wire, clock)
    dep = ids.object_id(ids.new_id(), 0)
    outbox.submit_direct(_call(ids.new_id(), deps=[dep]))
    assert wire.ops() == [Op.SUBMIT, "CALL"]


def test_a_burst_of_direct_calls_goes_in_one_message_per_actor(wire, clock):
    outbox = _direct_outbox(wire, clock)
    actors = [ids.new_id(), ids.new_id()]
    for i in range(10):
        outbox.submit_direct(_call(actors[i % 2]))
        clock.tick(BURST_GAP / 10)
    outbox.flush()
    calls = [ids_ for op, ids_, _ in wire.sent if op == "CALL"]
    assert [len(c) for c in calls] == [1, 5, 4]  # the first alone, then one per actor
    assert Op.SUBMIT not in wire.ops()
    outbox.flush(releases=True)
    assert wire.ops()[-1] == Op.SUBMIT and len(wire.sent[-1][1]["tasks"]) == 10


def test_a_waiting_submit_keeps_its_place_among_those_queued_before_it(wire, clock):
    outbox = _direct_outbox(wire, clock)
    first = _spec(0)
    outbox.submit(first)                       # goes at once
    clock.tick(BURST_GAP / 10)
    queued = _spec(1)
    outbox.submit(queued)                      # a burst: queued
    direct = _call(ids.new_id())
    outbox.submit_direct(direct)               # queued behind it, sends nothing itself
    after = _call(ids.new_id(), deps=[protocol.returns_of(queued)[0]])
    outbox.submit_direct(after)                # names the queued task's result
    submitted = [s["task_id"] for op, body, _ in wire.sent if op == Op.SUBMIT
                 for s in body["tasks"]]
    assert submitted == [first["task_id"], queued["task_id"], direct["task_id"],
                         after["task_id"]]


def test_a_direct_calls_task_done_waits_and_the_releases_behind_it_too(wire, clock):
    woken = []
    outbox = Outbox(wire, lock=wire.lock, clock=clock, wake=lambda: woken.append(1))
    oid = ids.object_id(ids.new_id(), 0)
    outbox.task_done({"task_id": ids.new_id(), "results": []}, [], lazy=True)
    outbox.decref(oid)
    outbox.flush_idle()  # a worker with nothing to do: the I/O thread will send them
    assert wire.ops() == [] and woken
    outbox.flush(releases=True)  # ... as it does here
    assert wire.ops() == [Op.TASK_DONE, Op.DECREF]
    outbox.task_done({"task_id": ids.new_id(), "results": []}, [])  # not lazy: at once
    assert wire.ops()[-1] == Op.TASK_DONE
