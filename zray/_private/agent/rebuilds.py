"""Lost objects made again by their owner's node, whichever node reads them.

::

    reader's node: no copy can be had (the node holding it died) ──▶ ask
        ──REBUILD──▶ head ──▶ the owner's node (the head knows it)
    owner's node ──▶ on_rebuild: a copy the reader can have? ──▶ REBUILT {holders}
        else ObjectTable.lose: made again from lineage ──▶ once sealed (ready) ──▶ REBUILT
        (or lost for good: an error here, which the reader pulls like any object)
    head ──REBUILT──▶ reader's node ──▶ on_rebuilt: pull from the holders (or fail it)

An object this node owns (a result a client here submitted, ``obj.owner``) is
made again here by the task table's lineage; any other object found lost is
asked for.  Meanwhile it waits as pending: the tasks that need it and the
clients that fetch it wait with it, and are served when its bytes land.

Owns: the questions this node asked and that are not answered yet, and the
nodes waiting for objects being made again here.
Must not: run or remember tasks (the task table's lineage does), or pull bytes
(the transfer part does, through the object table's ``request_bytes``).
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Set

from zray import exceptions
from zray._private import ratelog
from zray._private.agent.objects import READY, Obj, is_remote
from zray._private.protocol import Op

logger = logging.getLogger("zray.node")


class Rebuilds:
    def __init__(self, node_id: bytes, objects: Any, head: Any, wire: Any) -> None:
        self.node_id = node_id
        self.objects = objects
        self.head = head                  # the HeadLink: its silence, its node table
        self.wire = wire
        self.asked: Dict[bytes, List[bytes]] = {}   # object -> nodes it could not come from
        self.askers: Dict[bytes, Set[bytes]] = {}   # object made again here -> nodes waiting

    # ------------------------------------------------------------------ the reader's side
    def ask(self, oid: bytes, obj: Obj, why: str, tried: List[bytes]) -> bool:
        """The object table's ``ask_owner``: no copy of an object owned elsewhere can
        be had, so its owner's node is asked to make it again.  False if the object is
        this node's own, or the head cannot be asked now."""
        if obj.owner is not None or obj.held_for is not None or self.head.silent:
            return False
        unreachable = self.asked.setdefault(oid, [])
        unreachable.extend(node for node in tried if node not in unreachable)
        if obj.state is READY:
            self.objects.unseal(oid, obj)  # its readers wait for the copy made again
        obj.where = []
        if not self.send(oid, unreachable):
            del self.asked[oid]
            return False
        ratelog.limited(logger).warning("asking owners", f"object {oid.hex()[:16]}: {why}; "
                                        f"its owner's node is asked to make it again")
        return True

    def send(self, oid: bytes, unreachable: List[bytes]) -> bool:
        return self.wire.send_head(Op.REBUILD, {"object_id": oid, "node_id": self.node_id,
                                                "unreachable": unreachable})

    def ask_again(self) -> None:
        """The head restarted: questions it may have lost are asked again."""
        for oid, unreachable in self.asked.items():
            self.send(oid, unreachable)

    def on_rebuilt(self, body: dict, raw) -> None:
        oid = body["object_id"]
        asked = self.asked.pop(oid, None)
        obj = self.objects.get(oid)
        if asked is None or obj is None or obj.state is READY:
            return  # answered already, freed meanwhile, or it came anyway
        holders = [node for node in body["holders"] if node != self.node_id]
        if holders:
            obj.where = holders
            self.objects.request_bytes(oid, obj)
            logger.info("object %s: its owner's node says node %s holds it now",
                        oid.hex()[:8], holders[0].hex()[:8])
        else:
            self.objects.fail(oid, obj, exceptions.from_error(
                body["error_type"] or "ObjectLostError", body["message"] or (
                    f"object {oid.hex()} is lost: its owner's node named no other node "
                    f"holding it")))

    # ------------------------------------------------------------------ the owner's side
    def on_rebuild(self, body: dict, raw) -> None:
        """Another node found no copy of an object this node owns."""
        oid, reader, unreachable = body["object_id"], body["node_id"], body["unreachable"]
        obj = self.objects.get(oid)
        if obj is not None and obj.state is READY and is_remote(obj) \
                and not self.holders(obj, unreachable):
            self.objects.lose(oid, obj, f"node {reader.hex()[:8]} could have no copy of it",
                              unreachable)   # made again, or an error from now on
            obj = self.objects.get(oid)
        if obj is None:
            self.answer(oid, reader, [], "ObjectFreedError",
                        f"object {oid.hex()} is lost: its owner freed it")
        elif obj.state is READY:
            self.tell(oid, obj, reader, unreachable)
        else:  # being made again: told once it is ready
            self.askers.setdefault(oid, set()).add(reader)
            obj.wanted = True

    def ready(self, oid: bytes, obj: Obj) -> None:
        """The object table's ``on_wanted_ready``: an object made again is ready."""
        for reader in self.askers.pop(oid, ()):
            self.tell(oid, obj, reader, ())

    def freed(self, oid: bytes) -> None:
        """An object freed here: nobody waits for it any more."""
        if self.asked:
            self.asked.pop(oid, None)
        if self.askers:
            for reader in self.askers.pop(oid, ()):
                self.answer(oid, reader, [], "ObjectFreedError",
                            f"object {oid.hex()} is lost: its owner freed it")

    def tell(self, oid: bytes, obj: Obj, reader: bytes, unreachable) -> None:
        holders = self.holders(obj, unreachable)
        if holders:
            self.answer(oid, reader, holders)
        else:
            self.answer(oid, reader, [], "ObjectLostError", f"object {oid.hex()} is lost: "
                        f"its owner's node holds it but could not send it")

    def holders(self, obj: Obj, unreachable) -> List[bytes]:
        """Nodes a reader may have a ready object from (this one when it is here)."""
        if not is_remote(obj):
            return [] if self.node_id in unreachable else [self.node_id]
        alive = {node["node_id"] for node in self.head.nodes if node.get("alive")}
        return [node for node in obj.where if node not in unreachable and node.hex() in alive]

    def answer(self, oid: bytes, reader: bytes, holders: List[bytes], error_type: str = "",
               message: str = "") -> None:
        self.wire.send_head(Op.REBUILT, {"object_id": oid, "node_id": reader,
                                         "holders": holders, "error_type": error_type,
                                         "message": message})
