"""The node's arena and spill store, as the object table uses them.

:class:`ArenaSpace` is the part of :class:`objects.ObjectTable` that holds
the shared-memory arena, its allocator and the spill directory: making and
removing them, bringing a spilled object back, space set aside for a result
not made yet, and the figures `zray status` shows.  Choosing what to spill
when the arena is full stays with the object table (it knows which objects
are sealed and unpinned).

Owns: the allocator, the arena and the spill store.
Must not: change an object's refs or state; it moves bytes, and sets only
where an object's bytes are (``offset``, ``spilled``).
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from zray._private.object_store import Allocator, Arena, SpillStore


class ArenaSpace:
    objects: Dict[bytes, Any]    # the object table's (counted in ``stats``)

    def __init__(self, capacity: int) -> None:
        self.allocator = Allocator(capacity)
        self.arena: Any = None
        self.spill: Any = None

    def open_store(self, name: str, session_dir: str) -> None:
        self.arena, self.spill = Arena.create(name, self.allocator.capacity), SpillStore(session_dir)
        self.arena.keep_warm(lambda: self.allocator.high_water)

    def close_store(self) -> None:
        if self.arena is not None:
            self.arena.close()
            self.arena.unlink()
        if self.spill is not None:
            self.spill.cleanup()

    def restore(self, oid: bytes, obj: Any) -> bool:
        """Bring a spilled object back into the arena; False if there is no room."""
        offset = self.allocate(obj.size)
        if offset is None:
            return False
        self.spill.restore_into(oid, self.arena.view(offset, obj.size))
        obj.offset = offset
        obj.spilled = False
        return True

    def allocate(self, size: int) -> Optional[int]:
        """Arena space (the object table's own spills unpinned objects to make room)."""
        return self.allocator.allocate(size)

    def reserve_space(self, size: int) -> Optional[int]:
        """Free arena space for a result not made yet (never spills for it)."""
        return self.allocator.allocate(size)

    def free_space(self, offset: int) -> None:
        """Give back space that no sealed object uses."""
        self.allocator.free(offset)

    def view(self, offset: int, size: int) -> memoryview:
        return self.arena.view(offset, size)

    @property
    def capacity(self) -> int:
        return self.allocator.capacity

    @property
    def used(self) -> int:
        return self.allocator.used

    def stats(self) -> dict:
        return {"used": self.allocator.used, "capacity": self.allocator.capacity,
                "objects": len(self.objects), "spilled": getattr(self.spill, "spilled_bytes", 0)}
