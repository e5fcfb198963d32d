"""ObjectRef: a handle on an immutable object that exists, or will, in the cluster.

A ref is counted: while any ObjectRef for an ID lives in a process (or a
pickled copy travels inside a task or an object), the cluster keeps the
object.  Counting is done by this process's client; this module only tells
it when refs are born and die.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from zray._private import state

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

    def task_id(self) -> bytes:
        return self._id[:16]

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
