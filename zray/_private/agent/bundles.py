"""This node's placement group bundles, and its clients' questions about groups.

::

    client ──PG_REQUEST──▶ relay ──▶ head ──PG_REPLY──▶ relay ──▶ client
    head ──BUNDLES_PREPARE──▶ reserve in the free pool (all or none) ──BUNDLES_PREPARED──▶ head
    head ──BUNDLES_COMMIT───▶ the bundles become named resources (bundles.group_resources)
    head ──BUNDLES_RELEASE──▶ give them back; a removed group's tasks and actors end here

Owns: the bundles prepared or committed on this node, and the requests it
relays to the head.  Must not: schedule; a task in a group demands the
group's named resources and the dispatcher places it like any other (when
a bundle is committed, the dispatcher looks again at what it could not run).
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Tuple

from zray import exceptions
from zray._private import bundles, scheduling
from zray._private.protocol import Op

logger = logging.getLogger("zray.node")


class Bundle:
    __slots__ = ("units", "amounts", "committed")

    def __init__(self, amounts: Dict[str, float]) -> None:
        self.amounts = amounts
        self.units = scheduling.to_units(amounts)
        self.committed = False


class Bundles:
    def __init__(self, node_id: bytes, resources: Any, tasks: Any, actors: Any,
                 dispatcher: Any, head: Any, wire: Any) -> None:
        self.node_id = node_id
        self.resources = resources
        self.tasks = tasks
        self.actors = actors
        self.dispatcher = dispatcher
        self.head = head
        self.wire = wire
        self.held: Dict[Tuple[bytes, int], Bundle] = {}   # (group, index) -> its bundle
        self.relayed: Dict[int, Tuple[bytes, int]] = {}   # our req -> (client, its req)
        self.next_req = 0
        self.removed: set = set()   # groups removed: their tasks fail rather than wait

    def head_handlers(self) -> dict:
        return {Op.PG_REPLY: self.on_reply, Op.BUNDLES_PREPARE: self.on_prepare,
                Op.BUNDLES_COMMIT: self.on_commit, Op.BUNDLES_RELEASE: self.on_release}

    # ------------------------------------------------------------------ relay
    def on_request(self, ident: bytes, body: dict, raw: Any) -> None:
        """A client's PG_REQUEST goes to the head; its reply comes back through here."""
        if self.head.silent:
            raise exceptions.ZrayError("the zray head is not answering: placement groups "
                                       "wait until it is back")
        self.next_req += 1
        self.relayed[self.next_req] = (ident, body.get("req", 0))
        self.wire.send_head(Op.PG_REQUEST, dict(body, req=self.next_req))

    def on_reply(self, body: dict, raw: Any) -> None:
        asked = self.relayed.pop(body.get("req", 0), None)
        if asked is None:
            return
        ident, req = asked
        if body.get("error"):
            self.wire.send(ident, Op.ERROR, {"req": req, "error_type": "ValueError",
                                             "message": body["error"]})
        else:
            # (a QUERY_REPLY: clients match those to their requests)
            self.wire.send(ident, Op.QUERY_REPLY, dict(body, req=req))

    # ------------------------------------------------------------------ bundles
    def on_prepare(self, body: dict, raw: Any) -> None:
        pg, wanted = body["pg_id"], body["bundles"]
        taken = []
        ok = True
        for spec in wanted:
            key = (pg, spec["index"])
            if key in self.held:
                continue  # prepared already (a repeated message)
            bundle = Bundle(spec["resources"])
            if not self.resources.reserve(bundle.units):
                ok = False
                break
            self.held[key] = bundle
            taken.append(key)
        if not ok:
            for key in taken:
                self.resources.unreserve(self.held.pop(key).units)
        self.wire.send_head(Op.BUNDLES_PREPARED, {"pg_id": pg, "attempt": body["attempt"],
                                                  "node_id": self.node_id, "fits": ok})

    def on_commit(self, body: dict, raw: Any) -> None:
        pg = body["pg_id"]
        for index in body["indexes"]:
            bundle = self.held.get((pg, index))
            if bundle is None or bundle.committed:
                continue
            bundle.committed = True
            self.resources.add_named(bundles.group_resources(bundle.amounts, index, pg.hex()))
        self.dispatcher.retry_infeasible()  # tasks that waited for these names

    def on_release(self, body: dict, raw: Any) -> None:
        pg = body["pg_id"]
        for index in body["indexes"]:
            bundle = self.held.pop((pg, index), None)
            if bundle is None:
                continue
            if bundle.committed:
                self.resources.remove_named(
                    bundles.group_resources(bundle.amounts, index, pg.hex()))
            self.resources.unreserve(bundle.units)
        if body.get("removed"):
            self.removed.add(pg)
            self.end_group(pg)

    def group_missing(self, task: Any) -> None:
        """A task waits for its group's resources: fine, unless the group is gone."""
        strategy = task.spec.get("scheduling_strategy")
        if strategy and strategy[0] == "PG" and strategy[1] in self.removed:
            self.tasks.end_matching(lambda t: t is task, f"its placement group "
                                                         f"{strategy[1].hex()[:8]} was removed")

    def end_group(self, pg: bytes) -> None:
        """A group was removed: its actors here die, its tasks here fail (running
        ones are cancelled)."""
        pg_hex = pg.hex()
        why = f"its placement group {pg_hex[:8]} was removed"
        for actor in list(self.actors.actors.values()):
            if in_group(actor.spec, pg):
                self.actors.kill(actor.aid, True, from_head=True,
                                 reason=f"the actor was killed: {why}")
        ended = self.tasks.end_matching(lambda task: in_group(task.spec, pg), why)
        if ended:
            logger.info("placement group %s removed: %d task(s) ended", pg_hex[:8], ended)


def in_group(spec: dict, pg: bytes) -> bool:
    strategy = spec.get("scheduling_strategy")
    return bool(strategy) and strategy[0] == "PG" and strategy[1] == pg
