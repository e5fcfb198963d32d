"""ObjectRef: a handle on an immutable object that exists, or will, in the cluster;
and the plain ID types Ray code names (``TaskID``, ``ActorID``, ``NodeID`` ...).

A ref is counted: while any ObjectRef for an ID lives in a process (or a
pickled copy travels inside a task or an object), the cluster keeps the
object.  Counting is done by this process's client; this module only tells
it when refs are born and die.  The ID types are values only: making one
counts nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator, List, Optional

from zray._private import ids, state
from zray._private.protocol import ObjectKind

_ERROR_KIND = ObjectKind.ERROR

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


class ObjectRefGenerator:
    """The refs a generator task yields, each as soon as it is yielded.

    What ``f.remote()`` returns when ``f`` yields (``num_returns="streaming"``,
    the default for generators).  Iterate it (``for ref in gen``, ``next(gen)``,
    ``async for``, ``await gen.__anext__()``) to get each ref; ``zray.get`` it
    to read the value.  An exception in the generator is the last ref: getting
    it raises.  ``completed()`` is the ref of the task's end (the number of
    items), ready when the generator is exhausted.
    """

    def __init__(self, end: ObjectRef) -> None:
        self._end = end
        self._task_id = ids.task_of(end._id)
        self._client = state.client
        self._index = 0       # items handed out
        self._done = False
        self._client.objects.open_stream(self._task_id)

    def __iter__(self) -> "ObjectRefGenerator":
        return self

    def __next__(self) -> ObjectRef:
        ref = self._next_ref(None)
        if ref is None:
            raise StopIteration
        return ref

    def __aiter__(self) -> "ObjectRefGenerator":
        return self

    async def __anext__(self) -> ObjectRef:
        import asyncio

        ref = await asyncio.get_running_loop().run_in_executor(None, self._next_ref, None)
        if ref is None:
            raise StopAsyncIteration
        return ref

    def next_ready(self, timeout: float) -> ObjectRef:
        """The next ref, waiting at most ``timeout`` seconds (GetTimeoutError after)."""
        ref = self._next_ref(timeout)
        if ref is None:
            raise StopIteration
        return ref

    def completed(self) -> ObjectRef:
        return self._end

    def is_finished(self) -> bool:
        return self._done

    def task_id(self) -> TaskID:
        return TaskID(self._task_id)

    def __repr__(self) -> str:
        return f"ObjectRefGenerator({self._task_id.hex()})"

    def __reduce__(self):
        raise TypeError("an ObjectRefGenerator cannot be passed to tasks or stored; pass "
                        "the refs it gives instead")

    def _next_ref(self, timeout: Optional[float]) -> Optional[ObjectRef]:
        """The next item's ref, the end's if the task failed, or None at the end."""
        if self._done:
            return None
        from zray import exceptions

        client = self._client
        objects = client.objects
        oid = ids.object_id(self._task_id, self._index + 1)
        end = self._end._id
        count: Optional[int] = None
        while not objects.has(oid):
            if count is None and objects.has(end):
                try:
                    count = client.get([self._end], None)[0]
                except Exception:
                    return self._finish(self._end)  # it failed before yielding this one
                if self._index >= count:
                    return self._finish(None)
            objects.expect([oid])  # pushed when yielded: never fetched
            waiting = [oid] if count is not None else [oid, end]
            if not client.wait_objects(waiting, 1, timeout):
                raise exceptions.GetTimeoutError(
                    f"the generator task made no item within {timeout}s")
        ref = ObjectRef(oid, _held=True)
        objects.take_item(oid)
        self._index += 1
        if objects.lookup(oid).kind == _ERROR_KIND:
            self._finish(None)  # an exception is the last item
        return ref

    def _finish(self, ref: Optional[ObjectRef]) -> Optional[ObjectRef]:
        self._done = True
        self._close()
        return ref

    def _close(self) -> None:
        client = self._client
        if client is None or client.closed:
            return
        ended = client.objects.has(self._end._id)
        for oid in client.objects.close_stream(self._task_id, ended):
            client.remove_local_ref(oid)

    def __del__(self) -> None:
        if not self._done:
            try:
                self._close()
            except Exception:  # interpreter teardown
                pass


class DynamicObjectRefGenerator:
    """The refs of a ``num_returns="dynamic"`` task, all at once: the value of
    its one ref.  Iterable, sized, picklable (it travels as its refs)."""

    def __init__(self, refs: List[ObjectRef]) -> None:
        self._refs = list(refs)

    def __iter__(self) -> Iterator[ObjectRef]:
        return iter(self._refs)

    def __len__(self) -> int:
        return len(self._refs)

    def __repr__(self) -> str:
        return f"DynamicObjectRefGenerator({len(self._refs)} refs)"
