"""Unit tests of the protocol and serialization modules: no processes."""

import pickle

import msgpack
import numpy as np
import pytest

from zray import exceptions
from zray._private import protocol, serialization
from zray._private.protocol import Op


def test_encode_decode_round_trip():
    frames = protocol.encode(Op.SUBMIT, {"t": [{"x": b"\x00\x01"}]}, b"raw")
    op, body, raw = protocol.decode(frames)
    assert op == Op.SUBMIT and body == {"t": [{"x": b"\x00\x01"}]} and raw == [b"raw"]


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
    items = [({"t": b"a"}, [b"x", b"y"]), ({"t": b"b"}, []), ({"t": b"c"}, [b"z"])]
    body, frames = protocol.pack_batch(items)
    op, body, raw = protocol.decode(protocol.encode(Op.TASK_DONE, body, *frames))
    assert protocol.unpack_batch(body, raw) == [(b, list(f)) for b, f in items]
    assert protocol.unpack_batch({"t": 1}, [b"q"]) == [({"t": 1}, [b"q"])]  # not a batch


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


def test_ids_and_layout():
    tid = protocol.new_id()
    assert len(tid) == protocol.ID_SIZE and tid != protocol.new_id()
    oid = protocol.object_id(tid, 2)
    assert len(oid) == protocol.OBJECT_ID_SIZE and protocol.task_of(oid) == tid
    segments, total = protocol.layout([10, 100, 5])
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
