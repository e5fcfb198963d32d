"""The head's placement groups: the table, and reserving bundles across nodes.

::

    PG_REQUEST create ──▶ PENDING ──(one group at a time, oldest first)──▶ attempt:
        BUNDLES_PREPARE to each chosen node ──▶ every BUNDLES_PREPARED fits ──▶ COMMIT all,
        CREATED; any refusal (or a node dying, or no answer) ──▶ RELEASE the prepared
        ones, try again later
    a node holding bundles dies ──▶ RESCHEDULING: its bundles are reserved elsewhere
    PG_REQUEST remove, or its job ends (unless detached) ──▶ RELEASE everywhere, REMOVED

Only one reservation is in flight at a time, so two groups never each hold
part of what the other needs: bundles are reserved all or none.  The head's
view of each node's free resources comes from heartbeats, adjusted by what
it commits here; an agent refuses a PREPARE that no longer fits.

Owns: the group table and the one attempt in flight.  Uses the head's node
table (``nodes``, ``to_node``, ``reply``) and its queue of unplaced tasks
(tasks waiting for a group's resources are placed again once it commits).
"""

from __future__ import annotations

import collections
import logging
import time
from typing import Any, Deque, Dict, List, Optional

from zray._private import bundles, scheduling
from zray._private.protocol import Op

logger = logging.getLogger("zray.head")

RETRY_INTERVAL = 0.25     # a pending group is tried again this often
ATTEMPT_TIMEOUT = 5.0     # an attempt whose nodes have not all answered is given up
WAIT_DEFAULT = 30.0       # a wait request with no timeout is answered after this
KEEP_REMOVED = 1000       # removed groups still listed (the oldest go first)


class Group:
    __slots__ = ("pg_id", "name", "strategy", "bundles", "units", "detached", "job_id",
                 "state", "nodes")

    def __init__(self, body: dict) -> None:
        self.pg_id: bytes = body["pg_id"]
        self.name: str = body.get("name", "")
        self.strategy: str = body.get("strategy", "PACK")
        self.bundles: List[Dict[str, float]] = bundles.check_bundles(body.get("bundles"))
        self.units = [scheduling.to_units(b) for b in self.bundles]
        self.detached = bool(body.get("detached"))
        self.job_id: bytes = body.get("job_id", b"")
        self.state = "PENDING"
        self.nodes: Dict[int, bytes] = {}   # committed bundle -> its node

    def row(self) -> dict:
        return {"pg_id": self.pg_id, "name": self.name, "strategy": self.strategy,
                "group_state": self.state, "bundles": self.bundles,
                "detached": self.detached,
                "job_id": self.job_id,
                "bundle_nodes": [self.nodes.get(i, b"") for i in range(len(self.bundles))]}


class Attempt:
    __slots__ = ("group", "number", "chosen", "waiting", "prepared", "refused", "started")

    def __init__(self, group: Group, number: int, chosen: Dict[int, bytes]) -> None:
        self.group = group
        self.number = number
        self.chosen = chosen
        self.waiting = set(chosen.values())
        self.prepared: set = set()
        self.refused = False
        self.started = time.monotonic()

    def on_node(self, node: bytes) -> List[int]:
        return [i for i, n in self.chosen.items() if n == node]


class PlacementGroups:
    def __init__(self, head: Any) -> None:
        self.head = head
        self.groups: Dict[bytes, Group] = {}
        self.queue: Deque[bytes] = collections.deque()   # PENDING / RESCHEDULING, oldest first
        self.attempt: Optional[Attempt] = None
        self.attempts = 0
        self.next_try = 0.0
        self.waiters: List[tuple] = []    # (deadline, ident, req, pg_id)
        self.removed: Deque[bytes] = collections.deque()  # kept for the table, a while
        self.dead: set = set()            # nodes taken for dead: if one comes back, it
        #                                   gives back what was reserved elsewhere since

    def handlers(self) -> dict:
        return {Op.PG_REQUEST: self.on_request, Op.BUNDLES_PREPARED: self.on_prepared}

    # ------------------------------------------------------------------ requests
    def on_request(self, ident: bytes, body: dict, raw: Any) -> None:
        action = body.get("action")
        req = body.get("req", 0)
        reply: dict = {"req": req}
        try:
            if action == "create":
                reply["groups"] = [self.create(body).row()]
            elif action == "remove":
                self.remove(self.known(body), "removed")
            elif action == "table":
                chosen = [self.known(body)] if "pg_id" in body else self.groups.values()
                reply["groups"] = [g.row() for g in chosen]
            elif action == "get":
                reply["groups"] = [self.named(body.get("name", "")).row()]
            elif action == "wait":
                group = self.known(body)
                if group.state not in ("PENDING", "RESCHEDULING"):
                    reply["ready"] = group.state == "CREATED"
                else:
                    timeout = float(body.get("timeout", -1))
                    timeout = WAIT_DEFAULT if timeout < 0 else min(timeout, WAIT_DEFAULT)
                    self.waiters.append((time.monotonic() + timeout, ident, req, group.pg_id))
                    return
            else:
                raise ValueError(f"unknown placement group action {action!r}")
        except ValueError as exc:
            reply["error"] = str(exc)
        self.head.reply(ident, Op.PG_REPLY, reply)

    def known(self, body: dict) -> Group:
        group = self.groups.get(body.get("pg_id", b""))
        if group is None:
            raise ValueError(f"placement group {body.get('pg_id', b'').hex()} does not exist")
        return group

    def named(self, name: str) -> Group:
        for group in self.groups.values():
            if group.name == name and group.state != "REMOVED":
                return group
        raise ValueError(f"Failed to look up placement group with name: {name}")

    def create(self, body: dict) -> Group:
        if body.get("strategy") not in bundles.STRATEGIES:
            raise ValueError(f"unknown placement strategy {body.get('strategy')!r}")
        group = Group(body)
        if group.pg_id in self.groups:
            return self.groups[group.pg_id]  # the same request again
        if group.name and any(g.name == group.name and g.state != "REMOVED"
                              for g in self.groups.values()):
            raise ValueError(f"a placement group named {group.name!r} already exists")
        self.groups[group.pg_id] = group
        self.queue.append(group.pg_id)
        self.next_try = 0.0
        self.tick(time.monotonic())
        return group

    def remove(self, group: Group, why: str) -> None:
        if group.state == "REMOVED":
            return
        attempt = self.attempt
        if attempt is not None and attempt.group is group:
            self.give_up(attempt, removed=True)
        by_node: Dict[bytes, List[int]] = {}
        for index, node in group.nodes.items():
            by_node.setdefault(node, []).append(index)
        for node in self.head.nodes:  # every node: tasks of the group may wait anywhere
            self.head.to_node(node, Op.BUNDLES_RELEASE, {
                "pg_id": group.pg_id, "indexes": by_node.get(node, []), "removed": True})
            self.count_back(node, group, by_node.get(node, []))
        group.nodes.clear()
        group.state = "REMOVED"
        self.removed.append(group.pg_id)
        if len(self.removed) > KEEP_REMOVED:
            self.groups.pop(self.removed.popleft(), None)
        if group.pg_id in self.queue:
            self.queue.remove(group.pg_id)
        logger.info("placement group %s %s", group.pg_id.hex()[:8], why)
        pg_hex = group.pg_id.hex()
        for placed in [p for p in self.head.unplaced
                       if any(bundles.is_group_resource(n, pg_hex) for n in p.demand)]:
            self.head.unplaced.remove(placed)
            self.head.fail(placed, "TaskUnschedulableError", f"{placed.name} cannot run: its "
                           f"placement group {pg_hex[:8]} was removed")
        self.answer_waiters(group)
        self.next_try = 0.0

    def unplaced(self, placed: Any) -> None:
        """A task in a group no node has the resources of: it waits for the group to
        be reserved, unless the group was removed (or never made)."""
        strategy = placed.task.get("scheduling_strategy") or ()
        group = self.groups.get(strategy[1]) if len(strategy) > 1 and \
            strategy[0] == "PG" else None
        if group is not None and group.state != "REMOVED":
            return
        if placed in self.head.unplaced:
            self.head.unplaced.remove(placed)
        self.head.fail(placed, "TaskUnschedulableError", f"{placed.name} cannot run: its "
                       f"placement group was removed")

    # ------------------------------------------------------------------ events
    def job_ended(self, job: bytes) -> None:
        for group in list(self.groups.values()):
            if group.job_id == job and not group.detached:
                self.remove(group, "released: its job ended")

    def node_died(self, node: bytes) -> None:
        self.dead.add(node)
        attempt = self.attempt
        if attempt is not None and node in attempt.waiting:
            attempt.waiting.discard(node)
            attempt.refused = True
            self.settle(attempt)
        for group in self.groups.values():
            lost = [i for i, n in group.nodes.items() if n == node]
            if lost and group.state != "REMOVED":
                for index in lost:
                    del group.nodes[index]
                group.state = "RESCHEDULING"
                if group.pg_id not in self.queue:
                    self.queue.appendleft(group.pg_id)  # it was there first
                logger.info("placement group %s lost %d bundle(s) with node %s: "
                            "rescheduling", group.pg_id.hex()[:8], len(lost), node.hex()[:8])
        self.next_try = 0.0

    def tick(self, now: float) -> None:
        """Answer waiters whose time is up; give up a stuck attempt; start the next."""
        if self.waiters:
            late = [w for w in self.waiters if w[0] <= now]
            if late:
                self.waiters = [w for w in self.waiters if w[0] > now]
                for _, ident, req, _pg in late:
                    self.head.reply(ident, Op.PG_REPLY, {"req": req, "ready": False})
        if self.dead:
            self.came_back()
        attempt = self.attempt
        if attempt is not None:
            if now - attempt.started > ATTEMPT_TIMEOUT:
                attempt.refused = True
                attempt.waiting.clear()
                self.settle(attempt)
            return
        if not self.queue or now < self.next_try:
            return
        self.next_try = now + RETRY_INTERVAL
        for pg in list(self.queue):
            group = self.groups[pg]
            chosen = bundles.place_bundles(group.units, group.strategy, self.rooms(),
                                           group.nodes)
            if chosen:
                self.start(group, chosen)
                return

    def came_back(self) -> None:
        """A node taken for dead answers again: the bundles it held were reserved
        elsewhere (or their group removed), so it lets them go."""
        for node_id in list(self.dead):
            node = self.head.nodes.get(node_id)
            if node is None or not node.alive:
                continue
            self.dead.discard(node_id)
            for group in self.groups.values():
                stale = [i for i in range(len(group.bundles)) if group.nodes.get(i) != node_id]
                self.head.to_node(node_id, Op.BUNDLES_RELEASE, {
                    "pg_id": group.pg_id, "indexes": stale,
                    "removed": group.state == "REMOVED"})

    # ------------------------------------------------------------------ reserving
    def rooms(self) -> List[bundles.Room]:
        return [bundles.Room(n.node_id, n.load_view().available)
                for n in self.head.nodes.values() if n.alive]

    def start(self, group: Group, chosen: Dict[int, bytes]) -> None:
        self.attempts += 1
        attempt = self.attempt = Attempt(group, self.attempts, chosen)
        for node in list(attempt.waiting):
            specs = [{"index": i, "resources": group.bundles[i]} for i in attempt.on_node(node)]
            if not self.head.to_node(node, Op.BUNDLES_PREPARE, {
                    "pg_id": group.pg_id, "attempt": attempt.number, "bundles": specs}):
                attempt.waiting.discard(node)
                attempt.refused = True
        self.settle(attempt)

    def on_prepared(self, ident: bytes, body: dict, raw: Any) -> None:
        attempt = self.attempt
        if attempt is None or attempt.number != body["attempt"] \
                or attempt.group.pg_id != body["pg_id"]:
            return  # a late answer: the RELEASE sent when it was given up follows it
        node = body["node_id"]
        if node not in attempt.waiting:
            return
        attempt.waiting.discard(node)
        if body["fits"]:
            attempt.prepared.add(node)
        else:
            attempt.refused = True
        self.settle(attempt)

    def settle(self, attempt: Attempt) -> None:
        """Every chosen node answered (or never will): commit, or give it all back."""
        if attempt.waiting or self.attempt is not attempt:
            return
        if attempt.refused:
            self.give_up(attempt)
            return
        self.attempt = None
        group = attempt.group
        for node in attempt.prepared:
            indexes = attempt.on_node(node)
            self.head.to_node(node, Op.BUNDLES_COMMIT, {"pg_id": group.pg_id,
                                                        "indexes": indexes})
            self.count_taken(node, group, indexes)
        group.nodes.update(attempt.chosen)
        group.state = "CREATED"
        if group.pg_id in self.queue:
            self.queue.remove(group.pg_id)
        logger.info("placement group %s created: %s", group.pg_id.hex()[:8],
                    {i: n.hex()[:8] for i, n in sorted(group.nodes.items())})
        self.answer_waiters(group)
        self.head.place_unplaced()   # tasks that waited for its resources
        self.next_try = 0.0

    def give_up(self, attempt: Attempt, removed: bool = False) -> None:
        """Every chosen node gives back what this attempt asked: those that said yes,
        and those yet to answer (the RELEASE reaches them after the PREPARE)."""
        self.attempt = None
        for node in set(attempt.chosen.values()):
            self.head.to_node(node, Op.BUNDLES_RELEASE, {
                "pg_id": attempt.group.pg_id, "indexes": attempt.on_node(node),
                "removed": False})
        if not removed:
            logger.info("placement group %s: a node could not reserve its bundles; "
                        "trying again", attempt.group.pg_id.hex()[:8])

    # ------------------------------------------------------------------ the node views
    def count_taken(self, node_id: bytes, group: Group, indexes: List[int]) -> None:
        """Until the node's next heartbeat says: its free pool shrank, named resources grew."""
        self.adjust(node_id, group, indexes, -1)

    def count_back(self, node_id: bytes, group: Group, indexes: List[int]) -> None:
        self.adjust(node_id, group, indexes, 1)

    def adjust(self, node_id: bytes, group: Group, indexes: List[int], sign: int) -> None:
        node = self.head.nodes.get(node_id)
        if node is None or not indexes:
            return
        total = dict(node.info.get("resources", {}))
        available = dict(node.load.get("available", total))
        for index in indexes:
            named = bundles.group_resources(group.bundles[index], index, group.pg_id.hex())
            for name, amount in group.bundles[index].items():
                available[name] = available.get(name, 0) + sign * amount
            for name, amount in named.items():
                for table in (total, available):
                    table[name] = table.get(name, 0) - sign * amount
                    if table[name] <= 1e-9:
                        del table[name]
        node.info = dict(node.info, resources=total)
        node.load["available"] = available

    def answer_waiters(self, group: Group) -> None:
        mine = [w for w in self.waiters if w[3] == group.pg_id]
        if not mine:
            return
        self.waiters = [w for w in self.waiters if w[3] != group.pg_id]
        for _, ident, req, _ in mine:
            self.head.reply(ident, Op.PG_REPLY, {"req": req,
                                                 "ready": group.state == "CREATED"})
