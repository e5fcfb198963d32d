"""A lost object made again by its owner's node for a reader on another node: the
reader's and the owner's agents alone (no sockets: what they send the head stays in
``agent.wire.to_head``); the head's part is in test_cluster_units."""

from __future__ import annotations

import pickle

import pytest

from agent_parts import add_worker, export, make_agent, spec, submit
from zray import exceptions
from zray._private import ids, security
from zray._private.protocol import ObjectKind, Op

pytestmark = pytest.mark.timeout(30)

MAKER, READER, REMADE, OWNER = (bytes([c]) * 16 for c in b"BCDA")


class Pulls:
    """The object table's puller, recording what it was asked to pull."""

    def __init__(self) -> None:
        self.started: list = []

    def start(self, oid: bytes, obj) -> None:
        self.started.append(oid)

    def abandon(self, oid: bytes, obj) -> None:
        pass


@pytest.fixture
def agent(tmp_path):
    agent = make_agent(tmp_path, token=security.new_token())
    agent.head.nodes = [{"node_id": n.hex(), "alive": True} for n in (MAKER, READER, REMADE)]
    export(agent)
    yield agent
    agent.workers.template.close()


def to_head(agent, op: Op) -> list:
    return [body for sent_op, body, _ in agent.wire.to_head if sent_op == op]


def rebuilt(agent, oid: bytes, holders=(), error_type="", message="") -> dict:
    return {"object_id": oid, "node_id": agent.node_id, "holders": list(holders),
            "error_type": error_type, "message": message}


def forwarded_here(agent, arg: bytes, name: str) -> dict:
    """A task from node OWNER whose argument ``arg`` is on node MAKER only."""
    task = spec(name, deps=[arg])
    agent.cluster.on_forward({"task": task, "origin": OWNER, "inline": {},
                              "locations": {arg: [MAKER]}}, [])
    return task


def test_a_reader_asks_the_owner_for_a_lost_argument_and_pulls_the_copy_made_again(agent):
    agent.objects.puller = pulls = Pulls()
    wid = add_worker(agent, 100)
    arg, doomed = ids.object_id(ids.new_id(), 0), ids.object_id(ids.new_id(), 0)
    task = forwarded_here(agent, arg, "reads")
    other = forwarded_here(agent, doomed, "reads too")
    assert pulls.started == [arg, doomed]
    agent.cluster.node_gone(MAKER)   # the only copies went with it
    assert to_head(agent, Op.REBUILD) == [
        {"object_id": oid, "node_id": agent.node_id, "unreachable": [MAKER]}
        for oid in (arg, doomed)]
    assert agent.tasks.get(task["task_id"]) is not None   # waiting, not failed
    agent.cluster.rebuilds.on_rebuilt(rebuilt(agent, arg, [REMADE]), [])
    obj = agent.objects.get(arg)
    assert pulls.started[-1] == arg and obj.where == [REMADE]
    agent.objects.land(arg, obj, ObjectKind.INLINE, [[0, 2]], b"ok", -1, 0)
    agent.dispatch()
    agent.wire.flush_outgoing()
    assert any(op == Op.EXECUTE for ident, op, _, _ in agent.wire.sent if ident == wid)
    agent.cluster.rebuilds.on_rebuilt(rebuilt(
        agent, doomed, error_type="OwnerDiedError", message="its owner died"), [])
    (result,) = [r for body in to_head(agent, Op.RESULT) if body["task_id"] == other["task_id"]
                 for r in body["results"]]
    assert result["kind"] == ObjectKind.ERROR
    agent.cluster.rebuilds.on_rebuilt(rebuilt(agent, arg, [MAKER]), [])   # late: ignored


def test_the_owner_makes_a_lost_object_again_and_tells_the_reader_where_it_is(agent):
    task = spec("make", resources={"special": 1.0}, max_retries=2)  # only elsewhere
    [made] = submit(agent, task)
    assert len(to_head(agent, Op.FORWARD)) == 1
    result = {"task_id": task["task_id"], "origin": agent.node_id, "node_id": MAKER,
              "error": "", "results": [{"object_id": made, "kind": ObjectKind.SHARED,
                                        "layout": [[0, 10]], "size": 4096, "contained": []}]}
    agent.cluster.on_result(result, [])
    ask = {"object_id": made, "node_id": READER, "unreachable": []}
    agent.cluster.rebuilds.on_rebuild(ask, [])      # the maker lives: pull from it
    assert to_head(agent, Op.REBUILT)[-1] == {"object_id": made, "node_id": READER,
                                              "holders": [MAKER], "error_type": "",
                                              "message": ""}
    agent.cluster.rebuilds.on_rebuild(dict(ask, unreachable=[MAKER]), [])
    assert len(to_head(agent, Op.FORWARD)) == 2     # made again from its lineage
    assert len(to_head(agent, Op.REBUILT)) == 1     # answered once it is ready
    agent.cluster.on_result(dict(result, node_id=REMADE), [])
    assert to_head(agent, Op.REBUILT)[-1]["holders"] == [REMADE]


def test_an_owner_that_cannot_make_it_again_gives_the_reader_the_error(agent):
    task = spec("once", resources={"special": 1.0}, max_retries=0)
    [made] = submit(agent, task)
    agent.cluster.on_result({
        "task_id": task["task_id"], "origin": agent.node_id, "node_id": MAKER, "error": "",
        "results": [{"object_id": made, "kind": ObjectKind.SHARED, "layout": [[0, 10]],
                     "size": 4096, "contained": []}]}, [])
    agent.cluster.rebuilds.on_rebuild({"object_id": made, "node_id": READER,
                                       "unreachable": [MAKER]}, [])
    assert to_head(agent, Op.REBUILT)[-1]["holders"] == [agent.node_id]  # the error is here
    error = pickle.loads(agent.objects.error_data(made))
    assert isinstance(error, exceptions.ObjectLostError) and "max_retries=0" in str(error)
    agent.cluster.rebuilds.on_rebuild({"object_id": ids.object_id(ids.new_id(), 0),
                                       "node_id": READER, "unreachable": []}, [])
    assert to_head(agent, Op.REBUILT)[-1]["error_type"] == "ObjectFreedError"
