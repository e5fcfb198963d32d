"""The head's records of nodes, object copies and forwarded tasks.

:class:`NodeEntry` is one node as the head knows it (what it registered, its
last heartbeat), :class:`Directory` which nodes hold a copy of each object
that crossed nodes (and which node owns each a forwarded task made),
:class:`Placed` a forwarded task the head placed and has not seen finish.
Plain records with the few verbs the head's loop uses; nothing here sends or
receives.
"""

from __future__ import annotations

import collections
import time
from typing import Any, Dict, Iterable, List, Optional, Set, Tuple

from zray._private import protocol, scheduling


class NodeEntry:
    """One node as the head knows it: what it registered and its last heartbeat."""

    __slots__ = ("node_id", "info", "load", "last_seen", "alive", "ident")

    def __init__(self, node_id: bytes, ident: bytes, info: protocol.NodeInfo) -> None:
        self.node_id = node_id
        self.ident = ident
        self.info = info
        self.load: dict = {}      # the last protocol.Heartbeat, adjusted by placements since
        self.last_seen = time.monotonic()
        self.alive = True

    def as_dict(self) -> dict:
        """The node table entry agents and `zray status` read (HEARTBEAT_ACK, HEAD_REPLY)."""
        info = self.info
        resources = info.get("resources", {})
        return {"node_id": self.node_id.hex(), "alive": self.alive,
                "address": info.get("address"), "node_ip": info.get("ip"),
                "hostname": info.get("hostname", ""),
                "transfer": info.get("transfer_address", ""),
                "resources": resources,
                "available": self.load.get("available", resources),
                "store_capacity": info.get("store_capacity", 0),
                "store_used": self.load.get("store_used", 0),
                "queued": self.load.get("queued", 0), "running": self.load.get("running", 0),
                "actors": self.load.get("actors", 0), "workers": self.load.get("workers", 0)}

    def load_view(self, local_bytes: int = 0) -> scheduling.NodeLoad:
        resources = self.info.get("resources", {})
        return scheduling.NodeLoad(
            node_id=self.node_id,
            total=scheduling.to_units(resources),
            available=scheduling.to_units(self.load.get("available", resources)),
            queued=self.load.get("queued", 0), alive=self.alive, local_bytes=local_bytes)

    def take(self, demand: Dict[str, int]) -> None:
        """Count a task just placed here, until the node's next heartbeat says."""
        resources = self.info.get("resources", {})
        available = self.load.setdefault("available", dict(resources))
        for name, units in demand.items():
            if name in available:
                available[name] -= units / scheduling.UNIT
        self.load["queued"] = self.load.get("queued", 0) + 1


#: Objects of dead owners remembered, so that a reader is told its owner died.
DEAD_OWNERS_KEPT = 100_000


class Directory:
    """Which nodes hold a copy of each object that crossed nodes, and its size; and
    the owner of each object a forwarded task made: the node its RESULT went back
    to, which keeps the task's lineage and can make the object again."""

    def __init__(self) -> None:
        self.holders: Dict[bytes, Set[bytes]] = {}
        self.sizes: Dict[bytes, int] = {}
        self.owners: Dict[bytes, bytes] = {}
        self.dead_owners: "collections.OrderedDict[bytes, bytes]" = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self.holders)

    def add(self, oid: bytes, node_id: bytes, size: Optional[int] = None,
            owner: Optional[bytes] = None) -> None:
        self.holders.setdefault(oid, set()).add(node_id)
        if size is not None:
            self.sizes[oid] = size
        if owner is not None:
            self.owners[oid] = owner

    def own(self, oid: bytes, owner: bytes) -> None:
        """``owner`` can make the object again (a node says so to a restarted head)."""
        self.owners[oid] = owner

    def owner_of(self, oid: bytes) -> Tuple[Optional[bytes], bool]:
        """The node that owns the object (None: no node is known to) and whether it died."""
        owner = self.owners.get(oid)
        if owner is not None:
            return owner, False
        owner = self.dead_owners.get(oid)
        return owner, owner is not None

    def free(self, oid: bytes) -> None:
        self.holders.pop(oid, None)
        self.sizes.pop(oid, None)
        self.owners.pop(oid, None)

    def copies(self, node_id: bytes, copied: Iterable[bytes],
               dropped: Iterable[bytes]) -> List[bytes]:
        """A node pulled copies of known objects and let go of others; returns the
        copies now listed (objects freed meanwhile are not listed again)."""
        for oid in dropped:
            holders = self.holders.get(oid)
            if holders is not None and len(holders) > 1:
                holders.discard(node_id)   # the last holder stays until the owner frees it
        listed = [oid for oid in copied if oid in self.holders]
        for oid in listed:
            self.holders[oid].add(node_id)
        return listed

    def drop_node(self, node_id: bytes) -> None:
        """A node died: it holds nothing now, and the objects it owned have a dead owner
        (an object whose last copy went with it stays owned: its owner may make it again)."""
        for oid, holders in list(self.holders.items()):
            holders.discard(node_id)
            if not holders:
                del self.holders[oid]
                self.sizes.pop(oid, None)
        for oid in [oid for oid, owner in self.owners.items() if owner == node_id]:
            self.dead_owners[oid] = self.owners.pop(oid)
        while len(self.dead_owners) > DEAD_OWNERS_KEPT:
            self.dead_owners.popitem(last=False)

    def locality(self, oids: Iterable[bytes]) -> Dict[bytes, int]:
        """Bytes of ``oids`` each node already holds."""
        local: Dict[bytes, int] = {}
        for oid in oids:
            size = self.sizes.get(oid, 0)
            for holder in self.holders.get(oid, ()):
                local[holder] = local.get(holder, 0) + size
        return local

    def snapshot(self) -> Dict[bytes, List[bytes]]:
        return {oid: sorted(holders) for oid, holders in self.holders.items()}


class Placed:
    """A forwarded task the head placed (or holds) and has not seen finish."""

    __slots__ = ("task_id", "body", "raw", "origin", "node", "demand", "name")

    def __init__(self, body: protocol.Forward, raw: List[Any]) -> None:
        task = body["task"]
        self.task_id: bytes = task["task_id"]
        self.body = body
        self.raw = raw
        self.origin: bytes = body["origin"]
        self.node: Optional[bytes] = None
        self.demand = scheduling.to_units(task.get("resources", {"CPU": 1}))
        self.name: str = task.get("name", "task")

    @property
    def task(self) -> protocol.TaskSpec:
        return self.body["task"]

    @property
    def actor_call(self) -> bool:
        """A call to an existing actor: it can only go where that actor lives."""
        return "actor_id" in self.task and not self.task.get("new_actor")

    def use_a_retry(self) -> bool:
        """Whether it may run again after its node died; counts the retry in its spec."""
        retries = int(self.task.get("max_retries", protocol.DEFAULT_MAX_RETRIES))
        if retries == 0:
            return False
        if retries > 0:  # -1: forever
            self.task["max_retries"] = retries - 1  # the next node sees what is left
        return True
