"""ObjectRef: a handle on an immutable object that exists, or will, in the cluster;
and the plain ID types Ray code names (``TaskID``, ``ActorID``, ``NodeID`` ...).

A ref is counted: while any ObjectRef for an ID lives in a process (or a
pickled copy travels inside a task or an object), the cluster keeps the
object.  Counting is done by this process's client; this module only tells
it when refs are born and die.  The ID types are values only: making one
counts nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from zray._private import ids, state

if TYPE_CHECKING:
    import concurrent.futures


class ObjectRef:
    __slots__ = ("_id", "_client", "__weakref__")

    def __init__(self, oid: bytes, _held: bool = False) -> None:
        self._id = oid
        client = state.client
        self._client = client
        if client is not None:
            client.add_local_ref(oid, announce=not _held)

    def __del__(self) -> None:
        client = self._client
        if client is not None:
            try:
                client.remove_local_ref(self._id)
            except Exception:  # interpreter teardown: nothing left to tell
                pass

    def binary(self) -> bytes:
        return self._id

    def hex(self) -> str:
        return self._id.hex()

    def task_id(self) -> "TaskID":
        """The ID of the task that makes (or made) this object."""
        return TaskID(ids.task_of(self._id))

    def __repr__(self) -> str:
        return f"ObjectRef({self._id.hex()})"

    def __hash__(self) -> int:
        return hash(self._id)

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, ObjectRef) and other._id == self._id

    def __reduce__(self):
        contained = getattr(state.local, "contained", None)
        if contained is not None:
            contained.append(self._id)
        return (_rebuild, (self._id,))

    def future(self) -> concurrent.futures.Future:
        """A concurrent.futures.Future resolved with the object's value."""
        client = state.client
        if client is None:
            raise RuntimeError("zray is not initialized; call zray.init() first")
        return client.future_of(self)

    def __await__(self):
        import asyncio

        return asyncio.wrap_future(self.future()).__await__()


def _rebuild(oid: bytes) -> ObjectRef:
    return ObjectRef(oid)


class BaseID:
    """An ID as fixed-size bytes: ``hex()``, ``binary()``, equality, hashing."""

    __slots__ = ("_id",)
    SIZE = ids.ID_SIZE

    def __init__(self, id_bytes: bytes) -> None:
        if not isinstance(id_bytes, bytes) or len(id_bytes) != self.SIZE:
            raise ValueError(f"{type(self).__name__} takes {self.SIZE} bytes, got {id_bytes!r}")
        self._id = id_bytes

    @classmethod
    def from_hex(cls, hex_id: str) -> "BaseID":
        return cls(bytes.fromhex(hex_id))

    @classmethod
    def from_binary(cls, id_bytes: bytes) -> "BaseID":
        return cls(id_bytes)

    @classmethod
    def nil(cls) -> "BaseID":
        return cls(b"\xff" * cls.SIZE)

    @classmethod
    def size(cls) -> int:
        return cls.SIZE

    def is_nil(self) -> bool:
        return self._id == b"\xff" * self.SIZE

    def binary(self) -> bytes:
        return self._id

    def hex(self) -> str:
        return self._id.hex()

    def __eq__(self, other: Any) -> bool:
        return type(other) is type(self) and other._id == self._id

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._id))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._id.hex()})"

    def __reduce__(self):
        return (type(self), (self._id,))


class TaskID(BaseID):
    __slots__ = ()


class ActorID(BaseID):
    __slots__ = ()


class NodeID(BaseID):
    __slots__ = ()


class JobID(BaseID):
    __slots__ = ()


class WorkerID(BaseID):
    __slots__ = ()


class ObjectID(BaseID):
    """An object's ID alone (an ObjectRef also counts a reference to it)."""

    __slots__ = ()
    SIZE = ids.OBJECT_ID_SIZE

    def task_id(self) -> TaskID:
        return TaskID(ids.task_of(self._id))
