"""The node agent's object table, alone: refs, sealing, fetches, pins, spilling."""

import pickle
import time

import pytest

from agent_parts import DRIVER, export, make_agent, results_for, sent, spec, submit
from zray import exceptions
from zray._private import ids, protocol
from zray._private.agent.early_refs import EARLY_REF_GRACE
from zray._private.protocol import ObjectKind, Op

pytestmark = pytest.mark.timeout(30)

OTHER = b"O" * 16


@pytest.fixture
def agent(tmp_path):
    agent = make_agent(tmp_path, store=4096)
    agent.on_hello(OTHER, {"kind": "driver", "pid": 2, "job_id": b"other"}, [])
    yield agent
    agent.workers.template.close()


def oid() -> bytes:
    return ids.object_id(ids.new_id(), 0)


def put(agent, ident, object_id, data=b"xy", contained=()):
    agent.objects.on_put(ident, {"objects": [[object_id, [[0, len(data)]], list(contained)]]},
                         [data])


def put_shared(agent, ident, object_id, size):
    agent.objects.on_alloc(ident, {"req": 1, "object_id": object_id, "size": size}, [])
    offset = sent(agent, Op.ALLOC_REPLY, ident)[-1]["offset"]
    agent.objects.on_seal(ident, {"object_id": object_id, "offset": offset, "size": size,
                                  "layout": [[0, size]]}, [])
    return offset


def test_a_put_lives_while_a_client_holds_it_and_is_freed_with_the_last_ref(agent):
    freed = []
    agent.objects.freed_listeners.append(lambda object_id, obj: freed.append(object_id))
    a = oid()
    put(agent, DRIVER, a)
    agent.objects.on_addref(OTHER, {"object_ids": [a]}, [])
    agent.objects.on_decref(DRIVER, {"object_ids": [a]}, [])
    assert agent.objects.get(a) is not None and freed == []
    agent.objects.on_decref(DRIVER, {"object_ids": [a]}, [])  # twice is still once
    assert agent.objects.get(a) is not None
    agent.objects.on_decref(OTHER, {"object_ids": [a]}, [])
    assert agent.objects.get(a) is None and freed == [a]


def test_an_object_keeps_the_objects_pickled_inside_it(agent):
    inner, outer = oid(), oid()
    put(agent, DRIVER, inner)
    put(agent, DRIVER, outer, contained=[inner])
    agent.objects.on_decref(DRIVER, {"object_ids": [inner]}, [])
    assert agent.objects.get(inner) is not None  # outer holds it
    agent.objects.on_decref(DRIVER, {"object_ids": [outer]}, [])
    assert agent.objects.get(inner) is None and agent.objects.get(outer) is None


def test_a_fetch_of_a_pending_object_is_answered_when_it_is_sealed(agent):
    a = oid()
    agent.objects.on_addref(DRIVER, {"object_ids": [a]}, [])
    agent.objects.on_fetch(OTHER, {"object_ids": [a]}, [])
    assert a not in results_for(agent, OTHER)
    put(agent, DRIVER, a, b"hi")
    desc, data = results_for(agent, OTHER)[a]
    assert desc["kind"] == ObjectKind.INLINE and bytes(data) == b"hi"


def test_a_fetch_of_an_unknown_object_answers_object_lost(agent):
    a = oid()
    agent.objects.on_fetch(DRIVER, {"object_ids": [a]}, [])
    desc, data = results_for(agent)[a]
    assert desc["kind"] == ObjectKind.ERROR
    assert isinstance(pickle.loads(data), exceptions.ObjectLostError)


def test_a_fetch_to_read_pins_shared_objects_and_the_pins_go_with_the_client(agent):
    a = oid()
    offset = put_shared(agent, DRIVER, a, 1000)
    agent.objects.on_addref(OTHER, {"object_ids": [a]}, [])
    agent.objects.on_fetch(OTHER, {"object_ids": [a], "pin": True}, [])
    desc, _ = results_for(agent, OTHER)[a]
    assert desc["pinned"] and desc["offset"] == offset and desc["size"] == 1000
    assert agent.objects.get(a).pins == 1
    agent.objects.on_fetch(DRIVER, {"object_ids": [a]}, [])  # a wait: no pin
    assert "pinned" not in results_for(agent, DRIVER)[a][0]
    agent.drop_client(OTHER)
    assert agent.objects.get(a).pins == 0


def test_pins_keep_objects_from_being_spilled_and_unpinned_ones_spill(agent):
    a, b, c = oid(), oid(), oid()
    put_shared(agent, DRIVER, a, 1500)
    put_shared(agent, DRIVER, b, 1500)
    agent.objects.on_pin(DRIVER, {"req": 3, "object_id": a}, [])
    put_shared(agent, DRIVER, c, 1500)  # the store holds two: b goes to disk
    assert not agent.objects.get(a).spilled and agent.objects.get(b).spilled
    assert agent.objects.stats()["spilled"] == 1500
    agent.objects.on_unpin(DRIVER, {"object_ids": [a]}, [])
    agent.objects.on_pin(DRIVER, {"req": 4, "object_id": b}, [])  # comes back from disk
    assert not agent.objects.get(b).spilled and agent.objects.get(a).spilled
    assert sent(agent, Op.PIN_REPLY)[-1]["offset"] == agent.objects.get(b).offset


def test_freeing_gives_the_store_back(agent):
    a = oid()
    put_shared(agent, DRIVER, a, 3000)
    assert agent.objects.stats()["used"] >= 3000
    agent.objects.on_decref(DRIVER, {"object_ids": [a]}, [])
    assert agent.objects.stats() == {"used": 0, "capacity": 4096, "objects": 0, "spilled": 0}


def test_an_alloc_that_cannot_fit_is_an_object_store_full_error_reply(agent):
    agent.handle([_frame(DRIVER), _frame(protocol.encode(
        Op.ALLOC, {"req": 7, "object_id": oid(), "size": 1 << 20})[0])])
    error = sent(agent, Op.ERROR, DRIVER)[-1]
    assert error["req"] == 7 and error["error_type"] == "ObjectStoreFullError"
    assert isinstance(exceptions.from_error(error["error_type"], error["message"]),
                      exceptions.ObjectStoreFullError)


def test_a_pin_of_an_object_not_here_is_an_object_lost_error_reply(agent):
    agent.handle([_frame(DRIVER), _frame(protocol.encode(
        Op.PIN, {"req": 8, "object_id": oid()})[0])])
    error = sent(agent, Op.ERROR, DRIVER)[-1]
    assert error["req"] == 8 and error["error_type"] == "ObjectLostError"


def test_a_malformed_message_gets_an_error_reply_and_changes_nothing(agent):
    before = agent.objects.stats()
    agent.handle([_frame(DRIVER), _frame(b"\x93junk")])
    agent.handle([_frame(DRIVER), _frame(protocol.encode(Op.PUT, {"objects": [[oid(), [], []]]})[0])])
    errors = sent(agent, Op.ERROR, DRIVER)
    assert [e["error_type"] for e in errors] == ["ProtocolError", "ProtocolError"]
    assert agent.objects.stats() == before


class _frame:
    """What a ROUTER hands the agent: frames with ``bytes`` and ``buffer``."""

    def __init__(self, data: bytes) -> None:
        self.bytes = data
        self.buffer = memoryview(data)

    def __len__(self) -> int:
        return len(self.bytes)


def test_space_allocated_and_never_sealed_goes_back_with_its_client(agent):
    first, second = oid(), oid()
    for object_id in (first, first, second):  # the same object twice: the first space goes
        agent.objects.on_alloc(OTHER, {"req": 1, "object_id": object_id, "size": 1000}, [])
    assert 2000 <= agent.objects.used < 3000   # two spaces (sizes round up to a block)
    agent.drop_client(OTHER)
    assert agent.objects.used == 0


def test_a_seal_must_name_space_its_client_allocated_for_that_object(agent):
    object_id = oid()
    agent.objects.on_alloc(OTHER, {"req": 1, "object_id": object_id, "size": 1000}, [])
    offset = sent(agent, Op.ALLOC_REPLY, OTHER)[-1]["offset"]
    for ident, at in ((OTHER, offset + 8), (DRIVER, offset)):
        with pytest.raises(ValueError, match="allocated no such space"):
            agent.objects.on_seal(ident, {"object_id": object_id, "offset": at, "size": 1000,
                                          "layout": [[0, 1000]]}, [])
    assert agent.objects.get(object_id) is None
    agent.objects.on_seal(OTHER, {"object_id": object_id, "offset": offset, "size": 1000,
                                  "layout": [[0, 1000]]}, [])
    assert agent.objects.get(object_id).state.name == "READY"


def test_a_ref_to_an_object_nothing_makes_stops_its_readers_and_an_early_one_works(agent):
    stray, waited, held, early = oid(), oid(), oid(), oid()
    agent.objects.on_addref(OTHER, {"object_ids": [stray, held, early]}, [])
    agent.objects.on_addref(DRIVER, {"object_ids": [waited]}, [])
    agent.objects.on_fetch(OTHER, {"object_ids": [stray]}, [])       # a reader waits for it
    export(agent)
    making = spec("making")                                  # no worker: it stays queued
    made = ids.object_id(making["task_id"], 0)
    agent.objects.on_addref(OTHER, {"object_ids": [made]}, [])       # before its SUBMIT
    [result, _] = submit(agent, spec("needs", deps=[waited]), making)   # waits for it too
    put(agent, DRIVER, early, b"hi")     # an early ADDREF's object comes after it
    now = time.monotonic()
    agent.objects.tick(now + EARLY_REF_GRACE / 2)
    assert agent.objects.get(stray) is not None   # within its grace: it may yet come
    agent.objects.tick(now + EARLY_REF_GRACE + 2)
    # Those read went; one only held stays (it may name an object on another node).
    assert set(agent.objects.objects) == {early, made, result, held}
    desc, data = results_for(agent, OTHER)[stray]
    assert desc["kind"] == ObjectKind.ERROR and "not known to this node" in str(
        pickle.loads(data))
    desc, data = results_for(agent)[result]                  # the task failed, not stuck
    assert isinstance(pickle.loads(data), exceptions.ObjectLostError)
    agent.objects.on_decref(OTHER, {"object_ids": [stray]}, [])   # nothing to let go now
    agent.objects.on_decref(DRIVER, {"object_ids": [early]}, [])  # OTHER's ref holds it
    agent.objects.on_fetch(OTHER, {"object_ids": [early]}, [])
    assert bytes(results_for(agent, OTHER)[early][1]) == b"hi"
    assert agent.objects.get(made).refs == 2   # its task makes it: both refs kept


def test_refs_to_unknown_objects_are_kept_up_to_a_limit_the_oldest_going_first(agent):
    agent.objects.early.limit = 3
    first, *rest = [oid() for _ in range(4)]
    agent.objects.on_addref(OTHER, {"object_ids": [first]}, [])
    put(agent, DRIVER, rest[0], b"ok")   # known: its ADDREF makes no entry
    agent.objects.on_addref(OTHER, {"object_ids": rest}, [])
    assert agent.objects.get(first) is not None
    agent.objects.on_addref(DRIVER, {"object_ids": [oid()]}, [])   # one too many
    assert agent.objects.get(first) is None and len(agent.objects.early.since) == 3
    assert all(agent.objects.get(o) is not None for o in rest)
    agent.objects.on_decref(OTHER, {"object_ids": [first]}, [])   # its ref went already
