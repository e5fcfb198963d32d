"""Every message zray processes exchange, and how it is framed.

A message is a list of ZeroMQ frames::

    [header, *raw]

``header`` is msgpack of ``[VERSION, op, body]`` where ``op`` is an :class:`Op`
and ``body`` a dict of plain values.  Bulk bytes (object data, pickled
arguments of large size) never go through msgpack: they follow the header as
their own frames and are sent zero-copy.  A ROUTER peer sees the sender's
identity frame in front of the header.

This module is the one place that says what a message is; it imports nothing
from the rest of zray.
"""

from __future__ import annotations

import enum
import itertools
import os
from typing import Any, List, Sequence, Tuple

import msgpack

VERSION = 1

#: Objects whose serialized size is at most this travel inline in messages.
INLINE_THRESHOLD = 100 * 1024

ID_SIZE = 16
OBJECT_ID_SIZE = ID_SIZE + 4


class Op(enum.IntEnum):
    # client (driver or worker) -> node agent
    HELLO = 1
    EXPORT = 2          # a pickled function, sent once before its first task
    SUBMIT = 3          # a batch of task specs
    ADDREF = 4
    DECREF = 5
    FETCH = 6           # ask for objects; answered with OBJECT as each is ready
    PUT = 7             # inline objects: [[oid, layout, contained], ...], a frame each
    ALLOC = 8           # reserve arena space for a large object
    SEAL = 9            # a large object written into its reserved space
    BLOCKED = 10        # worker waits in get/wait: lend its CPU
    UNBLOCKED = 11
    TASK_DONE = 12
    LOG = 13
    CANCEL = 14
    QUERY = 15
    BYE = 16
    ABORT = 17          # give back an ALLOC that will never be sealed
    KILL = 18           # end an actor
    PIN = 19            # map a shared object: answered with its current offset
    UNPIN = 20          # the last view of a pinned object is gone

    # node agent -> client
    WELCOME = 40
    OBJECT = 41
    EXECUTE = 42
    ALLOC_REPLY = 43
    PIN_REPLY = 49
    QUERY_REPLY = 44
    WARN = 45
    INTERRUPT = 46      # cancel the running task (KeyboardInterrupt in it)
    EXIT = 47           # retire this worker
    ERROR = 48          # a request could not be served

    # node agent <-> head
    REGISTER = 60
    REGISTERED = 61
    HEARTBEAT = 62
    HEARTBEAT_ACK = 63
    HEAD_QUERY = 64
    HEAD_REPLY = 65
    FORWARD = 66        # a task the sender's node cannot run: place it (agent -> head -> agent)
    RESULT = 67         # the outcome of a forwarded task, back to its origin node
    ANNOUNCE = 68       # objects sealed or freed on the sender's node
    ACTOR_OP = 69       # kill an actor that lives on another node

    # node agent <-> node agent (object transfer ROUTER)
    PULL = 70           # send me [off, off + n) of an object
    CHUNK = 71          # a piece of an object (or why it cannot be sent)

    # head PUB channel
    PUB_NODE = 80       # a node joined or died
    PUB_OBJECT = 81     # objects sealed on a node, or freed everywhere


_OPS = {int(op): op for op in Op}


class ObjectKind(enum.IntEnum):
    INLINE = 0    # bytes in a message frame
    SHARED = 1    # lives in the node's arena at an offset
    ERROR = 2     # a pickled failure, inline


class ProtocolError(Exception):
    """A message that does not follow this module's rules."""


_packb = msgpack.Packer(use_bin_type=True).pack


def encode(op: Op, body: dict, *raw: Any) -> List[Any]:
    """Frames for one message: the header, then raw bulk frames as given."""
    return [_packb([VERSION, int(op), body]), *raw]


def decode(frames: Sequence[Any]) -> Tuple[Op, dict, Sequence[Any]]:
    """Split frames into (op, body, raw frames); raise ProtocolError on junk."""
    if not frames:
        raise ProtocolError("empty message")
    try:
        version, op, body = msgpack.unpackb(frames[0], raw=False, use_list=True)
    except Exception as exc:  # msgpack raises several unrelated types
        raise ProtocolError(f"unreadable header: {exc}") from None
    if version != VERSION:
        raise ProtocolError(f"protocol version {version!r}, expected {VERSION}")
    code = op
    op = _OPS.get(code) if type(code) is int else None  # Op(code) costs microseconds
    if op is None:
        raise ProtocolError(f"unknown op {code!r}")
    if not isinstance(body, dict):
        raise ProtocolError(f"{op.name} body is {type(body).__name__}, expected a map")
    return op, body, frames[1:]


def pack_batch(items: Sequence[Tuple[dict, Sequence[Any]]]) -> Tuple[dict, List[Any]]:
    """One body and frame list for several messages of one op.

    Each item is ``(body, raw frames)``; the batch body lists every body with
    its frame count, and the frames follow one another.  A receiver reads a
    batch and a single message alike with :func:`unpack_batch`.
    """
    entries: List[list] = []
    frames: List[Any] = []
    for body, raw in items:
        entries.append([body, len(raw)])
        frames.extend(raw)
    return {"batch": entries}, frames


def unpack_batch(body: dict, raw: Sequence[Any]) -> List[Tuple[dict, Sequence[Any]]]:
    """The ``(body, raw frames)`` messages a body carries: itself, or its batch."""
    entries = body.get("batch")
    if entries is None:
        return [(body, raw)]
    items = []
    pos = 0
    try:
        for sub, count in entries:
            if not isinstance(sub, dict) or type(count) is not int or count < 0:
                raise ValueError
            items.append((sub, raw[pos:pos + count]))
            pos += count
    except (TypeError, ValueError):
        raise ProtocolError("a batch entry is not [body, frame count]") from None
    if pos != len(raw):
        raise ProtocolError(f"a batch counts {pos} frames but came with {len(raw)}")
    return items


_id_prefix = os.urandom(ID_SIZE - 8)
_id_counter = itertools.count(1)


def _reset_ids() -> None:
    global _id_prefix, _id_counter
    _id_prefix = os.urandom(ID_SIZE - 8)
    _id_counter = itertools.count(1)


os.register_at_fork(after_in_child=_reset_ids)


def new_id() -> bytes:
    """A unique ID: a random per-process prefix and a counter (urandom per ID is slow)."""
    return _id_prefix + next(_id_counter).to_bytes(8, "big")


def object_id(task_id: bytes, index: int) -> bytes:
    """The ID of a task's ``index``-th return: known before the task is sent."""
    return task_id + index.to_bytes(4, "big")


def task_of(oid: bytes) -> bytes:
    return oid[:ID_SIZE]


def align(n: int, alignment: int = 64) -> int:
    return (n + alignment - 1) // alignment * alignment


def layout(lengths: Sequence[int], alignment: int = 64) -> Tuple[List[List[int]], int]:
    """Place segments one after another, each starting aligned.

    Returns ``([[offset, length], ...], total)``; the same layout is used for
    inline frames and for arena space, so readers treat both alike.
    """
    segments = []
    cursor = 0
    for length in lengths:
        cursor = align(cursor, alignment)
        segments.append([cursor, length])
        cursor += length
    return segments, cursor
