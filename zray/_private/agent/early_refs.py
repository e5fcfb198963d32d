"""Refs clients took to objects the node did not know: how long, and how many.

An ADDREF may name an object before the node hears of it: a ref handed from
one process to another can overtake the PUT, SEAL or result that makes the
object, so the object table keeps a pending entry for it.  Such an entry is
*unclaimed* while nothing but the clients' ADDREFs knows of it: no task of
this node makes it, it is not kept for another node, no node is known to
hold it, no space was allocated for it.  An unclaimed entry may be a ref to
an object on another node that this node will never hold (a named actor's
anchor, looked up from here), or a ref to nothing (an object freed meanwhile,
from another cluster, or made up).  :class:`EarlyRefs` bounds them:

* one that a reader waits for (a FETCH, a task's argument) and that is still
  unclaimed :data:`EARLY_REF_GRACE` seconds after it appeared is ended: its
  readers get ObjectLostError instead of waiting forever, and the clients'
  refs to it go (a later DECREF finds nothing);
* at most :data:`MAX_EARLY_REFS` are kept: past that, the oldest is ended;
* one held without readers is kept (its ref may name an object elsewhere,
  which a task may still be given).

Each ending is logged, at most once a second.

Owns: when each unclaimed entry appeared.
Must not: end an entry that something claims (the object table's fields say).
"""

from __future__ import annotations

import collections
import logging
from typing import Any

from zray import exceptions
from zray._private import ratelog

logger = logging.getLogger("zray.node")

EARLY_REF_GRACE = 10.0    # seconds an unclaimed entry's readers wait for its object
MAX_EARLY_REFS = 100_000  # unclaimed entries kept at most (about 400 bytes each)
SWEEP_INTERVAL = 1.0      # how often entries past their grace are looked at


class EarlyRefs:
    def __init__(self, objects: Any, grace: float = EARLY_REF_GRACE,
                 limit: int = MAX_EARLY_REFS) -> None:
        self.objects = objects
        self.grace = grace
        self.limit = limit
        # object -> when it was (last) looked at; oldest first
        self.since: "collections.OrderedDict[bytes, float]" = collections.OrderedDict()
        self.next_sweep = 0.0

    def noted(self, oid: bytes, now: float) -> None:
        """An ADDREF made a pending entry for an object this node did not know."""
        self.since[oid] = now
        if len(self.since) > self.limit:
            oldest, _ = self.since.popitem(last=False)
            obj = self.objects.get(oldest)
            if obj is not None and self.unclaimed(oldest, obj):
                self.end(oldest, obj, f"more than {self.limit} refs to objects this node "
                                      f"does not know were held here")

    def sweep(self, now: float) -> None:
        """Look at the entries past their grace: those claimed are forgotten, those
        read end, those only held are looked at again after another grace."""
        if not self.since or now < self.next_sweep:
            return
        self.next_sweep = now + SWEEP_INTERVAL
        cutoff = now - self.grace
        while self.since:
            oid, since = next(iter(self.since.items()))
            if since > cutoff:
                return
            obj = self.objects.get(oid)
            if obj is None or not self.unclaimed(oid, obj):
                del self.since[oid]
            elif obj.fetchers or obj.waiting:
                del self.since[oid]
                self.end(oid, obj, f"nothing made it within {self.grace:g} s of a ref to it "
                                   f"(it was freed, or the ref did not come from this cluster)")
            else:
                self.since.move_to_end(oid)
                self.since[oid] = now

    def end(self, oid: bytes, obj: Any, why: str) -> None:
        """Its readers fail, and every client's ref to it goes."""
        self.objects.fail(oid, obj, exceptions.ObjectLostError(
            f"object {oid.hex()} is not known to this node: {why}"))
        self.objects.let_go(oid)
        ratelog.limited(logger).warning("early ref", f"a ref to object {oid.hex()} went: {why}")

    def unclaimed(self, oid: bytes, obj: Any) -> bool:
        """Whether nothing but the clients' ADDREFs knows of the object."""
        return (obj.state.name == "PENDING" and obj.owner is None and obj.held_for is None
                and not obj.copy and not obj.where and not obj.pulling and not obj.exported
                and oid not in self.objects.pending_allocs)
