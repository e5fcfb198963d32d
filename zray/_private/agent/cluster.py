"""This node's link to the head and, on a TCP cluster, to the other nodes.

::

    HeadLink:    REGISTER ──▶ head ──▶ REGISTERED (node table, PUB address)
                 HEARTBEAT every HEARTBEAT_INTERVAL ──▶ HEARTBEAT_ACK (node table)
                 no word from the head for HEARTBEAT_LIVENESS intervals: it is silent
    ClusterLink: FORWARD a task this node cannot (or should not) run ──▶ head places it
                 FORWARD from the head ──▶ run it here ──▶ RESULT back to its origin
                 PUB: nodes joined or died, objects sealed or freed (numbered; a gap
                 asks the head for a snapshot, the zguide's Clone pattern)

Every node has a HeadLink (an embedded session's head is on ipc).  Only a
node of a TCP cluster has a ClusterLink; on a single node it is absent and
nothing here runs.

Owns: the node table as last heard from the head, the head's liveness, the
PUB subscription, which jobs' drivers live on which node.
Must not: run tasks or hold task records; it uses the task table's,
actor table's and object table's verbs.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Dict, List, Optional

import zmq

from zray import exceptions
from zray._private import protocol, ratelog, scheduling, validate
from zray._private.agent.objects import READY, SHARED, is_remote
from zray._private.agent.rebuilds import Rebuilds
from zray._private.agent.tasks import REMOTE, WAITING, Task
from zray._private.protocol import HEARTBEAT_INTERVAL, HEARTBEAT_LIVENESS, Op

logger = logging.getLogger("zray.node")


class HeadLink:
    """Registration and heartbeats with the head, both ways."""

    def __init__(self, wire: Any, node_info: Callable[[], dict],
                 load_info: Callable[[], dict]) -> None:
        self.wire = wire
        self.node_info = node_info
        self.load_info = load_info
        self.nodes: List[dict] = []        # the head's node table, as last heard
        self.last_heard = time.monotonic()
        self.next_beat = 0.0
        self.silent = False
        self.next_req = 0
        self.pending: Dict[int, Callable[[Optional[dict]], None]] = {}  # req -> on_reply
        # Listeners, set by the agent on a cluster.
        self.on_registered: Callable[[dict], None] = lambda body: None
        self.on_node_died: Callable[[bytes], None] = lambda node_id: None
        self.on_other_reply: Callable[[dict, Any], None] = lambda body, raw: None
        self.on_silent: Callable[[], None] = lambda: None

    def start(self, now: float) -> None:
        self.last_heard = now
        self.next_beat = now
        self.wire.send_head(Op.REGISTER, self.node_info())

    def tick(self, now: float) -> None:
        """Send a heartbeat when one is due; notice a head that has gone silent."""
        if now < self.next_beat:
            return
        self.next_beat = now + HEARTBEAT_INTERVAL
        self.wire.send_head(Op.HEARTBEAT, self.load_info())
        quiet = now - self.last_heard
        if not self.silent and quiet > HEARTBEAT_INTERVAL * HEARTBEAT_LIVENESS:
            self.silent = True
            message = (f"the zray head has not answered for {quiet:.1f}s; work that needs "
                       f"another node waits until it is back")
            logger.warning(message)
            for job in list(self.wire.drivers):
                self.wire.tell_driver(job, Op.WARN, {"message": message})
            pending, self.pending = self.pending, {}
            for on_reply in pending.values():
                on_reply(None)  # nobody waits on a silent head
            self.on_silent()

    def request(self, body: dict, on_reply: Callable[[Optional[dict]], None]) -> None:
        """Ask the head (HEAD_QUERY); ``on_reply`` gets its HEAD_REPLY, or None if
        the head is silent."""
        if self.silent:
            on_reply(None)
            return
        self.next_req += 1
        body["req"] = self.next_req
        self.pending[self.next_req] = on_reply
        if not self.wire.send_head(Op.HEAD_QUERY, body):
            del self.pending[self.next_req]
            on_reply(None)

    def on_head_reply(self, body: dict, raw) -> None:
        on_reply = self.pending.pop(body.get("req", 0), None)
        if on_reply is not None:
            on_reply(body)
        else:
            self.on_other_reply(body, raw)

    def heard(self, now: float) -> None:
        """Any message from the head: it is alive."""
        self.last_heard = now
        if self.silent:
            self.silent = False
            logger.info("the zray head answers again")

    def status(self) -> dict:
        return {"alive": not self.silent,
                "silent_for": round(time.monotonic() - self.last_heard, 3)}

    def on_registered_msg(self, body: dict, raw) -> None:
        self.nodes = body.get("nodes", self.nodes)
        self.on_registered(body)

    def update_nodes(self, nodes: List[dict]) -> None:
        self.nodes = nodes

    def on_heartbeat_ack(self, body: dict, raw) -> None:
        if body.get("unknown"):  # the head restarted and forgot us
            self.wire.send_head(Op.REGISTER, self.node_info())
        before = {n["node_id"]: n.get("alive") for n in self.nodes}
        self.nodes = body.get("nodes", self.nodes)
        for node in self.nodes:
            if before.get(node["node_id"]) and not node.get("alive"):
                self.on_node_died(bytes.fromhex(node["node_id"]))

    def node_table(self, me: dict) -> List[dict]:
        """This node as it is now, then the others as the head last said."""
        return [me] + [n for n in self.nodes if n.get("node_id") != me["node_id"]]


def cluster_resources(nodes: List[dict]) -> tuple:
    """``(total, available)`` over the alive nodes of a node table."""
    total: Dict[str, float] = {}
    available: Dict[str, float] = {}
    for node in nodes:
        if not node.get("alive"):
            continue
        for name, amount in node.get("resources", {}).items():
            total[name] = total.get(name, 0) + amount
        for name, amount in node.get("available", {}).items():
            available[name] = available.get(name, 0) + max(0.0, amount)
    return total, {k: v for k, v in available.items() if v > 0}


class ClusterLink:
    def __init__(self, *, node_id: bytes, head: HeadLink, objects: Any, tasks: Any,
                 actors: Any, resources: Any, transfer: Any, wire: Any) -> None:
        self.node_id = node_id
        self.head = head
        self.objects = objects
        self.tasks = tasks
        self.actors = actors
        self.resources = resources
        self.transfer = transfer
        self.wire = wire
        self.sub: Optional[zmq.Socket] = None
        self.pub_seq = -1
        self.freed_out: List[bytes] = []           # exported objects freed here: announce
        self.copies_out: Dict[str, List[bytes]] = {"copied": [], "dropped": []}
        self.job_origins: Dict[bytes, bytes] = {}  # job -> node of its driver
        self.rebuilds = Rebuilds(node_id, objects, head, wire)   # lost objects, made again
        self.subscribe: Callable[[str], None] = lambda address: None  # set by the agent

    # ------------------------------------------------------------------ head link
    pub_address = ""    # the head's PUB this node listens to
    registrations = 0

    def registered(self, body: dict) -> None:
        self.registrations += 1
        if self.registrations > 1:
            # The head restarted: what it had placed for us it has forgotten, and what
            # we sent it while it was down may be gone. Hand our remote tasks over again
            # (a node that has one already drops the copy; one that finished may run it
            # again, as a retry would).
            remote = self.tasks.remote_tasks()
            for task in remote:
                self.forward(task)
            self.rebuilds.ask_again()
            if remote:
                logger.info("the head is back: %d remote task(s) handed over again",
                            len(remote))
        self.pub_seq = body.get("seq", 0)
        address = body.get("pub_address")
        if address and address != self.pub_address:
            self.pub_address = address
            self.subscribe(address)

    def flush(self) -> None:
        """End of a loop pass: announce the exported objects freed here."""
        if self.freed_out:
            self.wire.send_head(Op.OBJECTS_FREED, {"node_id": self.node_id,
                                                   "object_ids": self.freed_out})
            self.freed_out = []
        if self.copies_out["copied"] or self.copies_out["dropped"]:
            self.wire.send_head(Op.OBJECT_COPIES, dict(self.copies_out, node_id=self.node_id))
            self.copies_out = {"copied": [], "dropped": []}

    def object_copied(self, oid: bytes) -> None:
        """Listener: a copy was pulled here; the head's directory lists it."""
        self.copies_out["copied"].append(oid)

    def object_freed(self, oid: bytes, obj: Any) -> None:
        """Listener: other nodes hold copies of an exported object; they drop them.
        A pulled copy's going is this node's alone (its owner frees the object)."""
        self.rebuilds.freed(oid)
        if obj.copy:
            if obj.kind == SHARED and not obj.where:   # there were bytes here
                self.copies_out["dropped"].append(oid)
        elif obj.exported and obj.held_for is None:
            self.freed_out.append(oid)

    def route_log(self, body: dict) -> None:
        """A forwarded task's output goes to its driver's node, through the head."""
        origin = self.job_origins.get(body.get("job_id", b""))
        if origin is not None:
            body["to_node"] = origin
            self.wire.send_head(Op.LOG, body)

    def kill_remote(self, aid: bytes, no_restart: bool) -> None:
        self.wire.send_head(Op.KILL_ACTOR, {"actor_id": aid, "no_restart": no_restart})

    def on_kill_actor(self, body: dict, raw) -> None:
        self.actors.kill(body["actor_id"], body.get("no_restart", True), from_head=True)

    # ------------------------------------------------------------------ forwarding
    def forward(self, task: Task, exclude: Optional[bytes] = None) -> None:
        """Hand a task to the head's global scheduler; its RESULT comes back here."""
        spec = task.spec
        frames: List[Any] = []
        inline: Dict[bytes, list] = {}
        located: Dict[bytes, List[bytes]] = {}
        body: Dict[str, Any] = {"task": spec, "origin": self.node_id, "inline": inline,
                                "locations": located}
        fid = spec.get("function_id")
        if fid:
            blob, path = self.tasks.function(fid)
            if blob is not None:
                body["function_frame"], body["sys_path"] = len(frames), path
                frames.append(blob)
        for oid in (*task.deps, *spec.get("contained", ())):
            obj = self.objects.get(oid)
            if obj is None or obj.state is not READY:
                continue
            if obj.kind != SHARED:
                inline[oid] = [int(obj.kind), obj.layout, len(frames)]
                frames.append(obj.data)
            else:
                located[oid] = list(obj.where) if is_remote(obj) else [self.node_id]
                obj.exported = True
        if exclude is not None:
            body["exclude_node"] = exclude
        for oid in task.returns:
            obj = self.objects.get(oid)
            if obj is not None:
                obj.exported = True  # the copy kept there goes when it is freed here
        moved = self.actors.moved_away(task) if task.actor is not None and \
            task.creates_actor else ()
        task.state = REMOTE
        self.wire.send_head(Op.FORWARD, body, *frames)
        for call in moved:   # calls made before it moved follow it, after it
            self.tasks.send_away(call)

    def head_silent(self) -> None:
        """The head stopped answering: tasks this node handed on only because it was
        busy come back to run here (the head may be gone with them)."""
        for task in self.tasks.remote_tasks():
            if not task.is_actor_task and not task.spec.get("scheduling_strategy") \
                    and not self.tasks.missing(task):
                self.came_back(task)

    def offload(self, task: Task, queued: int) -> bool:
        """A saturated node hands the head of a queue to a node that is idle now."""
        if self.head.silent:
            return False  # the head is gone for now: keep it here
        for oid in task.spec.get("contained", ()):
            obj = self.objects.get(oid)
            if obj is None or obj.state is not READY:
                return False  # it could not say where a nested ref is: run it here
        if task.placed or task.spec.get("scheduling_strategy"):
            return False  # the head (or its strategy) put it here: it waits here
        me = self.node_id.hex()
        others = [n for n in self.head.nodes if n.get("alive") and n.get("node_id") != me]
        if not others:
            return False
        for oid in task.deps:
            obj = self.objects.get(oid)
            if obj is not None and is_remote(obj):
                return False
        local = scheduling.NodeLoad(self.node_id, self.resources.total,
                                    self.resources.available, queued=queued)
        views = [scheduling.NodeLoad(bytes.fromhex(n["node_id"]),
                                     scheduling.to_units(n.get("resources", {})),
                                     scheduling.to_units(n.get("available", {})),
                                     queued=n.get("queued", 0)) for n in others]
        target = scheduling.should_spill(local, views, task.demand)
        if target is None:
            return False
        entry = next(n for n in others if n["node_id"] == target.hex())
        # Count it against that node until its next heartbeat says otherwise.
        available = dict(entry.get("available", {}))
        for name, amount in scheduling.from_units(task.demand).items():
            available[name] = available.get(name, 0) - amount
        entry["available"] = available
        self.forward(task, exclude=self.node_id)
        return True

    def on_forward(self, body: dict, raw) -> None:
        """Run a task another node forwarded; send its RESULT back when it ends."""
        spec = body["task"]
        known = self.tasks.get(spec["task_id"])
        if known is not None:
            if known.state is REMOTE:
                self.came_back(known)  # the head placed it on a node it had passed
            return
        if body["origin"] == self.node_id:
            return  # one of ours that ended (cancelled, its job gone) while the head held it
        if "function_frame" in body:
            self.tasks.add_function(spec["function_id"], raw[body["function_frame"]],
                                    body.get("sys_path") or [])
        task = Task(spec, b"")
        task.origin = body["origin"]
        task.placed = True
        self.tasks.adopt(task)
        self.job_origins[task.job] = task.origin
        for oid in task.returns:
            self.objects.hold_for_node(oid, task.origin)
        self.take_args(task, body.get("inline", {}), body.get("locations", {}), raw)
        if not self.admitted(task):
            return
        for oid in task.deps:
            if self.objects.wait_for(oid, task):
                task.deps_left += 1
                obj = self.objects.get(oid)
                if obj.where:
                    self.objects.request_bytes(oid, obj)
                else:
                    self.objects.lose(oid, obj, "no node was known to hold it when its "
                                                "task was forwarded")
        if task.deps_left == 0 and task.state is WAITING:
            self.tasks.make_ready(task)

    def came_back(self, task: Task) -> None:
        """One of this node's tasks the head placed here after all: a task, an
        actor's creation, or a call to an actor that lives here after all."""
        task.placed = True
        task.state = WAITING
        if self.admitted(task):
            self.tasks.make_ready(task)

    def admitted(self, task: Task) -> bool:
        """An actor task sent here taken in by its actor (a plain task: True); an
        actor's call that cannot be fails with ActorDiedError saying why."""
        why = self.actors.admit(task, True) if task.is_actor_task else None
        if why is not None:
            self.tasks.finish_with_error(task, exceptions.ActorDiedError(
                f"cannot call {task.name}: {why}"))
        return why is None

    def take_args(self, task: Task, inline: dict, located: dict, raw) -> None:
        """A forwarded task's arguments: small ones came with it, large ones are elsewhere."""
        for oid in (*task.deps, *task.spec.get("contained", ())):
            known = self.objects.get(oid) is not None
            obj = self.objects.ensure(oid)
            self.objects.incref(oid)  # before sealing: a sealed object nobody holds is freed
            task.held.append(oid)
            if known:
                continue
            if oid in inline:
                kind, layout, index = inline[oid]
                self.objects.seal(oid, obj, kind, layout, raw[index], -1, ())
            else:
                obj.where = list(located.get(oid, ()))
                obj.copy = True   # owned by the task's origin node, not this one

    def send_result(self, task: Task) -> None:
        """A forwarded task finished here: its results go back to its origin node."""
        self.send_objects(task, task.returns, False)

    def send_items(self, task: Task, oids: List[bytes]) -> None:
        """A forwarded generator task yielded: its origin node hears at once."""
        self.send_objects(task, oids, True)

    def send_objects(self, task: Task, oids: List[bytes], partial: bool) -> None:
        results: List[dict] = []
        frames: List[Any] = []
        inner: List[bytes] = []
        for oid in oids:
            obj = self.objects.get(oid)
            if obj is None or obj.state is not READY:
                continue
            results.append(self.entry(oid, obj, frames))
            inner += obj.contained
        # Refs inside the results (a task that returns zray.put(x)) go along, so the
        # origin knows what and where they are; shared ones are kept here for it.
        for oid in inner:
            obj = self.objects.get(oid)
            if obj is None or obj.state is not READY or obj.where:
                continue
            entry = self.entry(oid, obj, frames)
            entry["inner"] = True
            results.append(entry)
            if obj.kind == SHARED:
                self.objects.hold_for_node(oid, task.origin)
        body = {"task_id": task.tid, "origin": task.origin, "node_id": self.node_id,
                "results": results, "error": task.err}
        if partial:
            body["partial"] = True
        self.wire.send_head(Op.RESULT, body, *frames)
        for oid in oids:
            obj = self.objects.get(oid)
            if obj is None or obj.kind == SHARED:
                continue
            if self.actors.is_anchor(oid):
                obj.exported = True  # the actor lives until its origin frees the anchor
            else:
                self.release_held(oid)  # its bytes went with the RESULT

    def entry(self, oid: bytes, obj: Any, frames: List[Any]) -> dict:
        """A local object as a RESULT entry: a shared one stays here (the origin pulls
        it when read), the bytes of any other travel in ``frames``."""
        if obj.kind == SHARED:
            obj.exported = True
            return {"object_id": oid, "kind": int(obj.kind), "layout": obj.layout,
                    "size": obj.size, "contained": obj.contained}
        frames.append(obj.data)
        return {"object_id": oid, "kind": int(obj.kind), "layout": obj.layout,
                "frame": len(frames) - 1, "contained": obj.contained}

    def remote_task(self, body: dict) -> Optional[Task]:
        task = self.tasks.get(body["task_id"])
        return task if task is not None and task.state is REMOTE else None

    def on_result(self, body: dict, raw) -> None:
        task = self.remote_task(body)
        if task is None:
            return
        node = body.get("node_id")
        partial = body.get("partial")
        results = body.get("results", ())
        for result in results:  # refs inside results must exist before those results seal
            if result.get("inner"):
                self.objects.ensure(result["object_id"])
        for result in results:
            oid = result["object_id"]
            if partial and not result.get("inner"):  # a generator's item: its owner's now
                self.objects.expect_result(oid, task.owner)
            known = self.objects.get(oid)
            if result.get("inner") and known is not None and known.state is READY:
                continue  # a copy is here already
            obj = self.objects.ensure(oid)  # nobody may hold it: then it goes once sealed
            obj.exported = True
            kind = result["kind"]
            if kind == SHARED:
                obj.where = [node]
                self.objects.seal(oid, obj, SHARED, result["layout"], None, -1,
                                  result.get("contained", ()), int(result["size"]))
            else:
                self.objects.seal(oid, obj, kind, result["layout"], raw[result["frame"]], -1,
                                  result.get("contained", ()))
            if kind == protocol.ObjectKind.ERROR:
                self.tasks.record_error(task, body.get("error", ""))
        if not partial:
            self.tasks.remember(task, [r["object_id"] for r in results if r["kind"] == SHARED
                                       and not r.get("inner")])
            self.tasks.finish(task)

    def on_task_failed(self, body: dict, raw) -> None:
        task = self.remote_task(body)
        if task is not None:
            self.tasks.finish_with_error(task, exceptions.from_error(
                body.get("error_type", ""), body.get("message", "")))

    def on_task_unplaceable(self, body: dict, raw) -> None:
        task = self.remote_task(body)
        if task is not None:
            self.wire.warn(task.job, body.get("message", ""))

    # ------------------------------------------------------------------ PUB channel
    def drain_sub(self) -> None:
        for _ in range(1000):
            try:
                frames = self.sub.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.on_pub(frames)

    def on_pub(self, frames: List[bytes]) -> None:
        try:
            op, body, raw = protocol.decode(frames[1:])
            if op not in (Op.PUB_NODE, Op.PUB_OBJECT):
                raise protocol.ProtocolError(f"the PUB channel carries no {op.name}")
            validate.check(op, body, raw)
        except (protocol.ProtocolError, IndexError) as exc:
            ratelog.limited(logger).refused(None, "the head's PUB channel", exc)
            return
        seq = body.get("seq", 0)
        if seq <= self.pub_seq:
            return  # already covered by a snapshot
        if seq != self.pub_seq + 1:
            # Missed messages: ask for the state instead of replaying (zguide's Clone).
            logger.info("PUB gap (%d after %d): asking the head for a snapshot", seq,
                        self.pub_seq)
            self.wire.send_head(Op.HEAD_QUERY, {"what": "snapshot"})
        self.pub_seq = seq
        if op == Op.PUB_NODE and body.get("event") == "died":
            self.node_gone(body["node_id"])
        elif op == Op.PUB_NODE:
            self.wire.send_head(Op.HEAD_QUERY, {"what": "nodes"})  # the new node's entry
        elif op == Op.PUB_OBJECT:
            for oid in body.get("freed", ()):
                self.release_held(oid)
            node = body.get("node_id")
            for oid in body.get("sealed", ()):
                obj = self.objects.get(oid)
                if obj is not None and obj.where and node not in obj.where:
                    obj.where.append(node)

    def on_head_reply(self, body: dict, raw) -> None:
        if body.get("error"):
            logger.warning("the head answered with an error: %s", body["error"])
        if "directory" in body:
            self.pub_seq = max(self.pub_seq, body.get("seq", 0))
            directory = body["directory"]
            for oid, obj in self.objects.all():
                if obj.held_for is not None and oid not in directory:
                    self.release_held(oid)  # freed while we were not listening
        if "nodes" in body:
            self.head.update_nodes(body["nodes"])

    def release_held(self, oid: bytes) -> None:
        obj = self.objects.get(oid)
        if obj is not None and obj.held_for is not None:
            obj.held_for = None
            obj.exported = False  # its owner announced the free already
            self.objects.decref(oid)

    def node_gone(self, node_id: bytes) -> None:
        """A node died: what only it held is lost; what we kept for it is let go."""
        logger.warning("node %s died", node_id.hex()[:8])
        self.transfer.node_gone(node_id)
        for oid, obj in self.objects.all():
            if obj.held_for == node_id:
                self.release_held(oid)
                continue
            there = node_id in obj.where
            if there:
                obj.where.remove(node_id)
            if self.transfer.pulling_from(oid, node_id):
                self.transfer.retry(oid, obj)
            elif not obj.where and obj.offset < 0 and not obj.pulling and (
                    is_remote(obj) or (there and obj.state is not READY)):  # a copy to come
                self.objects.lose(oid, obj, f"the only node holding it ({node_id.hex()[:8]}) "
                                            f"died", [node_id])
