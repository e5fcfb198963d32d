"""Values to bytes and back: cloudpickle, protocol 5, out-of-band buffers.

A serialized value is a list of segments: segment 0 is the pickle stream,
the others are the raw buffers pickle handed out of band (numpy arrays).
The same layout (see :func:`layout`) is used whether the segments travel
inline in one message frame or sit in the node's shared-memory arena, so a
reader rebuilds arrays as read-only views over either, copying nothing.

Refs met while pickling are collected, so the cluster knows which objects a
value keeps alive.  Classes given a serializer of their own
(``zray.util.register_serializer``) are pickled with it, in this process.
A task's failure is pickled as a ``RayTaskError`` (:func:`serialize_error`).
"""

from __future__ import annotations

import io
import pickle
import traceback
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

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


#: Custom serializers of this process: class -> (serializer, deserializer).
_custom: Dict[type, Tuple[Callable[[Any], Any], Callable[[Any], Any]]] = {}


def register_reducer(cls: type, serializer: Callable[[Any], Any],
                     deserializer: Callable[[Any], Any]) -> None:
    """Pickle instances of exactly ``cls`` as ``deserializer(serializer(obj))``.

    For this process only: the deserializer travels (pickled) with each value,
    so readers need no registration of their own.
    """
    _custom[cls] = (serializer, deserializer)


def deregister_reducer(cls: type) -> None:
    _custom.pop(cls, None)


class _CustomPickler(cloudpickle.CloudPickler):
    """cloudpickle, with the classes of :func:`register_reducer` reduced their own way."""

    def reducer_override(self, obj: Any) -> Any:
        entry = _custom.get(type(obj))
        if entry is not None:
            serializer, deserializer = entry
            return deserializer, (serializer(obj),)
        return super().reducer_override(obj)


def _dumps(value: Any, buffer_callback: Callable[[Any], None]) -> bytes:
    if not _custom:
        return cloudpickle.dumps(value, protocol=5, buffer_callback=buffer_callback)
    out = io.BytesIO()
    _CustomPickler(out, protocol=5, buffer_callback=buffer_callback).dump(value)
    return out.getvalue()


def serialize(value: Any, what: str = "value") -> Serialized:
    """Pickle ``value``; raise SerializationError naming ``what`` if it can't be."""
    if type(value) in _PLAIN:
        return Serialized([pickle.dumps(value, protocol=5)], [])
    buffers: List[pickle.PickleBuffer] = []
    previous = getattr(state.local, "contained", None)
    contained: List[bytes] = []
    state.local.contained = contained
    try:
        data = _dumps(value, buffers.append)
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
    """Pickle a task's failure as a RayTaskError.

    An error that came from another task (a ``get`` inside this one raised it)
    keeps its root cause, and its text becomes part of this task's traceback,
    so a ZeroDivisionError two tasks deep is still caught as one.  A cause
    that will not pickle (or unpickle) travels as an UnserializableException
    holding its text and traceback.
    """
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    if isinstance(exc, exceptions.RayTaskError):
        error = exceptions.RayTaskError(task_name, tb, exc.cause, pid)
    else:
        error = exceptions.RayTaskError(task_name, tb, exc, pid)
    try:
        data = cloudpickle.dumps(error, protocol=5)
        pickle.loads(data)  # errors are rare: make sure the reader can rebuild it
        return data
    except Exception:
        cause = error.cause
        try:
            text = f"{type(cause).__name__}: {cause}"
        except Exception:  # a __str__ that fails too
            text = type(cause).__name__
        stand_in = exceptions.UnserializableException(text, tb)
        plain = exceptions.RayTaskError(task_name, tb, stand_in, pid)
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
    if isinstance(err, exceptions.RayTaskError):
        return err.as_instanceof_cause()
    return err
