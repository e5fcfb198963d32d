"""The head: broker for node agents, cluster tables, and the PUB channel.

::

    node agents ──DEALER──▶ ROUTER (ipc for an embedded session, tcp for `zray head`)
    CLI (status) ─DEALER──▶ same ROUTER
    PUB ──▶ subscribers: node joins and deaths, each with a sequence number

The head keeps the node table (resources, load, liveness from heartbeats),
answers queries about it, and declares a node dead after missed heartbeats
(monotonic clock).  It never unpickles anything.  Tasks reach it only when a
node cannot place them itself, so a single-node program never waits on it.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import time
from typing import Dict, List, Optional

import zmq

from zray._private import protocol
from zray._private.protocol import Op

logger = logging.getLogger("zray.head")

HEARTBEAT_LIVENESS = 6          # missed intervals before a node is dead
HEARTBEAT_INTERVAL = 0.5


class NodeEntry:
    __slots__ = ("node_id", "info", "load", "last_seen", "alive")

    def __init__(self, node_id: bytes, info: dict) -> None:
        self.node_id = node_id
        self.info = info
        self.load: dict = {}
        self.last_seen = time.monotonic()
        self.alive = True

    def as_dict(self) -> dict:
        return {"node_id": self.node_id.hex(), "alive": self.alive,
                "address": self.info.get("address"), "node_ip": self.info.get("ip"),
                "resources": self.info.get("resources", {}),
                "available": self.load.get("available", self.info.get("resources", {})),
                "store_capacity": self.info.get("store", 0),
                "store_used": self.load.get("store_used", 0),
                "queued": self.load.get("queued", 0), "running": self.load.get("running", 0)}


class Head:
    def __init__(self, addresses: List[str], pub_address: str,
                 parent_pid: Optional[int]) -> None:
        self.parent_pid = parent_pid
        self.nodes: Dict[bytes, NodeEntry] = {}
        self.seq = 0
        self.running = True
        self.ctx = zmq.Context()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.router.setsockopt(zmq.LINGER, 0)
        old_umask = os.umask(0o077)
        try:
            for address in addresses:
                self.router.bind(address)
            self.pub = self.ctx.socket(zmq.PUB)
            self.pub.setsockopt(zmq.LINGER, 0)
            self.pub.bind(pub_address)
        finally:
            os.umask(old_umask)
        self.ipc_paths = [a[len("ipc://"):] for a in addresses + [pub_address]
                          if a.startswith("ipc://")]
        self.handlers = {Op.REGISTER: self.on_register, Op.HEARTBEAT: self.on_heartbeat,
                         Op.HEAD_QUERY: self.on_query}
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        self.running = False

    def serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        try:
            while self.running:
                if poller.poll(100):
                    for _ in range(1000):
                        try:
                            frames = self.router.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        self.handle(frames)
                self.purge_expired()
                if self.parent_pid and os.getppid() != self.parent_pid:
                    break
        finally:
            self.router.close(0)
            self.pub.close(0)
            self.ctx.term()
            for path in self.ipc_paths:
                try:
                    os.unlink(path)
                except OSError:
                    pass

    def handle(self, frames: List[bytes]) -> None:
        ident = frames[0]
        try:
            op, body, raw = protocol.decode(frames[1:])
        except protocol.ProtocolError as exc:
            logger.warning("malformed message from %s: %s", ident.hex()[:8], exc)
            self.reply(ident, Op.HEAD_REPLY, {"error": str(exc)})
            return
        handler = self.handlers.get(op)
        try:
            if handler is None:
                raise ValueError(f"the head does not serve {op.name}")
            handler(ident, body)
        except Exception as exc:
            logger.exception("handler %s failed", op.name)
            self.reply(ident, Op.HEAD_REPLY, {"req": body.get("req", 0), "error": str(exc)})

    def reply(self, ident: bytes, op: Op, body: dict) -> None:
        try:
            self.router.send_multipart([ident, *protocol.encode(op, body)])
        except zmq.ZMQError:
            pass  # the peer left

    def publish(self, topic: bytes, body: dict) -> None:
        self.seq += 1
        body["seq"] = self.seq
        self.pub.send_multipart([topic, *protocol.encode(Op.PUB_NODE, body)])

    def table(self) -> List[dict]:
        return [n.as_dict() for n in self.nodes.values()]

    def on_register(self, ident: bytes, body: dict) -> None:
        node_id = body["node"]
        self.nodes[node_id] = NodeEntry(node_id, body)
        logger.info("node %s joined with %s", node_id.hex()[:8], body.get("resources"))
        self.publish(b"node", {"event": "joined", "node": node_id})
        self.reply(ident, Op.REGISTERED, {"nodes": self.table(), "seq": self.seq})

    def on_heartbeat(self, ident: bytes, body: dict) -> None:
        node = self.nodes.get(body.get("node", b""))
        if node is None:
            self.reply(ident, Op.HEARTBEAT_ACK, {"unknown": True, "nodes": self.table()})
            return
        node.load = body
        node.last_seen = time.monotonic()
        if not node.alive:
            node.alive = True
            self.publish(b"node", {"event": "joined", "node": node.node_id})
        self.reply(ident, Op.HEARTBEAT_ACK, {"nodes": self.table(), "seq": self.seq})

    def on_query(self, ident: bytes, body: dict) -> None:
        self.reply(ident, Op.HEAD_REPLY, {"req": body.get("req", 0), "nodes": self.table()})

    def purge_expired(self) -> None:
        deadline = time.monotonic() - HEARTBEAT_INTERVAL * HEARTBEAT_LIVENESS
        for node in self.nodes.values():
            if node.alive and node.last_seen < deadline:
                node.alive = False
                logger.warning("node %s missed %d heartbeats: marked dead",
                               node.node_id.hex()[:8], HEARTBEAT_LIVENESS)
                self.publish(b"node", {"event": "died", "node": node.node_id})


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m zray._private.head")
    parser.add_argument("--bind", action="append", required=True)
    parser.add_argument("--pub", required=True)
    parser.add_argument("--parent-pid", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s head %(levelname)s %(message)s")
    Head(args.bind, args.pub, args.parent_pid or None).serve()


if __name__ == "__main__":
    main()


