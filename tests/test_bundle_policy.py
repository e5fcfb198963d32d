"""Placement groups' pure policy (zray._private.bundles): where bundles go, what a
committed bundle and a task in a group are called.  No processes."""

from __future__ import annotations

import pytest

from zray._private import bundles, scheduling
from zray._private.bundles import Room, place_bundles

A, B, C = b"a" * 16, b"b" * 16, b"c" * 16


def room(node: bytes, **free: float) -> Room:
    return Room(node, scheduling.to_units(free))


def units(*specs: dict) -> list:
    return [scheduling.to_units(s) for s in specs]


def test_strict_pack_puts_every_bundle_on_one_node_or_none():
    nodes = [room(A, CPU=1), room(B, CPU=3)]
    assert place_bundles(units({"CPU": 1}, {"CPU": 2}), "STRICT_PACK", nodes) == {0: B, 1: B}
    assert place_bundles(units({"CPU": 2}, {"CPU": 2}), "STRICT_PACK", nodes) is None


def test_strict_spread_needs_a_node_per_bundle():
    nodes = [room(A, CPU=2), room(B, CPU=2)]
    chosen = place_bundles(units({"CPU": 1}, {"CPU": 1}), "STRICT_SPREAD", nodes)
    assert sorted(chosen.values()) == [A, B]
    assert place_bundles(units(*[{"CPU": 1}] * 3), "STRICT_SPREAD", nodes) is None
    assert place_bundles(units({"CPU": 1}, {"CPU": 1}), "STRICT_SPREAD", [room(A, CPU=8)]) \
        is None


def test_strict_spread_searches_past_a_greedy_dead_end():
    # The big bundle fits only on A; a greedy pass giving A to the small one would fail.
    nodes = [room(A, CPU=4), room(B, CPU=1)]
    chosen = place_bundles(units({"CPU": 1}, {"CPU": 4}), "STRICT_SPREAD", nodes)
    assert chosen == {0: B, 1: A}


def test_strict_spread_keeps_away_from_bundles_already_placed():
    nodes = [room(A, CPU=4), room(B, CPU=4), room(C, CPU=4)]
    chosen = place_bundles(units({"CPU": 1}, {"CPU": 1}), "STRICT_SPREAD", nodes, {0: A})
    assert chosen == {1: B}


def test_pack_prefers_one_node_then_spills_over():
    nodes = [room(A, CPU=2), room(B, CPU=2)]
    one = place_bundles(units({"CPU": 1}, {"CPU": 1}), "PACK", nodes)
    assert len(set(one.values())) == 1
    two = place_bundles(units({"CPU": 2}, {"CPU": 1}), "PACK", nodes)
    assert sorted(two.values()) == [A, B]


def test_spread_uses_distinct_nodes_when_it_can_and_shares_when_it_must():
    nodes = [room(A, CPU=4), room(B, CPU=4)]
    two = place_bundles(units({"CPU": 1}, {"CPU": 1}), "SPREAD", nodes)
    assert sorted(two.values()) == [A, B]
    three = place_bundles(units(*[{"CPU": 1}] * 3), "SPREAD", nodes)
    assert sorted(set(three.values())) == [A, B]


def test_all_or_nothing_counts_every_bundle_against_the_free_room():
    nodes = [room(A, CPU=1), room(B, CPU=1)]
    assert place_bundles(units(*[{"CPU": 1}] * 3), "PACK", nodes) is None
    assert place_bundles(units(*[{"CPU": 1}] * 3), "SPREAD", nodes) is None
    assert place_bundles(units({"GPU": 1}), "PACK", nodes) is None


def test_nothing_left_to_place():
    assert place_bundles(units({"CPU": 1}), "PACK", [room(A, CPU=1)], {0: A}) == {}


def test_group_resources_and_task_demand_use_the_same_names():
    pg = "ab" * 16
    named = bundles.group_resources({"CPU": 2}, 1, pg)
    assert named[f"CPU_group_{pg}"] == 2 and named[f"CPU_group_1_{pg}"] == 2
    assert named[f"bundle_group_1_{pg}"] == bundles.MARKER_AMOUNT
    anywhere = bundles.task_demand({"CPU": 1}, pg, -1)
    assert anywhere == {f"CPU_group_{pg}": 1, f"bundle_group_{pg}": bundles.MARKER_SLIVER}
    in_one = bundles.task_demand({}, pg, 1)
    assert in_one == {f"bundle_group_1_{pg}": bundles.MARKER_SLIVER}
    assert scheduling.fits(scheduling.to_units(named),
                           scheduling.to_units(bundles.task_demand({"CPU": 2}, pg, 1)))
    assert bundles.is_group_resource(f"CPU_group_{pg}", pg)
    assert not bundles.is_group_resource("CPU", pg)


def test_bundles_are_checked_and_task_demands_compared_with_them():
    with pytest.raises(ValueError, match="non-empty list"):
        bundles.check_bundles([])
    with pytest.raises(ValueError, match="empty"):
        bundles.check_bundles([{"CPU": 0}])
    with pytest.raises(ValueError, match="non-negative"):
        bundles.check_bundles([{"CPU": -1}])
    specs = bundles.check_bundles([{"CPU": 1}, {"CPU": 2, "GPU": 0}])
    assert specs == [{"CPU": 1.0}, {"CPU": 2.0}]
    assert bundles.fits_bundle({"CPU": 2}, specs, -1)
    assert not bundles.fits_bundle({"CPU": 2}, specs, 0)
    assert not bundles.fits_bundle({"CPU": 3}, specs, -1)


# ------------------------------------------------- the head's reservations, without sockets
def fake_head(*cpus: float):
    """A Head built but never bound, with nodes of ``cpus`` CPUs; what it sends is kept."""
    from zray._private.head import Head
    from zray._private.head_records import NodeEntry

    head = Head(["ipc:///nonexistent/h.sock"], "ipc:///nonexistent/p.sock")
    head.sent = []
    head.reply = lambda ident, op, body, *raw: head.sent.append((ident, op, body)) or True
    head.publish = lambda topic, op, body: None
    for i, n in enumerate(cpus):
        node = bytes([i + 1]) * 16
        head.nodes[node] = NodeEntry(node, node, {"node_id": node, "resources": {"CPU": n}})
    return head


def create(head, pg: bytes, strategy="PACK", *bundle_list):
    from zray._private.protocol import Op

    head.handlers[Op.PG_REQUEST](b"client", {"req": 1, "action": "create", "pg_id": pg,
                                             "strategy": strategy,
                                             "bundles": list(bundle_list)}, [])


def sent(head, op):
    out = [(ident, body) for ident, o, body in head.sent if o == op]
    head.sent = [m for m in head.sent if m[1] != op]
    return out


def answer(head, prepares, ok=True):
    from zray._private.protocol import Op

    for node, body in prepares:
        head.handlers[Op.BUNDLES_PREPARED](node, {"pg_id": body["pg_id"],
                                                  "attempt": body["attempt"],
                                                  "node_id": node, "fits": ok}, [])


def test_a_refused_prepare_gives_back_what_others_prepared_and_tries_again():
    from zray._private.protocol import Op

    head = fake_head(1, 1)
    pg = b"p" * 16
    create(head, pg, "STRICT_SPREAD", {"CPU": 1}, {"CPU": 1})
    prepares = sent(head, Op.BUNDLES_PREPARE)
    assert sorted(n for n, _ in prepares) == sorted(head.nodes)
    answer(head, prepares[:1], ok=True)
    answer(head, prepares[1:], ok=False)
    released = sent(head, Op.BUNDLES_RELEASE)
    # Every chosen node gives back what it set aside (the one that refused holds nothing).
    assert sorted(n for n, _ in released) == sorted(head.nodes)
    assert not any(body["removed"] for _, body in released)
    assert not sent(head, Op.BUNDLES_COMMIT)
    assert head.pgs.groups[pg].state == "PENDING"
    head.pgs.tick(head.pgs.next_try + 1)  # later: tried again, and this time all agree
    prepares = sent(head, Op.BUNDLES_PREPARE)
    answer(head, prepares)
    assert len(sent(head, Op.BUNDLES_COMMIT)) == 2
    assert head.pgs.groups[pg].state == "CREATED"


def test_one_reservation_at_a_time_so_competitors_never_split_the_room():
    from zray._private.protocol import Op

    head = fake_head(2)
    first, second = b"1" * 16, b"2" * 16
    create(head, first, "PACK", {"CPU": 1}, {"CPU": 1})
    create(head, second, "PACK", {"CPU": 1}, {"CPU": 1})
    prepares = sent(head, Op.BUNDLES_PREPARE)
    assert [body["pg_id"] for _, body in prepares] == [first]  # the second waits its turn
    answer(head, prepares)
    head.pgs.tick(head.pgs.next_try + 1)
    assert not sent(head, Op.BUNDLES_PREPARE)  # no room left for the second: not tried
    assert head.pgs.groups[second].state == "PENDING"


def test_a_node_back_from_the_dead_gives_back_bundles_reserved_elsewhere():
    from zray._private.protocol import Op

    head = fake_head(1, 1)
    pg = b"p" * 16
    create(head, pg, "PACK", {"CPU": 1})
    prepares = sent(head, Op.BUNDLES_PREPARE)
    answer(head, prepares)
    holder = prepares[0][0]
    head.node_died(head.nodes[holder])
    assert head.pgs.groups[pg].state == "RESCHEDULING"
    head.pgs.tick(head.pgs.next_try + 1)
    again = sent(head, Op.BUNDLES_PREPARE)
    assert [n for n, _ in again] != [holder]
    answer(head, again)
    assert head.pgs.groups[pg].state == "CREATED"
    head.sent.clear()
    head.nodes[holder].alive = True   # its heartbeats resume
    head.pgs.tick(head.pgs.next_try + 1)
    assert sent(head, Op.BUNDLES_RELEASE) == [(holder, {"pg_id": pg, "indexes": [0],
                                                        "removed": False})]


# ------------------------------------------------- a node agent's bundles, without sockets
def test_an_agent_prepares_all_or_none_commits_names_and_gives_back(tmp_path):
    from agent_parts import make_agent, spec, submit

    from zray._private import bundles as policy
    from zray._private.protocol import Op

    agent = make_agent(tmp_path, cpus=2)
    pg = b"g" * 16
    prepared = lambda: [b for op, b, *_ in agent.wire.to_head  # noqa: E731
                        if op == Op.BUNDLES_PREPARED][-1]
    handlers = agent.head_handlers
    too_much = [{"index": 0, "resources": {"CPU": 1.0}}, {"index": 1, "resources": {"CPU": 2.0}}]
    handlers[Op.BUNDLES_PREPARE]({"pg_id": pg, "attempt": 1, "bundles": too_much}, [])
    assert prepared()["fits"] is False
    assert agent.resources.as_amounts()["CPU"] == 2  # nothing kept of a refusal
    fits = [{"index": 0, "resources": {"CPU": 1.0}}]
    handlers[Op.BUNDLES_PREPARE]({"pg_id": pg, "attempt": 2, "bundles": fits}, [])
    assert prepared()["fits"] is True and agent.resources.as_amounts()["CPU"] == 1
    # A task in the group waits (no warning) until the bundle is committed, then fits.
    task = spec("in_group", resources=policy.task_demand({"CPU": 1}, pg.hex(), 0),
                scheduling_strategy=["PG", pg, 0, False])
    submit(agent, task)
    assert agent.dispatcher.infeasible and not [b for op, b, *_ in agent.wire.sent
                                                if op == Op.WARN]
    handlers[Op.BUNDLES_COMMIT]({"pg_id": pg, "indexes": [0]}, [])
    assert not agent.dispatcher.infeasible
    assert agent.resources.declared[f"CPU_group_0_{pg.hex()}"] == 1
    handlers[Op.BUNDLES_RELEASE]({"pg_id": pg, "indexes": [0], "removed": True}, [])
    assert agent.resources.as_amounts()["CPU"] == 2
    assert not any("_group_" in name for name in agent.resources.declared)
