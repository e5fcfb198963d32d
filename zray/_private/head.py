"""The head: broker between node agents, the cluster tables, the global scheduler, PUB.

::

    node agents ──DEALER──▶ ROUTER (ipc for an embedded session; tcp + CURVE for `zray head`)
    zray status ──DEALER──▶ same ROUTER
    PUB ──▶ agents' SUB: node joins and deaths, objects sealed and freed (numbered)

The head keeps the node table (resources, load, liveness from heartbeats),
the object directory (which nodes hold a copy of each object that crossed
nodes) and where each actor placed by it lives.  Tasks reach it only when a
node cannot place them itself: demand its node can never meet, or a
saturated node handing work to an idle one.  The head places each on a
node, remembers it until its RESULT passes back, and places it again (or
fails it) if that node dies.  A single-node program never waits on it.

The head never unpickles anything: task specs, functions and values pass
through it as opaque frames.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import time
from typing import Any, Dict, List, Optional, Set

import zmq

from zray._private import protocol, scheduling
from zray._private.protocol import Op

logger = logging.getLogger("zray.head")

HEARTBEAT_LIVENESS = 6          # missed intervals before a node is dead
HEARTBEAT_INTERVAL = 0.5


class NodeEntry:
    __slots__ = ("node_id", "info", "load", "last_seen", "alive", "ident")

    def __init__(self, node_id: bytes, ident: bytes, info: dict) -> None:
        self.node_id = node_id
        self.ident = ident
        self.info = info
        self.load: dict = {}
        self.last_seen = time.monotonic()
        self.alive = True

    def as_dict(self) -> dict:
        return {"node_id": self.node_id.hex(), "alive": self.alive,
                "address": self.info.get("address"), "node_ip": self.info.get("ip"),
                "hostname": self.info.get("hostname", ""),
                "transfer": self.info.get("transfer"),
                "resources": self.info.get("resources", {}),
                "available": self.load.get("available", self.info.get("resources", {})),
                "store_capacity": self.info.get("store", 0),
                "store_used": self.load.get("store_used", 0),
                "queued": self.load.get("queued", 0), "running": self.load.get("running", 0),
                "actors": self.load.get("actors", 0), "workers": self.load.get("workers", 0)}

    def load_view(self, local_bytes: int = 0) -> scheduling.NodeLoad:
        return scheduling.NodeLoad(
            node_id=self.node_id,
            total=scheduling.to_units(self.info.get("resources", {})),
            available=scheduling.to_units(self.load.get("available",
                                                        self.info.get("resources", {}))),
            queued=self.load.get("queued", 0), alive=self.alive, local_bytes=local_bytes)


class Placed:
    """A forwarded task the head placed and has not seen finish."""

    __slots__ = ("tid", "body", "raw", "origin", "node", "demand", "name")

    def __init__(self, body: dict, raw: List[Any]) -> None:
        spec = body["s"]
        self.tid: bytes = spec["t"]
        self.body = body
        self.raw = raw
        self.origin: bytes = body["origin"]
        self.node: Optional[bytes] = None
        self.demand = scheduling.to_units(spec.get("q", {"CPU": 1.0}))
        self.name: str = spec.get("n", "task")


class Head:
    def __init__(self, addresses: List[str], pub_address: str, parent_pid: Optional[int],
                 token: Optional[str] = None) -> None:
        self.parent_pid = parent_pid
        self.nodes: Dict[bytes, NodeEntry] = {}
        self.placed: Dict[bytes, Placed] = {}
        self.unplaced: List[Placed] = []        # no alive node could ever run them
        self.actors: Dict[bytes, bytes] = {}    # actor id -> node id
        self.directory: Dict[bytes, Set[bytes]] = {}
        self.sizes: Dict[bytes, int] = {}
        self.seq = 0
        self.running = True
        self.starter_fd = -1      # a pipe to the process that started us (see main)
        self.ctx = zmq.Context()
        self.keys = self.guard = None
        if token:
            # Only a TCP cluster has keys; an embedded session's head on ipc
            # never loads zmq.auth (and the asyncio it pulls in).
            from zray._private import security

            self.keys = security.Keys(token)
            self.guard = security.Guard(self.ctx, self.keys, "the head")
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.setsockopt(zmq.SNDHWM, 0)
        self.router.setsockopt(zmq.RCVHWM, 0)
        self.pub = self.ctx.socket(zmq.PUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.pub.setsockopt(zmq.SNDHWM, 0)
        if self.keys:
            self.keys.serve(self.router)
            self.keys.serve(self.pub)
        old_umask = os.umask(0o077)
        try:
            for address in addresses:
                self.router.bind(address)
            self.pub.bind(pub_address)
            self.pub_address = self.pub.getsockopt_string(zmq.LAST_ENDPOINT)
        finally:
            os.umask(old_umask)
        if self.guard:
            self.guard.watch(self.router, self.pub)
        self.ipc_paths = [a[len("ipc://"):] for a in addresses + [pub_address]
                          if a.startswith("ipc://")]
        self.handlers = {Op.REGISTER: self.on_register, Op.HEARTBEAT: self.on_heartbeat,
                         Op.HEAD_QUERY: self.on_query, Op.FORWARD: self.on_forward,
                         Op.RESULT: self.on_result, Op.ANNOUNCE: self.on_announce,
                         Op.ACTOR_OP: self.on_actor_op, Op.LOG: self.on_log}
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
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
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        try:
            while self.running:
                if poller.poll(100):
                    for _ in range(1000):
                        try:
                            frames = self.router.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        self.handle(frames)
                self.purge_expired()
                if self.parent_pid and os.getppid() != self.parent_pid:
                    break
        finally:
            if self.starter_fd >= 0:
                os.close(self.starter_fd)
            if self.guard:
                self.guard.stop()
            self.router.close(0)
            self.pub.close(0)
            self.ctx.term()
            for path in self.ipc_paths:
                try:
                    os.unlink(path)
                except OSError:
                    pass

    def handle(self, frames: List[Any]) -> None:
        ident = frames[0].bytes
        try:
            op, body, raw = protocol.decode([frames[1].bytes] + frames[2:])
        except (protocol.ProtocolError, IndexError) as exc:
            logger.warning("malformed message from %s: %s", ident.hex()[:8], exc)
            self.reply(ident, Op.HEAD_REPLY, {"error": f"malformed message: {exc}"})
            return
        handler = self.handlers.get(op)
        try:
            if handler is None:
                raise ValueError(f"the head does not serve {op.name}")
            handler(ident, body, list(raw))
        except Exception as exc:
            logger.exception("handler %s failed", op.name)
            self.reply(ident, Op.HEAD_REPLY, {"req": body.get("req", 0),
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
    def on_register(self, ident: bytes, body: dict, raw) -> None:
        node_id = body["node"]
        self.nodes[node_id] = NodeEntry(node_id, ident, body)
        logger.info("node %s joined from %s with %s", node_id.hex()[:8], body.get("ip"),
                    body.get("resources"))
        self.publish(b"node", Op.PUB_NODE, {"event": "joined", "node": node_id})
        self.reply(ident, Op.REGISTERED, {"nodes": self.table(), "seq": self.seq,
                                          "pub": self.pub_address})
        self.tell_starter(f"joined {node_id.hex()}")
        self.place_unplaced()

    def on_heartbeat(self, ident: bytes, body: dict, raw) -> None:
        node = self.nodes.get(body.get("node", b""))
        if node is None:
            self.reply(ident, Op.HEARTBEAT_ACK, {"unknown": True, "nodes": self.table(),
                                                 "seq": self.seq})
            return
        node.load = body
        node.ident = ident
        node.last_seen = time.monotonic()
        if not node.alive:
            node.alive = True
            logger.info("node %s is back", node.node_id.hex()[:8])
            self.publish(b"node", Op.PUB_NODE, {"event": "joined", "node": node.node_id})
            self.place_unplaced()
        self.reply(ident, Op.HEARTBEAT_ACK, {"nodes": self.table(), "seq": self.seq})

    def purge_expired(self) -> None:
        deadline = time.monotonic() - HEARTBEAT_INTERVAL * HEARTBEAT_LIVENESS
        for node in list(self.nodes.values()):
            if node.alive and node.last_seen < deadline:
                self.node_died(node)

    def node_died(self, node: NodeEntry) -> None:
        node.alive = False
        logger.warning("node %s missed %d heartbeats: marked dead", node.node_id.hex()[:8],
                       HEARTBEAT_LIVENESS)
        for oid, holders in list(self.directory.items()):
            holders.discard(node.node_id)
            if not holders:
                del self.directory[oid]
                self.sizes.pop(oid, None)
        self.publish(b"node", Op.PUB_NODE, {"event": "died", "node": node.node_id})
        why = f"node {node.node_id.hex()[:8]} ({node.info.get('ip')}) died"
        for aid, where in list(self.actors.items()):
            if where == node.node_id:
                del self.actors[aid]
        for placed in [p for p in self.placed.values() if p.node == node.node_id]:
            spec = placed.body["s"]
            if "A" in spec:
                self.fail(placed, "ActorDiedError", f"{placed.name} did not finish: the "
                          f"actor's {why}")
                continue
            retries = int(spec.get("x", 3))
            if retries != 0:
                spec["x"] = retries - 1 if retries > 0 else retries
                logger.info("placing %s again: %s", placed.name, why)
                self.place(placed)
            else:
                self.fail(placed, "NodeDiedError",
                          f"task {placed.name} was running when its {why}, and it had no "
                          f"retries left")

    # ------------------------------------------------------------------ placement
    def on_forward(self, ident: bytes, body: dict, raw) -> None:
        placed = Placed(body, raw)
        origin = placed.origin
        for oid, holders in body.get("loc", {}).items():
            self.directory.setdefault(oid, set()).update(holders)
        spec = body["s"]
        if "A" in spec and not spec.get("new"):
            where = self.actors.get(spec["A"])
            if where is None:
                self.fail(placed, "ActorDiedError", f"cannot call {placed.name}: its actor is "
                          f"not alive on any node of this cluster")
                return
            placed.node = where
            self.placed[placed.tid] = placed
            if not self.to_node(where, Op.FORWARD, body, *raw):
                self.fail(placed, "ActorDiedError", f"cannot call {placed.name}: the node of "
                          f"its actor is unreachable")
            return
        if origin not in self.nodes:
            logger.warning("forward from unregistered node %s", origin.hex()[:8])
        self.place(placed)

    def place(self, placed: Placed) -> None:
        size_of = self.sizes.get
        locality: Dict[bytes, int] = {}
        for oid in placed.body["s"].get("d", ()):
            for holder in self.directory.get(oid, ()):
                locality[holder] = locality.get(holder, 0) + size_of(oid, 0)
        exclude = placed.body.get("not")
        views = [n.load_view(locality.get(n.node_id, 0)) for n in self.nodes.values()
                 if n.node_id != exclude]
        target = scheduling.choose_node(views, placed.demand)
        if target is None and exclude is not None and exclude in self.nodes:
            target = scheduling.choose_node([self.nodes[exclude].load_view()], placed.demand)
        if target is None:
            self.unplaced.append(placed)
            need = ", ".join(f"{k}: {v:g}" for k, v in
                             sorted(scheduling.from_units(placed.demand).items()))
            self.to_node(placed.origin, Op.RESULT, {
                "t": placed.tid, "wait": True,
                "msg": f"task {placed.name} cannot run on this cluster: no alive node has "
                       f"{need}. It stays queued until a node with these resources joins."})
            return
        placed.node = target
        self.placed[placed.tid] = placed
        spec = placed.body["s"]
        if "A" in spec and spec.get("new"):
            self.actors[spec["A"]] = target
        node = self.nodes[target]
        # What we believe it has left, until its next heartbeat says.
        available = node.load.setdefault("available", dict(node.info.get("resources", {})))
        for name, units in placed.demand.items():
            if name in available:
                available[name] -= units / scheduling.UNIT
        node.load["queued"] = node.load.get("queued", 0) + 1
        if not self.to_node(target, Op.FORWARD, placed.body, *placed.raw):
            self.placed.pop(placed.tid, None)
            self.unplaced.append(placed)

    def place_unplaced(self) -> None:
        waiting, self.unplaced = self.unplaced, []
        for placed in waiting:
            self.place(placed)

    def fail(self, placed: Placed, etype: str, msg: str) -> None:
        self.placed.pop(placed.tid, None)
        if not self.to_node(placed.origin, Op.RESULT, {"t": placed.tid, "fail": etype,
                                                       "msg": msg}):
            logger.warning("could not tell node %s that %s failed: %s",
                           placed.origin.hex()[:8], placed.name, msg)

    def on_result(self, ident: bytes, body: dict, raw) -> None:
        placed = self.placed.pop(body["t"], None)
        sender = body.get("node")
        sealed = []
        for result in body.get("res", ()):
            if "off" in result or result.get("at"):
                self.directory.setdefault(result["o"], set()).add(sender)
                self.sizes[result["o"]] = int(result.get("n", 0))
                sealed.append(result["o"])
        if sealed:
            self.publish(b"obj", Op.PUB_OBJECT, {"sealed": sealed, "node": sender})
        origin = body.get("origin") or (placed.origin if placed else None)
        if origin is not None and not self.to_node(origin, Op.RESULT, body, *raw):
            logger.warning("result of %s has nowhere to go: node %s is gone",
                           body["t"].hex()[:8], origin.hex()[:8])

    def on_announce(self, ident: bytes, body: dict, raw) -> None:
        node = body.get("node")
        sealed = body.get("sealed", [])
        for oid, size in zip(sealed, body.get("sizes", [0] * len(sealed))):
            self.directory.setdefault(oid, set()).add(node)
            self.sizes[oid] = size
        freed = body.get("freed", [])
        for oid in freed:
            self.directory.pop(oid, None)
            self.sizes.pop(oid, None)
        self.publish(b"obj", Op.PUB_OBJECT, {"sealed": sealed, "freed": freed, "node": node})

    def on_log(self, ident: bytes, body: dict, raw) -> None:
        self.to_node(body.get("to", b""), Op.LOG, body)

    def on_actor_op(self, ident: bytes, body: dict, raw) -> None:
        where = self.actors.get(body["A"])
        if where is not None:
            self.to_node(where, Op.ACTOR_OP, body)

    # ------------------------------------------------------------------ queries
    def on_query(self, ident: bytes, body: dict, raw) -> None:
        what = body.get("what", "nodes")
        reply: Dict[str, Any] = {"req": body.get("req", 0), "nodes": self.table()}
        if what == "status":
            reply["unplaced"] = [p.name for p in self.unplaced]
            reply["forwarded"] = len(self.placed)
            reply["objects_across_nodes"] = len(self.directory)
            reply["head_pid"] = os.getpid()
        elif what == "snapshot":
            reply["seq"] = self.seq
            reply["directory"] = {oid: sorted(holders) for oid, holders in self.directory.items()}
        elif what == "locate":
            reply["holders"] = {oid: sorted(self.directory.get(oid, ()))
                                for oid in body.get("o", ())}
        elif what != "nodes":
            raise ValueError(f"unknown query {what!r}")
        self.reply(ident, Op.HEAD_REPLY, reply)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m zray._private.head")
    parser.add_argument("--bind", action="append", required=True)
    parser.add_argument("--pub", required=True)
    parser.add_argument("--parent-pid", type=int, default=0)
    parser.add_argument("--ready-fd", type=int, default=-1,
                        help="a pipe to the starter: 'bound PUB' once listening, then "
                             "'joined NODE' as nodes register, until the starter closes it")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s head %(levelname)s %(message)s")
    token = os.environ.pop("ZRAY_TOKEN", None)  # never on the command line: ps shows it
    head = Head(args.bind, args.pub, args.parent_pid or None, token)
    if args.ready_fd >= 0:
        os.set_blocking(args.ready_fd, False)  # a starter that stops reading never blocks us
        head.starter_fd = args.ready_fd
        head.tell_starter(f"bound {head.pub_address}")
    head.serve()


if __name__ == "__main__":
    main()
