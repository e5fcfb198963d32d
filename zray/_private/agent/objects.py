"""The node's object table: every object's state, bytes, references and pins.

::

    PUT / SEAL / task results ──▶ seal ──▶ notify ──▶ fetchers get OBJECT (queued on the wire)
                                                 └──▶ waiters (tasks) hear ``on_waiter_ready``
    ADDREF / DECREF / internal incref, decref ──▶ refs reach 0 ──▶ free ──▶ freed listeners
    ALLOC ──▶ arena space (spilling unpinned objects to disk when full) ──▶ SEAL

An object is PENDING until sealed, then READY.  Its bytes are inline (kept
here, sent in message frames), SHARED (at an offset in the node's arena, or
spilled to disk), or an ERROR (a pickled failure).  Clients hold refs and
pins through the ADDREF/DECREF and PIN/UNPIN messages; tasks and actors hold
refs through ``incref``/``decref``.  :meth:`ObjectTable.descriptor` is the
one place an object becomes a wire descriptor.

On a cluster an object may live on another node (``where``); the transfer
part, set as ``puller``, brings its bytes here when a reader needs them.  An
object no copy of which can be had is made again (``lose``): from this
node's lineage, or by its owner's node when that is another.

An ADDREF of an object not known yet makes a pending entry; :mod:`early_refs`
bounds how long its readers wait and how many such entries are kept.  The
arena, its allocator and the spill store are :class:`space.ArenaSpace`'s,
which this class extends.

Owns: the objects, each client's refs and pins, allocations not yet sealed.
Must not: know tasks, workers or actors -- waiters are opaque, and other parts
hear of frees through ``freed_listeners``.  Never unpickles anything.
"""

from __future__ import annotations

import collections
import enum
import logging
import pickle
import time
from typing import Any, Callable, Dict, List, Optional

from zray import exceptions
from zray._private import protocol
from zray._private.agent.early_refs import EarlyRefs
from zray._private.agent.space import ArenaSpace
from zray._private.protocol import ObjectKind, Op

logger = logging.getLogger("zray.node")


class ObjectState(enum.Enum):
    PENDING = 0
    READY = 1


PENDING, READY = ObjectState.PENDING, ObjectState.READY
SHARED, INLINE, ERROR = ObjectKind.SHARED, ObjectKind.INLINE, ObjectKind.ERROR


def system_error(exc: BaseException) -> bytes:
    """Pickle one of zray's own errors (as serialization.system_error does)."""
    return pickle.dumps(exc, protocol=5)


class Obj:
    __slots__ = ("state", "kind", "layout", "size", "data", "offset", "refs", "contained",
                 "waiting", "fetchers", "spilled", "owner", "pins", "where", "pulling",
                 "exported", "held_for", "copy", "wanted")

    def __init__(self) -> None:
        self.state = PENDING
        self.kind = INLINE
        self.layout: list = []
        self.size = 0
        self.data: Any = None
        self.offset = -1
        self.refs = 0
        self.contained: List[bytes] = []
        self.waiting: List[Any] = []      # opaque waiters, told when it is ready
        self.fetchers: Dict[bytes, bool] = {}  # client -> whether it wants it pinned
        self.spilled = False
        self.owner: Optional[bytes] = None
        self.pins = 0      # live views in some process: never spilled while > 0
        self.where: List[bytes] = []      # nodes holding it, while there is no copy here
        self.pulling = False              # its bytes are on their way here
        self.exported = False             # other nodes know it: announce when it is freed
        self.wanted = False   # other nodes asked for it while it was made again (rebuilds)
        self.held_for: Optional[bytes] = None  # kept for a task's origin node until freed
        self.copy = False    # an argument of a task sent here: its bytes, once pulled, are
        #                      a copy, and freeing it here frees this copy only


def is_remote(obj: Obj) -> bool:
    """Whether the object's bytes are on another node and not (yet) here."""
    if obj.state is READY:
        return obj.kind == SHARED and obj.offset < 0 and not obj.spilled
    return bool(obj.where) or obj.pulling


class ObjectTable(ArenaSpace):
    def __init__(self, capacity: int, wire: Any) -> None:
        super().__init__(capacity)
        self.objects: Dict[bytes, Obj] = {}
        self.wire = wire
        self.pending_allocs: Dict[bytes, tuple] = {}   # object -> (offset, client), unsealed
        self.held_by: Dict[bytes, set] = {}            # client -> objects it holds a ref to
        self.pins_by: Dict[bytes, collections.Counter] = {}  # client -> its pins
        # Listeners, set by the agent.
        self.on_waiter_ready: Callable[[Any], None] = lambda waiter: None
        self.freed_listeners: List[Callable[[bytes, Obj], None]] = []
        # Whether a lost object is being made again: from the task table's lineage, or
        # (an object owned elsewhere) by its owner's node, asked by rebuilds.Rebuilds.
        self.rebuild: Callable[[bytes, Obj], bool] = lambda oid, obj: False
        self.ask_owner: Callable[[bytes, Obj, str, List[bytes]], bool] = \
            lambda oid, obj, why, tried: False
        self.on_wanted_ready: Callable[[bytes, Obj], None] = lambda oid, obj: None
        self.early = EarlyRefs(self)   # entries ADDREF made for objects not known yet
        self.pin_waits: Dict[bytes, List[tuple]] = {}   # PINs waiting for bytes to land
        self.puller: Any = None    # start(oid, obj) / abandon(oid, obj): the transfer part

    # ------------------------------------------------------------------ store
    def allocate(self, size: int) -> Optional[int]:
        offset = self.allocator.allocate(size)
        if offset is None and size <= self.allocator.capacity:
            self.spill_until(size)
            offset = self.allocator.allocate(size)
        return offset

    def spill_until(self, size: int) -> None:
        """Move sealed shared objects to disk until ``size`` bytes could fit."""
        for oid, obj in list(self.objects.items()):
            if self.allocator.largest_free >= size:
                return
            if obj.state is READY and obj.kind == SHARED and not obj.spilled \
                    and obj.pins <= 0 and obj.offset >= 0:
                self.spill.spill(oid, self.arena.view(obj.offset, obj.size))
                self.allocator.free(obj.offset)
                obj.spilled = True
                obj.offset = -1

    # ------------------------------------------------------------------ refs
    def get(self, oid: bytes) -> Optional[Obj]:
        return self.objects.get(oid)

    def all(self) -> List[tuple]:
        """A snapshot of ``(oid, obj)`` pairs, safe to change the table while walking it."""
        return list(self.objects.items())

    def ensure(self, oid: bytes) -> Obj:
        obj = self.objects.get(oid)
        if obj is None:
            obj = self.objects[oid] = Obj()
        return obj

    def add_client(self, ident: bytes) -> None:
        self.held_by[ident] = set()
        self.pins_by[ident] = collections.Counter()

    def drop_client(self, ident: bytes) -> None:
        """A client left: its pins and refs go, and space it allocated and never sealed."""
        for oid, (offset, owner) in list(self.pending_allocs.items()):
            if owner == ident:
                del self.pending_allocs[oid]
                self.allocator.free(offset)
        for oid, count in self.pins_by.pop(ident, {}).items():
            obj = self.objects.get(oid)
            if obj is not None:
                obj.pins -= count
        for oid in self.held_by.pop(ident, ()):
            self.decref(oid)

    def hold(self, ident: bytes, oid: bytes, obj: Obj) -> None:
        """``ident`` holds a ref to the object (once, however often it says so)."""
        held = self.held_by.get(ident)
        if held is not None and oid not in held:
            held.add(oid)
            obj.refs += 1

    def on_addref(self, ident: bytes, body: dict, raw) -> None:
        held = self.held_by.get(ident)
        if held is None:
            return
        objects = self.objects
        for oid in body["object_ids"]:
            if oid not in held:
                held.add(oid)
                obj = objects.get(oid)
                if obj is None:
                    obj = objects[oid] = Obj()  # announced before it is sealed
                    self.early.noted(oid, time.monotonic())
                obj.refs += 1

    def let_go(self, oid: bytes) -> None:
        """Every client's ref to the object goes, as if each had sent DECREF."""
        for held in self.held_by.values():
            if oid in held:
                held.discard(oid)
                self.decref(oid)

    def tick(self, now: float) -> None:
        """Entries ADDREF made for objects nothing makes: their readers stop waiting."""
        self.early.sweep(now)

    def on_decref(self, ident: bytes, body: dict, raw) -> None:
        held = self.held_by.get(ident)
        if held is None:
            return
        for oid in body["object_ids"]:
            if oid in held:
                held.discard(oid)
                self.decref(oid)

    def hold_for_node(self, oid: bytes, node_id: bytes) -> None:
        """A forwarded task's result, kept here for its origin node until it frees it."""
        obj = self.ensure(oid)
        if obj.held_for is None:  # once: a retried generator yields its items again
            obj.refs += 1
            obj.held_for = node_id

    def incref(self, oid: bytes) -> bool:
        """An internal ref (a task's argument, an actor's); False if the object is unknown."""
        obj = self.objects.get(oid)
        if obj is None:
            return False
        obj.refs += 1
        return True

    def decref(self, oid: bytes) -> None:
        obj = self.objects.get(oid)
        if obj is None:
            return
        obj.refs -= 1
        if obj.refs <= 0 and obj.state is READY and not obj.waiting:
            self.free(oid, obj)

    def free(self, oid: bytes, obj: Obj) -> None:
        if self.objects.pop(oid, None) is None:
            return
        if obj.kind == SHARED:
            if obj.spilled:
                self.spill.discard(oid)
            elif obj.offset >= 0:
                self.allocator.free(obj.offset)
        if obj.pulling:
            self.puller.abandon(oid, obj)
            obj.pulling = False
        for listener in self.freed_listeners:
            listener(oid, obj)
        for inner in obj.contained:
            self.decref(inner)

    # ------------------------------------------------------------------ sealing
    def on_put(self, ident: bytes, body: dict, raw) -> None:
        """Inline objects, one raw frame each, in the order of ``body["objects"]``."""
        puts = body["objects"]
        if len(raw) != len(puts):
            raise ValueError(f"PUT of {len(puts)} objects came with {len(raw)} frames")
        for (oid, layout, contained), data in zip(puts, raw):
            obj = self.ensure(oid)
            self.hold(ident, oid, obj)
            self.seal(oid, obj, INLINE, layout, data, -1, contained)

    def on_alloc(self, ident: bytes, body: dict, raw) -> None:
        size = int(body["size"])
        offset = self.allocate(size)
        if offset is None:
            raise exceptions.ObjectStoreFullError(
                f"the object store has no room for {size} bytes ({self.allocator.used} of "
                f"{self.allocator.capacity} bytes in use by objects still referenced)")
        earlier = self.pending_allocs.get(body["object_id"])
        if earlier is not None:  # the same object allocated again: the first space goes
            self.allocator.free(earlier[0])
        self.pending_allocs[body["object_id"]] = (offset, ident)
        self.wire.send(ident, Op.ALLOC_REPLY, {"req": body.get("req", 0), "offset": offset})

    def on_abort(self, ident: bytes, body: dict, raw) -> None:
        pending = self.pending_allocs.get(body["object_id"])
        if pending is not None and pending[1] == ident:
            del self.pending_allocs[body["object_id"]]
            self.allocator.free(pending[0])

    def on_seal(self, ident: bytes, body: dict, raw) -> None:
        oid = body["object_id"]
        pending = self.pending_allocs.get(oid)
        if pending is None or pending[0] != int(body["offset"]) or pending[1] != ident:
            raise ValueError(f"SEAL of object {oid.hex()[:16]} at offset {body['offset']}: "
                             f"this client allocated no such space for it")
        del self.pending_allocs[oid]
        obj = self.ensure(oid)
        self.hold(ident, oid, obj)
        self.seal(oid, obj, SHARED, body["layout"], None, int(body["offset"]),
                  body.get("contained", ()), int(body["size"]))

    def seal_result(self, result: dict, raw) -> None:
        """A task's result descriptor (TASK_DONE) becomes its object."""
        oid = result["object_id"]
        self.pending_allocs.pop(oid, None)
        kind = result["kind"]
        data = raw[result["frame"]] if "frame" in result else None
        self.seal(oid, self.ensure(oid), kind, result.get("layout", []), data,
                  result.get("offset", -1), result.get("contained", ()), result.get("size", 0))

    def seal_error(self, oid: bytes, data: Any) -> None:
        obj = self.objects.get(oid)
        if obj is not None:
            self.seal(oid, obj, ERROR, [], data, -1, ())

    def seal(self, oid: bytes, obj: Obj, kind: int, layout: list, data: Any, offset: int,
             contained, size: int = 0) -> None:
        if obj.state is READY:  # sealed twice (a retried task): keep the first
            if kind == SHARED and offset >= 0:
                self.allocator.free(offset)
            return
        obj.state = READY
        obj.kind = kind
        obj.layout = layout
        obj.data = data
        obj.offset = offset
        if kind == SHARED:
            obj.size = size
        for inner in contained:
            inner_obj = self.objects.get(inner)
            if inner_obj is not None:
                inner_obj.refs += 1
                obj.contained.append(inner)
        self.notify(oid, obj)

    def notify(self, oid: bytes, obj: Obj) -> None:
        """The object is ready (or arrived here): serve fetchers, wake waiters."""
        if obj.fetchers:
            fetchers, obj.fetchers = obj.fetchers, {}
            for ident, pin in fetchers.items():
                self.send_object(ident, oid, obj, pin)
        if obj.waiting:
            waiting, obj.waiting = obj.waiting, []
            for waiter in waiting:
                self.on_waiter_ready(waiter)
        if obj.wanted:
            obj.wanted = False
            self.on_wanted_ready(oid, obj)
        if self.pin_waits and oid in self.pin_waits:
            if is_remote(obj):
                self.request_bytes(oid, obj)  # made again elsewhere: bring it here
            else:
                for ident, req in self.pin_waits.pop(oid):
                    self.answer_pin(ident, req, oid, obj)
        if obj.refs <= 0 and not obj.waiting and not obj.fetchers and not obj.pulling:
            self.free(oid, obj)

    def error_data(self, oid: bytes) -> Any:
        """The pickled failure of an object that is an error, else None."""
        obj = self.objects.get(oid)
        return obj.data if obj is not None and obj.kind == ERROR else None

    # ------------------------------------------------------------------ waiting
    def wait_for(self, oid: bytes, waiter: Any) -> bool:
        """True if the object is not ready: ``waiter`` is told when it is."""
        obj = self.objects[oid]
        if obj.state is READY:
            return False
        obj.waiting.append(waiter)
        return True

    def localize(self, oid: bytes, waiter: Any) -> bool:
        """True if the object's bytes are on another node: they are pulled here,
        and ``waiter`` is told when they land."""
        obj = self.objects.get(oid)
        if obj is None or not is_remote(obj):
            return False
        obj.waiting.append(waiter)
        self.request_bytes(oid, obj)
        return True

    def unwait(self, oid: bytes, waiter: Any) -> None:
        obj = self.objects.get(oid)
        if obj is not None and waiter in obj.waiting:
            obj.waiting.remove(waiter)

    def request_bytes(self, oid: bytes, obj: Obj) -> None:
        if not obj.pulling and self.puller is not None:
            self.puller.start(oid, obj)

    # ------------------------------------------------------------------ readers
    def expect_result(self, oid: bytes, owner: bytes) -> None:
        """A task's result, pushed to its submitter (who holds a ref) once sealed."""
        obj = self.ensure(oid)
        obj.owner = owner
        obj.fetchers[owner] = False
        self.hold(owner, oid, obj)

    def answered_already(self, oid: bytes, ident: bytes) -> None:
        """``ident`` has the result from its worker (a direct call): no push."""
        obj = self.objects.get(oid)
        if obj is not None:
            obj.fetchers.pop(ident, None)

    def on_fetch(self, ident: bytes, body: dict, raw) -> None:
        pin = bool(body.get("pin"))
        for oid in body["object_ids"]:
            obj = self.objects.get(oid)
            if obj is None:
                self.send_error_object(ident, oid, exceptions.ObjectLostError(
                    f"object {oid.hex()} is not known to this node: it was freed, or "
                    f"the ref did not come from this cluster"))
            elif obj.state is READY:
                self.send_object(ident, oid, obj, pin)
            else:
                obj.fetchers[ident] = pin
                if obj.where:
                    self.request_bytes(oid, obj)

    def send_object(self, ident: bytes, oid: bytes, obj: Obj, pin: bool = False) -> None:
        if is_remote(obj):
            if ident == obj.owner and not pin and obj.state is READY:
                # Its owner hears that it is ready; the bytes stay where they were
                # made until someone reads them (a PIN or a pinning FETCH pulls).
                self.wire.queue_object(ident, {"object_id": oid, "kind": SHARED,
                                               "layout": obj.layout, "size": obj.size}, None)
                return
            obj.fetchers[ident] = pin  # served when it lands here
            self.request_bytes(oid, obj)
            return
        try:
            desc, data = self.descriptor(oid, obj, ident if pin else None)
        except exceptions.ObjectStoreFullError as exc:
            self.send_error_object(ident, oid, exc)
            return
        if data is not None:
            desc["frame"] = 0
        self.wire.queue_object(ident, desc, data)

    def send_error_object(self, ident: bytes, oid: bytes, exc: BaseException) -> None:
        self.wire.queue_object(ident, {"object_id": oid, "kind": ERROR, "layout": [],
                                       "frame": 0}, system_error(exc))

    def descriptor(self, oid: bytes, obj: Obj, pin_for: Optional[bytes] = None) -> tuple:
        """``(descriptor, inline bytes or None)`` of a local object.

        With ``pin_for``, a shared object is pinned for that client, which
        owes an UNPIN for it.  Raises ObjectStoreFullError when a spilled
        object cannot come back.
        """
        if obj.kind != SHARED:
            return {"object_id": oid, "kind": obj.kind, "layout": obj.layout}, obj.data
        if obj.spilled and not self.restore(oid, obj):
            raise exceptions.ObjectStoreFullError(
                f"object {oid.hex()} is spilled and the store has no room to bring it back")
        desc = {"object_id": oid, "kind": SHARED, "layout": obj.layout, "offset": obj.offset,
                "size": obj.size}
        if pin_for is not None:
            pins = self.pins_by.get(pin_for)
            if pins is not None:
                obj.pins += 1
                pins[oid] += 1
                desc["pinned"] = True
        return desc, None

    def on_pin(self, ident: bytes, body: dict, raw) -> None:
        oid = body["object_id"]
        obj = self.objects.get(oid)
        if obj is not None and ident in self.pins_by and (
                is_remote(obj) or (obj.state is PENDING and obj.exported)):
            # On another node (or being made again): answered when it lands here.
            self.pin_waits.setdefault(oid, []).append((ident, body.get("req", 0)))
            if obj.state is READY or obj.where:
                self.request_bytes(oid, obj)
            return
        self.answer_pin(ident, body.get("req", 0), oid, obj)

    def answer_pin(self, ident: bytes, req: int, oid: bytes, obj: Optional[Obj]) -> None:
        try:
            if obj is None or obj.state is not READY or obj.kind != SHARED or is_remote(obj) \
                    or ident not in self.pins_by:
                raise exceptions.ObjectLostError(f"object {oid.hex()} cannot be read: " + (
                    "it is lost" if obj is not None and obj.kind == ERROR else
                    "it is not in this node's store"))
            desc, _ = self.descriptor(oid, obj, ident)
        except (exceptions.ObjectLostError, exceptions.ObjectStoreFullError) as exc:
            self.wire.send(ident, Op.ERROR, protocol.error_body(req, exc))
            return
        self.wire.send(ident, Op.PIN_REPLY, {"req": req, "offset": desc["offset"]})

    def on_unpin(self, ident: bytes, body: dict, raw) -> None:
        pins = self.pins_by.get(ident)
        if pins is None:
            return
        for oid in body["object_ids"]:
            if pins.get(oid, 0) > 0:
                pins[oid] -= 1
                obj = self.objects.get(oid)
                if obj is not None:
                    obj.pins -= 1

    # ------------------------------------------------------------------ elsewhere
    def lose(self, oid: bytes, obj: Obj, why: str, tried: List[bytes] = ()) -> None:
        """No copy of the object can be had (``tried``: nodes it could not come from):
        it is made again from its lineage if it can be (see TaskTable.rebuild), or by
        its owner's node if that is another, else it becomes an ObjectLostError."""
        if self.rebuild(oid, obj) or self.ask_owner(oid, obj, why, list(tried)):
            return
        self.fail(oid, obj, exceptions.ObjectLostError(
            f"object {oid.hex()} is lost: {why}; it cannot be made again (it was made by "
            f"zray.put, by an actor, or by a task with max_retries=0 or no retries left)"))

    def fail(self, oid: bytes, obj: Obj, exc: BaseException) -> None:
        """An object whose bytes are not here becomes the error ``exc``; its readers
        and the tasks waiting for it hear."""
        err = system_error(exc)
        obj.where = []
        if obj.state is READY:
            obj.kind, obj.layout, obj.data, obj.offset = ERROR, [], err, -1
            self.notify(oid, obj)
        else:
            self.seal(oid, obj, ERROR, [], err, -1, ())

    def unseal(self, oid: bytes, obj: Obj) -> None:
        """A lost object will be made again: it waits for its task like a new one."""
        obj.state, obj.kind, obj.layout, obj.data, obj.offset, obj.where = \
            PENDING, INLINE, [], None, -1, []
        if obj.pulling:
            self.puller.abandon(oid, obj)
            obj.pulling = False
        contained, obj.contained = obj.contained, []
        for inner in contained:
            self.decref(inner)

    def land(self, oid: bytes, obj: Obj, kind: int, layout: list, data: Any,
             offset: int, size: int) -> None:
        """Pulled bytes are complete here: the object is local now."""
        obj.pulling = False
        obj.where = []
        if obj.state is READY:
            obj.kind, obj.layout, obj.data, obj.offset = kind, layout, data, offset
            if kind == SHARED:
                obj.size = size
            self.notify(oid, obj)
        else:
            self.seal(oid, obj, kind, layout, data, offset, (), size)
