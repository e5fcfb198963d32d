"""How a message is framed: the header, bulk frames, batches.

The frames of a message are ``[header, *raw]`` (see :mod:`zray._private.protocol`
for what each op's body holds); this module turns ``(op, body, raw)`` into
frames and back, and packs several messages of one op into one.  It imports
nothing from zray but the op table and the version; import its names from
the protocol module (which loads this one), never from here first.
"""

from __future__ import annotations

from typing import Any, List, Sequence, Tuple

import msgpack

from zray._private.protocol import _OPS, VERSION, Error, Op


class ProtocolError(Exception):
    """A message that does not follow this module's rules."""


# ---------------------------------------------------------------------- framing
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


def error_body(req: int, exc: BaseException) -> Error:
    """The ERROR reply for a request that failed with ``exc``.

    The receiver turns it back into an exception with
    ``zray.exceptions.from_error`` (the one mapping both sides use).
    """
    return {"req": req, "error_type": type(exc).__name__, "message": str(exc)}


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
