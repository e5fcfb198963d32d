"""The head's part in losing nothing when a node, or the head itself, dies.

::

    node registering with a restarted head ──▶ learn_back: its actors (and their
        names), the objects it holds that others know of, the objects it owns
    reader's node ──REBUILD──▶ on_rebuild ──REBUILD──▶ the object's owner's node
    owner's node ──REBUILT──▶ on_rebuilt ──REBUILT──▶ the reader's node
    an owner dies ──▶ owner_died: its readers still waiting hear OwnerDiedError

An object a forwarded task made stays on the node that ran it; its owner is
the node the task's RESULT went back to, whose agent keeps the task's lineage
(``Directory.owners``).  A reader on a third node that finds no copy left asks
the head, which passes the question to the owner: the owner answers where a
copy is (made again if it had to be), and the head passes the answer back.
When no alive node owns the object, the head answers itself, saying why.

A part of ``head.Head``: it uses the head's ``nodes``, ``actors``, ``names``,
``directory``, ``rebuild_asks``, ``reply`` and ``to_node``.
Owns: nothing but the questions passed on and not answered yet
(``rebuild_asks``, held by the head).  Never unpickles anything.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, Set, Tuple

from zray._private import protocol
from zray._private.head_records import Directory
from zray._private.protocol import Op

logger = logging.getLogger("zray.head")


class RecoveryVerbs:
    nodes: Dict[bytes, Any]
    actors: Dict[bytes, bytes]
    names: Any
    directory: Directory
    rebuild_asks: Dict[bytes, Set[Tuple[bytes, bytes]]]   # owner -> {(object, reader)}
    reply: Callable[..., bool]
    to_node: Callable[..., bool]

    def learn_back(self, node_id: bytes, body: protocol.NodeInfo) -> None:
        """A node registering with a restarted head says what it has: its actors (and
        their names), the objects others know of whose bytes it holds, and the objects
        made elsewhere whose lineage it keeps."""
        for aid, name, namespace, anchor, meta in body.get("actors", ()):
            self.actors[aid] = node_id
            if name:
                entry = {"actor_id": aid, "anchor": anchor, "meta": meta, "node_id": node_id}
                self.names.claim(namespace, name, entry, get_if_exists=True)
        for oid in body.get("holds", ()):
            self.directory.add(oid, node_id)
        for oid in body.get("lineage", ()):
            self.directory.own(oid, node_id)

    def on_rebuild(self, ident: bytes, body: protocol.Rebuild, raw) -> None:
        oid, reader = body["object_id"], body["node_id"]
        if ident != reader:  # a node's socket is named by its ID
            raise ValueError("REBUILD for another node than its sender's")
        owner, dead = self.directory.owner_of(oid)
        if owner is not None and not dead and owner != reader \
                and self.to_node(owner, Op.REBUILD, body):
            self.rebuild_asks.setdefault(owner, set()).add((oid, reader))
            return
        if owner is None:
            error, why = "ObjectLostError", (
                "no copy is left and no alive node keeps what it takes to make it again "
                "(it was made by zray.put or on its owner's node, or its owner freed it)")
        elif owner == reader:
            error, why = "ObjectLostError", "its owner's node (the one asking) cannot make it"
        else:
            error, why = "OwnerDiedError", (f"no copy is left, and its owner's node "
                                            f"{owner.hex()[:8]}, which could make it again, "
                                            f"died")
        self.reply(ident, Op.REBUILT, {"object_id": oid, "node_id": reader, "holders": [],
                                       "error_type": error,
                                       "message": f"object {oid.hex()} is lost: {why}"})

    def on_rebuilt(self, ident: bytes, body: protocol.Rebuilt, raw) -> None:
        oid, reader = body["object_id"], body["node_id"]
        asks = self.rebuild_asks.get(ident)
        if asks is not None:
            asks.discard((oid, reader))
        if not self.to_node(reader, Op.REBUILT, body):
            logger.info("the answer for object %s has nowhere to go: node %s is gone",
                        oid.hex()[:8], reader.hex()[:8])

    def owner_died(self, node_id: bytes) -> None:
        """Readers still waiting for what a dead node was making again are told."""
        for oid, reader in self.rebuild_asks.pop(node_id, ()):
            self.to_node(reader, Op.REBUILT, {
                "object_id": oid, "node_id": reader, "holders": [],
                "error_type": "OwnerDiedError",
                "message": f"object {oid.hex()} is lost: its owner's node {node_id.hex()[:8]} "
                           f"died while it was being made again"})
