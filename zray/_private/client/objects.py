"""The client's object cache: refs held here, descriptors, waiters and pins.

Owns, for one driver or worker process:

* the local ref counts (``ObjectRef`` births and deaths; the agent hears only
  the 0 -> 1 and 1 -> 0 transitions, which the caller sends);
* the descriptors of objects that arrived (not their values), kept while a
  ref is held, so repeated gets, waits and pushed task results cost no round
  trip; the IDs already asked for, and who waits for which;
* the pins this process holds at its agent on shared objects, and
  :meth:`ObjectCache.materialize`, which turns a descriptor into a value.

A pin is one PIN the agent counts for this process.  It comes from a PIN
request, from an EXECUTE argument or from an OBJECT answering a pinning
FETCH (both marked ``pinned``), and it is given back with one UNPIN once
nothing uses it.  UNPINs are sent lazily; a read in the meantime takes the
pin over instead of asking the agent again (the outbox then drops the UNPIN:
see :meth:`ObjectCache.unpin_due`).

It sends nothing itself: it is given ``pin_at_agent(oid) -> offset`` and
``give_back(oid, pin)`` (which queues the UNPIN), and it must not touch the
socket or the outbox's queues.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from zray._private import ids, serialization
from zray._private.protocol import ObjectKind
from zray.object_ref import ObjectRef

_INLINE = ObjectKind.INLINE
_SHARED = ObjectKind.SHARED
_ERROR = ObjectKind.ERROR


class Descriptor:
    """Where an object's bytes are: an inline frame or an arena offset."""

    __slots__ = ("kind", "layout", "data", "offset")

    def __init__(self, kind: int, layout: list, data: Any = None, offset: int = 0) -> None:
        self.kind = kind
        self.layout = layout
        self.data = data
        self.offset = offset

    @classmethod
    def from_wire(cls, body: dict, raw: Sequence[Any]) -> "Descriptor":
        """From a ``protocol.Descriptor`` (an OBJECT body, an EXECUTE argument)."""
        frame = body.get("frame")
        data = raw[frame] if frame is not None else None
        if data is not None and not isinstance(data, (bytes, bytearray, memoryview)):
            data = data.buffer  # a zmq.Frame: view its bytes without copying
        return cls(body["kind"], body.get("layout") or [], data, body.get("offset", 0))


class PinEntry:
    """One PIN this process holds at its agent: where the object is, and how
    many users it has (guarded by the cache's lock)."""

    __slots__ = ("offset", "count", "live")

    def __init__(self, offset: int) -> None:
        self.offset = offset
        self.count = 1
        self.live = True     # False once its UNPIN is on its way


class Waiter:
    """One blocked get/wait: how many more objects it needs, and whether one
    of those that arrived is a failure (a get stops waiting at the first)."""

    __slots__ = ("needed", "failed")

    def __init__(self, needed: int) -> None:
        self.needed = needed
        self.failed = False


class _PinKeeper:
    """Held by every view of one read of a shared object; unpins when they are gone."""

    __slots__ = ("cache", "ref", "pin")

    def __init__(self, cache: "ObjectCache", ref: ObjectRef, pin: PinEntry) -> None:
        self.cache = cache
        self.ref = ref
        self.pin = pin

    def __del__(self) -> None:
        self.cache.unpin(self.ref._id, self.pin)


class ObjectCache:
    """Refs, descriptors, waiters and pins of one process, under one lock.

    The lock is re-entrant: an ObjectRef's finalizer may run (and drop its
    ref) while this thread is inside the cache.
    """

    def __init__(self, *, pin_at_agent: Callable[[bytes], int],
                 give_back: Callable[[bytes, PinEntry], None],
                 attach_arena: Callable[[], Any],
                 release: Callable[[bytes], None] = lambda oid: None) -> None:
        self._pin_at_agent = pin_at_agent
        self._release = release
        self._give_back = give_back
        self._attach_arena = attach_arena
        self._lock = threading.RLock()
        self._refs: Dict[bytes, int] = {}
        self._descriptors: Dict[bytes, Descriptor] = {}
        self._requested: set = set()
        self._callbacks: Dict[bytes, List[Callable[[], None]]] = {}
        self._waiting: Dict[bytes, List[Waiter]] = {}
        self._pins: Dict[bytes, PinEntry] = {}
        self._fetch_pins: Dict[bytes, PinEntry] = {}  # pinned by the agent for a get
        # Generator tasks being read: task -> items here not handed out yet (None:
        # the reader is gone, and items still on their way are let go as they come).
        self._streams: Dict[bytes, Optional[set]] = {}
        #: The descriptor of an object, or None (read without the lock: one dict call).
        self.lookup: Callable[[bytes], Optional[Descriptor]] = self._descriptors.get
        self.has: Callable[[bytes], bool] = self._descriptors.__contains__

    # ------------------------------------------------------------------ refs
    def add_ref(self, oid: bytes) -> bool:
        """Count one more ObjectRef; True if it is the first."""
        with self._lock:
            count = self._refs.get(oid, 0)
            self._refs[oid] = count + 1
        return count == 0

    def remove_ref(self, oid: bytes) -> bool:
        """Count one ObjectRef less; True if it was the last (the object's
        descriptor is dropped, and a pin the agent made for a get goes back)."""
        with self._lock:
            count = self._refs.get(oid, 0) - 1
            if count > 0:
                self._refs[oid] = count
                return False
            self._refs.pop(oid, None)
            self._descriptors.pop(oid, None)
            self._pins.pop(oid, None)  # a later read pins anew; this one still unpins
            fetched = self._fetch_pins.pop(oid, None) if self._fetch_pins else None
        if fetched is not None:
            self.unpin(oid, fetched)
        return True

    def first_failure(self, oids: Sequence[bytes]) -> Optional[bytes]:
        """The first of ``oids`` (in their order) that is here as a failure, or None."""
        lookup = self._descriptors.get
        for oid in oids:
            desc = lookup(oid)
            if desc is not None and desc.kind == _ERROR:
                return oid
        return None

    def ref_count(self) -> int:
        """How many objects this process holds refs to."""
        return len(self._refs)

    def keep(self, oid: bytes, desc: Descriptor) -> None:
        """An object this process stored itself: no need to ask for it."""
        with self._lock:
            if oid in self._refs:
                self._descriptors[oid] = desc

    def expect(self, oids: Sequence[bytes]) -> None:
        """Objects the agent will push unasked (a task's results to its submitter)."""
        self._requested.update(oids)  # one C call: atomic without the lock

    # ------------------------------------------------------------------ waiting
    def watch(self, oids: Sequence[bytes], num_ready: int) -> Tuple[Optional[Waiter], List[bytes]]:
        """Register a wait for ``num_ready`` of ``oids``.

        Returns ``(waiter, new)``: the waiter (None if enough are here
        already) and the IDs never asked for, for the caller to FETCH.
        """
        with self._lock:
            missing, new = self._missing(oids)
            ready = len(oids) - len(missing)
            if ready >= num_ready:
                return None, []
            waiter = Waiter(num_ready - ready)
            waiting = self._waiting
            for oid in missing:
                waiters = waiting.get(oid)
                if waiters is None:
                    waiting[oid] = [waiter]
                else:
                    waiters.append(waiter)
        return waiter, new

    def unwatch(self, oids: Sequence[bytes], waiter: Waiter) -> None:
        """Forget a wait that ended before all it needed arrived."""
        with self._lock:
            for oid in oids:
                waiters = self._waiting.get(oid)
                if waiters and waiter in waiters:
                    waiters.remove(waiter)
                    if not waiters:
                        del self._waiting[oid]

    def when_ready(self, oid: bytes, callback: Callable[[], None]) -> Tuple[bool, List[bytes]]:
        """Call ``callback`` when ``oid`` arrives; ``(already here, IDs to FETCH)``."""
        with self._lock:
            if oid in self._descriptors:
                return True, []
            self._callbacks.setdefault(oid, []).append(callback)
            return False, self._missing([oid])[1]

    def has_callbacks(self) -> bool:
        return bool(self._callbacks)

    def release_waiters(self) -> None:
        """The connection is gone: every wait ends."""
        with self._lock:
            for waiters in self._waiting.values():
                for waiter in waiters:
                    waiter.needed = 0

    def _missing(self, oids: Sequence[bytes]) -> Tuple[List[bytes], List[bytes]]:
        """(objects not here, those of them not yet asked for); call with the lock held."""
        descriptors = self._descriptors
        missing = [o for o in oids if o not in descriptors]
        new: List[bytes] = []
        if missing:
            requested = self._requested
            new = [o for o in missing if o not in requested]
            if new:
                requested.update(new)
        return missing, new

    def arrived(self, body: dict, raw: Sequence[Any]) -> Optional[List[Callable[[], None]]]:
        """An OBJECT from the agent; returns the callbacks now due.

        A ``pinned`` one answers a get's FETCH: the pin is held for that get
        (see :meth:`release_fetch_pins`), or given back if the ref is gone.
        """
        oid = body["object_id"]
        desc = Descriptor.from_wire(body, raw)
        pinned = body.get("pinned") and desc.kind == _SHARED
        callbacks = None
        spare = None
        let_go = False
        with self._lock:
            self._requested.discard(oid)
            if oid in self._refs:
                self._descriptors[oid] = desc
                callbacks = self._callbacks.pop(oid, None)
                if pinned:
                    pin = PinEntry(desc.offset)
                    current = self._pins.get(oid)
                    if current is None or not current.live:
                        self._pins[oid] = pin
                    spare = self._fetch_pins.get(oid)
                    self._fetch_pins[oid] = pin
            else:
                if self._streams:
                    kept = self._streamed(oid, desc)
                    if kept:
                        callbacks = self._callbacks.pop(oid, None)
                    let_go = kept is None
                if pinned:
                    spare = PinEntry(desc.offset)
            waiters = self._waiting.pop(oid, None)
            if waiters:
                failed = desc.kind == _ERROR
                for waiter in waiters:
                    waiter.needed -= 1
                    if failed:
                        waiter.failed = True
        if spare is not None:
            self.unpin(oid, spare)
        if let_go:
            self._release(oid)
        return callbacks

    # ------------------------------------------------------------------ streams
    def open_stream(self, task_id: bytes) -> None:
        """Keep the items a generator task pushes (see ``zray._private.streaming``)."""
        with self._lock:
            self._streams[task_id] = set()

    def take_item(self, oid: bytes) -> None:
        """A streamed item was handed out: its new ObjectRef holds it now."""
        with self._lock:
            items = self._streams.get(ids.task_of(oid))
            if items is not None and oid in items:
                items.discard(oid)
                self._refs[oid] -= 1

    def close_stream(self, task_id: bytes, ended: bool) -> List[bytes]:
        """The reader is done: returns the items it never took, whose refs the
        caller drops.  Unless the stream ``ended``, later items are let go as
        they arrive."""
        with self._lock:
            items = self._streams.pop(task_id, None)
            if not ended:
                self._streams[task_id] = None
        return list(items or ())

    def _streamed(self, oid: bytes, desc: Descriptor) -> Optional[bool]:
        """An OBJECT nobody here holds a ref to: True if it is kept as an item of
        a stream being read, None if it is one whose reader is gone (the caller
        lets it go), else False.  Call with the lock held."""
        task_id = ids.task_of(oid)
        items: Any = self._streams.get(task_id, False)
        if items is False:
            return False
        if items is None:  # the reader is gone
            if ids.index_of(oid) == 0:
                del self._streams[task_id]  # the end: nothing more will come
                return False
            return None
        if ids.index_of(oid) == 0:
            return False
        items.add(oid)
        self._refs[oid] = 1  # the ref the agent holds for this process
        self._descriptors[oid] = desc
        return True

    # ------------------------------------------------------------------ pins
    def adopt_pins(self, args: Sequence[dict]) -> List[Tuple[bytes, PinEntry]]:
        """Take over the pins the agent made for an EXECUTE's shared arguments.

        Each becomes this process's pin on the object (or, if it has one
        already, an extra to give back); the caller reads the arguments, then
        hands the result to :meth:`release_pins`, and the views keep their own.
        """
        adopted = []
        for desc in args:
            if not desc.get("pinned"):
                continue
            oid = desc["object_id"]
            pin = PinEntry(desc.get("offset", 0))
            with self._lock:
                current = self._pins.get(oid)
                if current is None or not current.live:
                    self._pins[oid] = pin
            adopted.append((oid, pin))
        return adopted

    def release_pins(self, adopted: Sequence[Tuple[bytes, PinEntry]]) -> None:
        for oid, pin in adopted:
            self.unpin(oid, pin)

    def release_fetch_pins(self, oids: Sequence[bytes]) -> None:
        """A get has read (or given up on) ``oids``: the pins the agent made for
        it are now held only by the views of what was read."""
        if not self._fetch_pins:
            return
        with self._lock:
            pop = self._fetch_pins.pop
            taken = [(oid, pin) for oid, pin in ((oid, pop(oid, None)) for oid in oids)
                     if pin is not None]
        for oid, pin in taken:
            self.unpin(oid, pin)

    def unpin(self, oid: bytes, pin: PinEntry) -> None:
        with self._lock:
            pin.count -= 1
            last = pin.count == 0
        if last:
            self._give_back(oid, pin)

    def unpin_due(self, oid: bytes, pin: PinEntry) -> bool:
        """Whether a queued UNPIN is still to be sent (no read took its pin over)."""
        with self._lock:
            if pin.count > 0 or not pin.live:
                return False
            pin.live = False
            if self._pins.get(oid) is pin:
                del self._pins[oid]
            return True

    def _reuse_pin(self, oid: bytes) -> Optional[PinEntry]:
        with self._lock:
            pin = self._pins.get(oid)
            if pin is None or not pin.live:
                return None
            pin.count += 1
            return pin

    # ------------------------------------------------------------------ values
    def materialize(self, oid: bytes, desc: Descriptor) -> Any:
        """The value a descriptor stands for; a shared one is read in place."""
        kind = desc.kind
        if kind == _INLINE:
            return serialization.deserialize(memoryview(desc.data), desc.layout)
        if kind == _SHARED:
            arena = self._attach_arena()
            pin = self._reuse_pin(oid)
            if pin is None:
                # Pinning asks the agent where the bytes are now (a spilled object
                # comes back) and keeps them from being spilled while views live.
                pin = PinEntry(self._pin_at_agent(oid))
                with self._lock:
                    self._pins[oid] = pin
            keeper = _PinKeeper(self, ObjectRef(oid), pin)  # unpins if reading fails
            offset = pin.offset
            size = desc.layout[-1][0] + desc.layout[-1][1]
            view = arena.buf[offset:offset + size].toreadonly()
            return serialization.deserialize(
                view, desc.layout, lambda v: serialization.pinned_buffer(v, keeper))
        raise serialization.load_error(desc.data)
