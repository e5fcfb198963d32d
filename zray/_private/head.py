"""The head: broker between node agents, the cluster tables, the global scheduler, PUB.

::

    node agents ──DEALER──▶ ROUTER (ipc for an embedded session; tcp + CURVE for `zray head`)
    zray status ──DEALER──▶ same ROUTER
    PUB ──▶ agents' SUB: node joins and deaths, objects sealed and freed (numbered)

The head keeps the node table (resources, load, liveness from heartbeats),
the object directory (which nodes hold a copy of each object that crossed
nodes, and the node that owns it) and where each actor placed by it lives.
When a node dies, a reader elsewhere that finds no copy left asks the
object's owner, through the head, to make it again (``head_recovery``).
Tasks reach it only when a node cannot place them itself: demand its node
can never meet, or a saturated node handing work to an idle one.  The head
places each on a node, remembers it until its RESULT passes back, and places
it again (or fails it with TASK_FAILED) if that node dies.  A single-node
program never waits on it.

Liveness goes both ways: every HEARTBEAT is answered with a HEARTBEAT_ACK
(``unknown`` when the head has no entry for the sender, which then registers
again), so an agent that stops hearing acks knows the head is gone.

It also keeps the state API's store (``head_state``): the task events
agents batch to it, and each node's state, collected from every node when
someone asks (`zray list`, ``zray.util.state``, the dashboard it may serve).

The head never unpickles anything: task specs, functions and values pass
through it as opaque frames.  Every message it reads or writes is declared in
:mod:`zray._private.protocol`.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import time
from typing import Any, Dict, List, Optional

import zmq

from zray._private import bundles, names, protocol, ratelog, scheduling, validate
from zray._private.names import ActorNames
from zray._private.head_pgs import PlacementGroups
from zray._private.head_records import Directory, NodeEntry, Placed
from zray._private.head_recovery import RecoveryVerbs
from zray._private.head_state import ClusterState, StateVerbs
from zray._private.head_jobs import JobManager
from zray._private.protocol import ObjectKind, Op

logger = logging.getLogger("zray.head")


class Head(StateVerbs, RecoveryVerbs):
    """The head's state and its one ROUTER loop.

    Building one opens nothing; :meth:`bind` opens the sockets and
    :meth:`serve` runs the loop (tests drive :meth:`poll_once` themselves).
    """

    def __init__(self, addresses: List[str], pub_address: str, parent_pid: Optional[int] = None,
                 token: Optional[str] = None) -> None:
        self.addresses = addresses
        self.pub_address = pub_address
        self.parent_pid = parent_pid
        self.token = token
        self.nodes: Dict[bytes, NodeEntry] = {}
        self.placed: Dict[bytes, Placed] = {}
        self.unplaced: List[Placed] = []        # no alive node could ever run them
        self.held_calls: Dict[bytes, List[Placed]] = {}   # by actor: its creation waits
        self.actors: Dict[bytes, bytes] = {}    # actor id -> node id
        self.directory = Directory()
        self.rebuild_asks: Dict[bytes, set] = {}   # owner -> {(object, reader)} (see on_rebuild)
        self.names = ActorNames()
        self.state = ClusterState(self.table)
        #: RESULTs for nodes not registered (yet) with this head, delivered when they do.
        self.undelivered: Dict[bytes, List[tuple]] = {}
        self.dashboard: Any = None
        self.next_refresh = 0.0
        self.spread_counts: Dict[bytes, int] = {}   # SPREAD tasks given to each node
        self.pgs = PlacementGroups(self)           # placement groups (head_pgs)
        self.seq = 0
        self.running = True
        self.starter_fd = -1      # a pipe to the process that started us (see main)
        self.ctx: Optional[zmq.Context] = None
        self.router: Optional[zmq.Socket] = None
        self.pub: Optional[zmq.Socket] = None
        self.guard = None
        self.ipc_paths: List[str] = []
        self.handlers = {Op.REGISTER: self.on_register, Op.HEARTBEAT: self.on_heartbeat,
                         Op.HEAD_QUERY: self.on_head_query, Op.FORWARD: self.on_forward,
                         Op.RESULT: self.on_result, Op.OBJECTS_FREED: self.on_objects_freed,
                         Op.KILL_ACTOR: self.on_kill_actor, Op.LOG: self.on_log,
                         Op.EVENTS: self.on_events, Op.JOB_ENDED: self.on_job_ended,
                         Op.OBJECT_COPIES: self.on_object_copies,
                         Op.REBUILD: self.on_rebuild, Op.REBUILT: self.on_rebuilt}
        self.jobs = JobManager(self.reply, addresses, token, self.handlers)  # TCP heads' jobs
        self.handlers.update(self.pgs.handlers())

    # ------------------------------------------------------------------ sockets
    def bind(self) -> None:
        """Open the ROUTER and PUB on their addresses (``pub_address`` becomes the bound one)."""
        self.ctx = zmq.Context()
        keys = None
        if self.token:
            # Only a TCP cluster has keys; an embedded session's head on ipc
            # never loads zmq.auth (and the asyncio it pulls in).
            from zray._private import security

            keys = security.Keys(self.token)
            self.guard = security.Guard(self.ctx, keys, "the head")
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.setsockopt(zmq.SNDHWM, 0)
        self.router.setsockopt(zmq.RCVHWM, 0)
        self.pub = self.ctx.socket(zmq.PUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.pub.setsockopt(zmq.SNDHWM, 0)
        if keys:
            keys.serve(self.router)
            keys.serve(self.pub)
        old_umask = os.umask(0o077)
        try:
            for address in self.addresses:
                self.router.bind(address)
            self.pub.bind(self.pub_address)
            self.pub_address = self.pub.getsockopt_string(zmq.LAST_ENDPOINT)
        finally:
            os.umask(old_umask)
        if self.guard:
            self.guard.watch(self.router, self.pub)
        self.ipc_paths = [a[len("ipc://"):] for a in self.addresses + [self.pub_address]
                          if a.startswith("ipc://")]

    def close(self) -> None:
        self.jobs.stop_all()  # no job outlives its head
        if self.dashboard is not None:
            self.dashboard.stop()
            self.dashboard = None
        if self.starter_fd >= 0:
            os.close(self.starter_fd)
            self.starter_fd = -1
        if self.guard:
            self.guard.stop()
        for sock in (self.router, self.pub):
            if sock is not None:
                sock.close(0)
        if self.ctx is not None:
            self.ctx.term()
        for path in self.ipc_paths:
            try:
                os.unlink(path)
            except OSError:
                pass

    def stop(self) -> None:
        """Leave the loop at its next turn (the signal handler)."""
        self.running = False

    def tell_starter(self, line: str) -> None:
        """One line to whoever started us, while it listens (it closes the pipe when done)."""
        if self.starter_fd < 0:
            return
        try:
            os.write(self.starter_fd, line.encode() + b"\n")
        except OSError:  # it stopped listening
            os.close(self.starter_fd)
            self.starter_fd = -1

    def serve(self) -> None:
        try:
            while self.running:
                self.poll_once(100)
                self.purge_expired()
                now = time.monotonic()
                self.pgs.tick(now)
                self.jobs.poll(now)
                for late in self.state.expired(now):
                    self.answer_state(late)
                if self.dashboard is not None:
                    self.refresh_for_dashboard(now)
                if self.parent_pid and os.getppid() != self.parent_pid:
                    break
        finally:
            self.close()

    def poll_once(self, timeout_ms: int) -> int:
        """Handle what arrives within ``timeout_ms`` (at most 1000 messages); how many."""
        handled = 0
        if self.router.poll(timeout_ms):
            for _ in range(1000):
                try:
                    frames = self.router.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                self.handle(frames)
                handled += 1
        return handled

    def handle(self, frames: List[Any]) -> None:
        ident = frames[0].bytes
        op, body = None, {}
        try:
            op, body, raw = protocol.decode([frames[1].bytes] + frames[2:])
            handler = self.handlers.get(op) or validate.unserved(op, "the head")
            validate.check(op, body, raw)  # a refused message is refused whole: nothing runs
        except (protocol.ProtocolError, IndexError) as exc:
            ratelog.limited(logger).refused(op, ident.hex()[:8], exc)
            if op is Op.HEARTBEAT:  # acked whatever it says: "unknown" has it register again
                self.reply(ident, Op.HEARTBEAT_ACK, {"unknown": True, "nodes": self.table()})
            elif op is None or "req" in body:  # junk may be a request; else nobody waits
                self.reply(ident, Op.HEAD_REPLY, {"req": validate.req_of(body),
                                                  "error": f"malformed message: {exc}"})
            return
        try:
            handler(ident, body, list(raw))
        except Exception as exc:  # a ValueError is the asker's mistake: no traceback
            ratelog.limited(logger).failed(op, exc, trace=not isinstance(exc, ValueError))
            if "req" in body:
                self.reply(ident, Op.HEAD_REPLY, {"req": validate.req_of(body),
                                                  "error": f"{op.name} failed: {exc}"})

    def reply(self, ident: bytes, op: Op, body: dict, *raw: Any) -> bool:
        try:
            self.router.send_multipart([ident, *protocol.encode(op, body, *raw)], copy=False)
            return True
        except zmq.ZMQError:
            return False  # the peer left

    def to_node(self, node_id: bytes, op: Op, body: dict, *raw: Any) -> bool:
        node = self.nodes.get(node_id)
        if node is None or not node.alive:
            return False
        return self.reply(node.ident, op, body, *raw)

    def publish(self, topic: bytes, op: Op, body: dict) -> None:
        self.seq += 1
        body["seq"] = self.seq
        self.pub.send_multipart([topic, *protocol.encode(op, body)])

    def table(self) -> List[dict]:
        return [n.as_dict() for n in self.nodes.values()]

    # ------------------------------------------------------------------ nodes
    def on_register(self, ident: bytes, body: protocol.NodeInfo, raw) -> None:
        node_id = body["node_id"]
        self.nodes[node_id] = NodeEntry(node_id, ident, body)
        logger.info("node %s joined from %s with %s", node_id.hex()[:8], body.get("ip"),
                    body.get("resources"))
        self.learn_back(node_id, body)
        for _, result, frames in self.undelivered.pop(node_id, ()):
            self.reply(ident, Op.RESULT, result, *frames)  # came while it was away
        self.publish(protocol.TOPIC_NODE, Op.PUB_NODE, {"event": "joined", "node_id": node_id})
        self.reply(ident, Op.REGISTERED, {"nodes": self.table(), "seq": self.seq,
                                          "pub_address": self.pub_address})
        self.tell_starter(f"joined {node_id.hex()}")
        self.place_unplaced()

    def on_heartbeat(self, ident: bytes, body: protocol.Heartbeat, raw) -> None:
        # Every heartbeat is acked, whatever it says: the ack is how the agent
        # knows the head lives.
        node_id = body.get("node_id")
        node = self.nodes.get(node_id) if isinstance(node_id, bytes) else None
        if node is None or ident != node.ident:  # a node's socket is named by its ID: a
            # heartbeat for it from any other socket must not take its traffic
            self.reply(ident, Op.HEARTBEAT_ACK, {"unknown": True, "nodes": self.table(),
                                                 "seq": self.seq})
            return
        node.load = dict(body)
        node.ident = ident
        node.last_seen = time.monotonic()
        if not node.alive:
            node.alive = True
            logger.info("node %s is back", node.node_id.hex()[:8])
            self.publish(protocol.TOPIC_NODE, Op.PUB_NODE, {"event": "joined", "node_id": node.node_id})
            self.place_unplaced()
        self.reply(ident, Op.HEARTBEAT_ACK, {"nodes": self.table(), "seq": self.seq})

    def purge_expired(self, now: Optional[float] = None) -> None:
        now = time.monotonic() if now is None else now
        deadline = now - protocol.HEARTBEAT_INTERVAL * protocol.HEARTBEAT_LIVENESS
        for node in list(self.nodes.values()):
            if node.alive and node.last_seen < deadline:
                self.node_died(node)
        for origin, held in list(self.undelivered.items()):
            if held[-1][0] < deadline - 30:  # its node never came back
                del self.undelivered[origin]

    def node_died(self, node: NodeEntry) -> None:
        node.alive = False
        logger.warning("node %s missed %d heartbeats: marked dead", node.node_id.hex()[:8],
                       protocol.HEARTBEAT_LIVENESS)
        self.directory.drop_node(node.node_id)
        self.owner_died(node.node_id)
        self.pgs.node_died(node.node_id)
        self.names.drop_node(node.node_id, {aid for aid, where in self.actors.items()
                                            if where == node.node_id})
        self.publish(protocol.TOPIC_NODE, Op.PUB_NODE, {"event": "died", "node_id": node.node_id})
        for done in self.state.node_gone(node.node_id):
            self.answer_state(done)
        why = f"node {node.node_id.hex()[:8]} ({node.info.get('ip')}) died"
        for aid, where in list(self.actors.items()):
            if where == node.node_id:
                del self.actors[aid]
        for placed in [p for p in self.placed.values() if p.node == node.node_id]:
            if "actor_id" in placed.task:
                self.fail(placed, "ActorDiedError", f"{placed.name} did not finish: the "
                          f"actor's {why}")
            elif placed.use_a_retry():
                logger.info("placing %s again: %s", placed.name, why)
                self.place(placed)
            else:
                self.fail(placed, "NodeDiedError",
                          f"task {placed.name} was running when its {why}, and it had no "
                          f"retries left")
        self.place_unplaced()  # those that could not reach it go elsewhere now

    # ------------------------------------------------------------------ placement
    def on_forward(self, ident: bytes, body: protocol.Forward, raw) -> None:
        placed = Placed(body, raw)
        for oid, holders in body.get("locations", {}).items():
            for holder in holders:
                self.directory.add(oid, holder)
        if placed.actor_call:
            where = self.actors.get(placed.task["actor_id"])
            if where is None and self.creation_waits(placed):
                return  # sent on when its actor is placed (see place)
            if where is None:
                self.fail(placed, "ActorDiedError", f"cannot call {placed.name}: its actor is "
                          f"not alive on any node of this cluster")
                return
            placed.node = where
            if where != placed.origin:  # else its own node runs it as its own: no RESULT
                self.placed[placed.task_id] = placed
            if not self.to_node(where, Op.FORWARD, body, *raw):
                self.fail(placed, "ActorDiedError", f"cannot call {placed.name}: the node of "
                          f"its actor is unreachable")
            return
        if placed.origin not in self.nodes:
            logger.warning("forward from unregistered node %s", placed.origin.hex()[:8])
        self.place(placed)

    def place(self, placed: Placed) -> None:
        locality = self.directory.locality(placed.task.get("deps", ()))
        exclude = placed.body.get("exclude_node")
        views = [n.load_view(locality.get(n.node_id, 0)) for n in self.nodes.values()
                 if n.node_id != exclude]
        try:
            target = scheduling.choose_by_strategy(
                views, placed.demand, placed.task.get("scheduling_strategy"), self.spread_counts)
        except scheduling.Unschedulable as exc:
            kind = "Actor" if placed.task.get("new_actor") else "Task"
            self.fail(placed, f"{kind}UnschedulableError", f"{placed.name} cannot be "
                      f"scheduled: {exc}")
            return
        if target is None and exclude is not None and exclude in self.nodes:
            target = scheduling.choose_node([self.nodes[exclude].load_view()], placed.demand)
        if target is None:
            self.unplaced.append(placed)
            if bundles.mentions_group(placed.demand):
                self.pgs.unplaced(placed)  # waits for its group (fails if there is none)
                return
            need = ", ".join(f"{k}: {v:g}" for k, v in
                             sorted(scheduling.from_units(placed.demand).items()))
            self.to_node(placed.origin, Op.TASK_UNPLACEABLE, {
                "task_id": placed.task_id,
                "message": f"task {placed.name} cannot run on this cluster: no alive node has "
                           f"{need}. It stays queued until a node with these resources joins."})
            return
        placed.node = target
        self.placed[placed.task_id] = placed
        if placed.task.get("new_actor"):
            self.actors[placed.task["actor_id"]] = target
        self.nodes[target].take(placed.demand)
        if not self.to_node(target, Op.FORWARD, placed.body, *placed.raw):
            self.placed.pop(placed.task_id, None)
            self.unplaced.append(placed)
        elif target == placed.origin:
            # Back on the node that owns it: that node runs and finishes it as its
            # own (no RESULT comes back), and it dies with its owner.
            self.placed.pop(placed.task_id, None)
        for call in self.held_calls.pop(placed.task.get("actor_id"), ()):
            self.on_forward(call.origin, call.body, call.raw)   # after its actor's creation

    def creation_waits(self, call: Placed) -> bool:
        """A call to an actor whose creation waits here for a node waits with it."""
        waits = creation_of(call.task["actor_id"], self.unplaced) is not None
        if waits:
            self.held_calls.setdefault(call.task["actor_id"], []).append(call)
        return waits

    def place_unplaced(self) -> None:
        waiting, self.unplaced = self.unplaced, []
        for placed in waiting:
            self.place(placed)

    def fail(self, placed: Placed, error_type: str, message: str) -> None:
        self.placed.pop(placed.task_id, None)
        for call in self.held_calls.pop(placed.task["actor_id"], ()) \
                if placed.task.get("new_actor") else ():   # its calls waiting here
            self.fail(call, "ActorDiedError", f"cannot call {call.name}: {message}")
        if not self.to_node(placed.origin, Op.TASK_FAILED, {
                "task_id": placed.task_id, "error_type": error_type, "message": message}):
            logger.warning("could not tell node %s that %s failed: %s",
                           placed.origin.hex()[:8], placed.name, message)

    def on_result(self, ident: bytes, body: protocol.Result, raw) -> None:
        placed = (self.placed.get if body.get("partial") else self.placed.pop)(
            body["task_id"], None)
        ran_on = body.get("node_id")
        origin = body.get("origin") or (placed.origin if placed else None)
        sealed = []
        for result in body.get("results", ()):
            if result.get("kind") == ObjectKind.SHARED and ran_on is not None:
                # Stays on the node that ran it: others pull it from there, and its owner
                # (the origin; not of a ref nested in it) can make it again if it is lost.
                self.directory.add(result["object_id"], ran_on, int(result.get("size", 0)),
                                   None if result.get("inner") else origin)
                sealed.append(result["object_id"])
        if sealed:
            self.publish(protocol.TOPIC_OBJECT, Op.PUB_OBJECT, {"node_id": ran_on, "sealed": sealed})
        if origin is None or self.to_node(origin, Op.RESULT, body, *raw):
            return
        if origin not in self.nodes:  # not registered again yet (this head restarted)
            held = self.undelivered.setdefault(origin, [])
            if len(held) < 10_000:
                held.append((time.monotonic(), body, raw))
                return
        logger.warning("result of %s has nowhere to go: node %s is gone",
                       body["task_id"].hex()[:8], origin.hex()[:8])

    def on_objects_freed(self, ident: bytes, body: protocol.ObjectsFreed, raw) -> None:
        freed = body.get("object_ids", [])
        for oid in freed:
            self.directory.free(oid)
        if freed:
            self.publish(protocol.TOPIC_OBJECT, Op.PUB_OBJECT, {"node_id": body.get("node_id"),
                                                 "freed": freed})

    def on_object_copies(self, ident: bytes, body: protocol.ObjectCopies, raw) -> None:
        if ident in self.nodes:   # a node's socket is named by its ID
            listed = self.directory.copies(ident, body.get("copied", ()), body.get("dropped", ()))
            if listed:  # pulls elsewhere may take these copies too
                self.publish(protocol.TOPIC_OBJECT, Op.PUB_OBJECT,
                             {"node_id": ident, "sealed": listed})

    def on_log(self, ident: bytes, body: protocol.Log, raw) -> None:
        self.to_node(body.get("to_node", b""), Op.LOG, body)

    def on_kill_actor(self, ident: bytes, body: protocol.KillActor, raw) -> None:
        aid = body["actor_id"]
        creation = creation_of(aid, self.unplaced)
        if creation is not None:   # still waiting for a node: it never comes up
            self.unplaced.remove(creation)
            self.fail(creation, "ActorDiedError", "the actor was killed before it was placed")
        where = self.actors.get(aid)
        if where is None or not self.to_node(where, Op.KILL_ACTOR, body):
            logger.info("kill of actor %s: no alive node holds it", body["actor_id"].hex()[:8])

    # ------------------------------------------------------------------ queries
    def on_job_ended(self, ident: bytes, body: protocol.JobEnded, raw) -> None:
        """A driver left: every other node ends its job's work; forwarded work goes."""
        job = body["job_id"]
        for node in self.nodes.values():
            if node.alive and node.ident != ident:
                self.reply(node.ident, Op.JOB_ENDED, body)
        for tid in [t for t, p in self.placed.items() if p.task.get("job_id") == job]:
            del self.placed[tid]
        self.unplaced = [p for p in self.unplaced if p.task.get("job_id") != job]
        self.held_calls = {aid: calls for aid, calls in self.held_calls.items()
                           if calls[0].task.get("job_id") != job}
        self.pgs.job_ended(job)

    def on_head_query(self, ident: bytes, body: protocol.HeadQuery, raw) -> None:
        what = body.get("what", "nodes")
        if what == "state":
            self.collect_state(ident, body)
            return
        if what in names.QUERIES:
            reply = self.names.answer(what, body)
            if reply is not None:
                self.reply(ident, Op.HEAD_REPLY, reply)
            return
        reply: protocol.HeadReply = {"req": body.get("req", 0), "nodes": self.table()}
        if what == "status":
            reply["unplaced"] = [p.name for p in self.unplaced]
            reply["forwarded"] = len(self.placed)
            reply["objects_across_nodes"] = len(self.directory)
            reply["head_pid"] = os.getpid()
        elif what == "snapshot":
            reply["seq"] = self.seq
            reply["directory"] = self.directory.snapshot()
        elif what != "nodes":
            raise ValueError(f"unknown query {what!r}")
        self.reply(ident, Op.HEAD_REPLY, reply)


def creation_of(aid: bytes, waiting: List[Placed]) -> Optional[Placed]:
    """The creation of actor ``aid`` among ``waiting`` (tasks no node can take yet)."""
    return next((p for p in waiting if p.task.get("actor_id") == aid
                 and p.task.get("new_actor")), None)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m zray._private.head")
    parser.add_argument("--bind", action="append", required=True)
    parser.add_argument("--pub", required=True)
    parser.add_argument("--parent-pid", type=int, default=0)
    parser.add_argument("--dashboard", default="", metavar="HOST:PORT",
                        help="serve the dashboard there (port 0: any free port)")
    parser.add_argument("--session-dir", default="")
    parser.add_argument("--ready-fd", type=int, default=-1,
                        help="a pipe to the starter: 'bound PUB' once listening, then "
                             "'joined NODE' as nodes register, until the starter closes it")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s head %(levelname)s %(message)s")
    token = os.environ.pop("ZRAY_TOKEN", None)  # never on the command line: ps shows it
    head = Head(args.bind, args.pub, args.parent_pid or None, token)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: head.stop())
    try:
        head.bind()
    except BaseException:  # e.g. the port is taken: the log says so, and nothing lingers
        head.close()
        raise
    if args.ready_fd >= 0:
        os.set_blocking(args.ready_fd, False)  # a starter that stops reading never blocks us
        head.starter_fd = args.ready_fd
        head.tell_starter(f"bound {head.pub_address}")
    if args.dashboard:
        head.start_dashboard(args.dashboard, args.session_dir)
    head.jobs.start(args.session_dir)
    head.serve()


if __name__ == "__main__":
    main()
