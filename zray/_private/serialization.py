"""Values to bytes and back: cloudpickle, protocol 5, out-of-band buffers.

A serialized value is a list of segments: segment 0 is the pickle stream,
the others are the raw buffers pickle handed out of band (numpy arrays).
The same layout (see :func:`layout`) is used whether the segments travel
inline in one message frame or sit in the node's shared-memory arena, so a
reader rebuilds arrays as read-only views over either, copying nothing.

Refs met while pickling are collected, so the cluster knows which objects a
value keeps alive.
"""

from __future__ import annotations

import pickle
import traceback
from typing import Any, Callable, List, Optional, Sequence, Tuple

import cloudpickle

from zray import exceptions
from zray._private import state

_PLAIN = (int, float, str, bytes, bool, type(None))


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

class Serialized:
    """A value in serialized form, before it is placed anywhere."""

    __slots__ = ("segments", "contained", "layout", "size")

    def __init__(self, segments: List[Any], contained: List[bytes]) -> None:
        self.segments = segments          # [pickle bytes, raw buffer, ...]
        self.contained = contained        # IDs of refs inside the value
        self.layout, self.size = layout([len(s) for s in segments])

    def write_into(self, target: memoryview) -> None:
        for (offset, length), segment in zip(self.layout, self.segments):
            target[offset:offset + length] = segment

    def to_bytes(self) -> bytes:
        if len(self.segments) == 1:
            return bytes(self.segments[0])
        out = bytearray(self.size)
        self.write_into(memoryview(out))
        return bytes(out)


def serialize(value: Any, what: str = "value") -> Serialized:
    """Pickle ``value``; raise SerializationError naming ``what`` if it can't be."""
    if type(value) in _PLAIN:
        return Serialized([pickle.dumps(value, protocol=5)], [])
    buffers: List[pickle.PickleBuffer] = []
    previous = getattr(state.local, "contained", None)
    contained: List[bytes] = []
    state.local.contained = contained
    try:
        data = cloudpickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    except Exception as exc:
        raise exceptions.SerializationError(
            f"could not serialize {what} of type {type(value).__name__}: "
            f"{type(exc).__name__}: {exc}") from exc
    finally:
        state.local.contained = previous
    segments: List[Any] = [data]
    for buf in buffers:
        try:
            segments.append(buf.raw())
        except BufferError:  # non-contiguous: copy once rather than fail
            segments.append(memoryview(bytes(buf)))
    return Serialized(segments, contained)


def deserialize(data: memoryview, layout: Sequence[Sequence[int]],
                wrap_buffer: Optional[Callable[[memoryview], Any]] = None) -> Any:
    """Rebuild a value from ``data`` laid out as ``layout``.

    ``wrap_buffer`` turns each out-of-band buffer into the object handed to
    pickle (the client uses it to pin shared memory while views live).
    """
    offset, length = layout[0]
    meta = data[offset:offset + length]
    if len(layout) == 1:
        return pickle.loads(meta)
    buffers = []
    for offset, length in layout[1:]:
        view = data[offset:offset + length]
        buffers.append(wrap_buffer(view) if wrap_buffer else view)
    return pickle.loads(meta, buffers=buffers)


_pinned_class: Any = None


def _pinned() -> Any:
    global _pinned_class
    if _pinned_class is None:
        import numpy as np  # only readers of shared memory need it

        class _Pinned(np.ndarray):
            """A read-only byte array over shared memory that keeps its object alive."""

        _pinned_class = _Pinned
    return _pinned_class


def pinned_buffer(view: memoryview, keeper: Any) -> Any:
    import numpy as np

    arr = np.frombuffer(view, dtype=np.uint8).view(_pinned())
    arr.flags.writeable = False
    arr._zray_keeper = keeper
    # A memoryview, not the array: numpy collapses chains of array bases to the
    # memory's owner, which would drop this holder; a memoryview base keeps it.
    return memoryview(arr)


def serialize_error(exc: BaseException, task_name: str, pid: int) -> bytes:
    """Pickle a task's failure as a TaskError; fall back to text if the cause won't pickle."""
    if isinstance(exc, exceptions.TaskError):
        error = exc  # a dependency's failure: keep the root cause as it is
    else:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        error = exceptions.TaskError(task_name, tb, exc, pid)
    try:
        return cloudpickle.dumps(error, protocol=5)
    except Exception:
        plain = exceptions.TaskError(error.task_name, error.traceback_str, None, error.pid)
        return cloudpickle.dumps(plain, protocol=5)


def system_error(exc: BaseException) -> bytes:
    """Pickle an error raised by zray itself (crash, cancel, lost object).

    Plain pickle: these are zray's own classes, importable everywhere, and the
    node agent (which must not import cloudpickle) makes them too.
    """
    return pickle.dumps(exc, protocol=5)


def load_error(data: Any) -> BaseException:
    try:
        err = pickle.loads(data)
    except Exception as exc:
        return exceptions.SerializationError(f"could not unpickle a task's error: {exc}")
    if isinstance(err, exceptions.TaskError):
        return err.as_instanceof_cause()
    return err
