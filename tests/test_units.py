"""Unit tests of the protocol and serialization modules: no processes."""

import pickle

import msgpack
import numpy as np
import pytest

from zray import exceptions
from zray._private import ids, protocol, serialization
from zray._private.protocol import Op


def test_encode_decode_round_trip():
    spec = protocol.task_spec(task_id=ids.new_id(), name="f", function_id=b"\x00\x01",
                              args={"args": b"pickled", "args_layout": [[0, 7]]})
    frames = protocol.encode(Op.SUBMIT, {"tasks": [spec]}, b"raw")
    assert msgpack.unpackb(frames[0])[0] == protocol.VERSION == 2
    op, body, raw = protocol.decode(frames)
    assert op == Op.SUBMIT and body == {"tasks": [spec]} and raw == [b"raw"]


@pytest.mark.parametrize("header", [
    b"\xff\xfe junk",
    msgpack.packb([protocol.VERSION + 1, int(Op.HELLO), {}]),
    msgpack.packb([protocol.VERSION, 9999, {}]),
    msgpack.packb([protocol.VERSION, int(Op.HELLO), [1, 2]]),
])
def test_decode_rejects_bad_headers(header):
    with pytest.raises(protocol.ProtocolError):
        protocol.decode([header])


def test_batch_round_trip_keeps_each_messages_frames():
    items = [({"task_id": b"a"}, [b"x", b"y"]), ({"task_id": b"b"}, []),
             ({"task_id": b"c"}, [b"z"])]
    body, frames = protocol.pack_batch(items)
    op, body, raw = protocol.decode(protocol.encode(Op.TASK_DONE, body, *frames))
    assert protocol.unpack_batch(body, raw) == [(b, list(f)) for b, f in items]
    single = {"task_id": b"d"}
    assert protocol.unpack_batch(single, [b"q"]) == [(single, [b"q"])]  # not a batch


@pytest.mark.parametrize("body, raw", [
    ({"batch": [[{}, 2]]}, [b"only one"]),
    ({"batch": [[{}, 0]]}, [b"extra"]),
    ({"batch": [["not a body", 0]]}, []),
    ({"batch": [[{}, -1]]}, []),
    ({"batch": 5}, []),
])
def test_unpack_batch_rejects_miscounted_frames(body, raw):
    with pytest.raises(protocol.ProtocolError):
        protocol.unpack_batch(body, raw)


def test_task_spec_keeps_required_fields_and_drops_false_optional_ones():
    tid = ids.new_id()
    spec = protocol.task_spec(task_id=tid, name="f", function_id=b"fn",
                              args={"deps": [b"d" * 20], "args_object": b"d" * 20},
                              actor_id=b"", new_actor=False, max_calls=0, detached=False)
    assert spec == {"task_id": tid, "name": "f", "function_id": b"fn", "num_returns": 1,
                    "max_retries": protocol.DEFAULT_MAX_RETRIES, "deps": [b"d" * 20],
                    "args_object": b"d" * 20}
    assert "resources" not in spec  # absent means {"CPU": 1}; {} would mean nothing
    assert protocol.task_spec(task_id=tid, name="f", resources={})["resources"] == {}
    actor = protocol.task_spec(task_id=tid, name="A.__init__", actor_id=b"a" * 16,
                               new_actor=True, max_restarts=2, actor_name="counter")
    assert actor["actor_id"] == b"a" * 16 and actor["new_actor"] is True
    assert actor["max_restarts"] == 2 and actor["actor_name"] == "counter"
    assert set(spec) | set(actor) <= set(protocol.TaskSpec.__annotations__)


def test_task_spec_rejects_an_unknown_field():
    with pytest.raises(TypeError, match="'q'"):
        protocol.task_spec(task_id=ids.new_id(), name="f", q={"CPU": 1})


def test_returns_of_names_each_result():
    tid = ids.new_id()
    spec = protocol.task_spec(task_id=tid, name="f", num_returns=3)
    assert protocol.returns_of(spec) == [ids.object_id(tid, i) for i in range(3)]
    assert protocol.returns_of({"task_id": tid}) == [ids.object_id(tid, 0)]
    assert protocol.returns_of(protocol.task_spec(task_id=tid, name="f", num_returns=0)) == []


@pytest.mark.parametrize("raised, expected", [
    (exceptions.ObjectLostError("gone"), exceptions.ObjectLostError),
    (exceptions.ActorDiedError("dead"), exceptions.ActorDiedError),
    (ValueError("bad value"), ValueError),
    (TypeError("bad type"), TypeError),
])
def test_error_body_round_trips_through_from_error(raised, expected):
    body = protocol.error_body(7, raised)
    op, body, _ = protocol.decode(protocol.encode(Op.ERROR, body))
    assert op == Op.ERROR and body["req"] == 7
    err = exceptions.from_error(body["error_type"], body["message"])
    assert type(err) is expected and str(err) == str(raised)


def test_from_error_turns_an_unknown_name_into_zray_error():
    class Strange(Exception):
        pass

    body = protocol.error_body(1, Strange("odd"))
    err = exceptions.from_error(body["error_type"], body["message"])
    assert type(err) is exceptions.ZrayError and str(err) == "odd"
    assert type(exceptions.from_error("NoSuchError", "x")) is exceptions.ZrayError


def test_every_op_declares_its_body():
    empty = {Op.BLOCKED, Op.UNBLOCKED, Op.BYE, Op.EXIT, Op.NAME_RESERVED}
    for op in Op:
        assert (op in protocol.BODIES) != (op in empty), op.name
    for op, body in protocol.BODIES.items():
        fields = body.__annotations__
        assert fields and all(len(name) > 2 or name in ("req", "ip") for name in fields), op.name


def test_head_ops_carry_readable_fields():
    # The agent and the head read these by name: a rename on one side only
    # would pass every single-node test.
    assert set(protocol.Result.__annotations__) == {"task_id", "origin", "node_id", "results",
                                                    "error", "partial"}
    assert set(protocol.TaskFailed.__annotations__) == {"task_id", "error_type", "message"}
    assert set(protocol.TaskUnplaceable.__annotations__) == {"task_id", "message"}
    assert set(protocol.ObjectsFreed.__annotations__) == {"node_id", "object_ids"}
    assert set(protocol.KillActor.__annotations__) == {"actor_id", "no_restart"}
    assert set(protocol.HeadQuery.__annotations__) == {
        "req", "what", "namespace", "name", "all_namespaces", "actor_id", "anchor", "meta",
        "get_if_exists", "node_id"}
    assert protocol.HEARTBEAT_INTERVAL > 0 and protocol.HEARTBEAT_LIVENESS >= 2


def test_ids_and_layout():
    tid = ids.new_id()
    assert len(tid) == ids.ID_SIZE and tid != ids.new_id()
    oid = ids.object_id(tid, 2)
    assert len(oid) == ids.OBJECT_ID_SIZE and ids.task_of(oid) == tid
    segments, total = serialization.layout([10, 100, 5])
    assert [s[0] % 64 for s in segments] == [0, 0, 0]
    assert total == segments[-1][0] + 5


def test_serialize_round_trip_with_out_of_band_buffers():
    value = {"a": np.arange(1000), "b": [1, "two"]}
    ser = serialization.serialize(value)
    assert len(ser.segments) == 2  # the array travelled out of band
    out = serialization.deserialize(memoryview(ser.to_bytes()), ser.layout)
    assert np.array_equal(out["a"], value["a"]) and out["b"] == [1, "two"]


def test_serialize_names_the_unpicklable_type():
    import threading

    with pytest.raises(exceptions.SerializationError, match="lock"):
        serialization.serialize(threading.Lock(), "an argument")


def test_task_error_is_instance_of_cause_and_pickles():
    err = exceptions.TaskError("f", "Traceback...", KeyError("k"), 1).as_instanceof_cause()
    assert isinstance(err, KeyError) and isinstance(err, exceptions.TaskError)
    again = pickle.loads(pickle.dumps(err))
    assert isinstance(again, KeyError) and "task f" in str(again)


def test_error_with_unpicklable_cause_keeps_its_text():
    class Weird(Exception):
        def __reduce__(self):
            raise TypeError("no")

    data = serialization.serialize_error(Weird("x"), "g", 5)
    err = serialization.load_error(data)
    assert isinstance(err, exceptions.TaskError) and "Weird" in str(err)
