"""Object bytes between nodes: pulling them here, and serving them to peers.

::

    object table: a reader needs bytes that are elsewhere ──▶ start(oid)
        ──▶ PULL [offset, offset + CHUNK_BYTES) to a holder's transfer ROUTER
            (CHUNK_WINDOW requests in flight) ──▶ CHUNKs written into the arena
        ──▶ objects.land(): the object is local, its readers are served
    peer's PULL ──▶ serve_pull ──▶ CHUNK (or why it cannot be sent)

A holder that cannot send, or dies, is skipped for the next one known to
hold the object; when none is left the object is lost (ObjectLostError).
Present only on a node of a TCP cluster (it needs the cluster's keys).
Every message is sealed with the cluster's token (security.Sealer), not
sent over CURVE: a third of the speed (see CONTRIBUTING, "Transfers").

Owns: the transfer ROUTER, one DEALER per peer node, the pulls in flight.
Must not: change an object's refs or state except through the object
table's ``land``, ``lose`` and ``fail``.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Optional

import zmq

from zray import exceptions
from zray._private import protocol, ratelog, validate
from zray._private.security import SealError, Sealer
from zray._private.agent.objects import READY, SHARED, Obj, is_remote
from zray._private.protocol import CHUNK_BYTES, CHUNK_WINDOW, Op

logger = logging.getLogger("zray.node")


class Pull:
    """An object coming from another node's transfer ROUTER, chunk by chunk."""

    __slots__ = ("oid", "node", "size", "offset", "got", "next_off", "tried")

    def __init__(self, oid: bytes) -> None:
        self.oid = oid
        self.node = b""
        self.size = -1
        self.offset = -1
        self.got = 0
        self.next_off = 0
        self.tried: List[bytes] = []


class Transfer:
    def __init__(self, node_id: bytes, objects: Any, nodes: Callable[[], List[dict]]) -> None:
        self.node_id = node_id
        self.objects = objects
        self.nodes = nodes            # the cluster's node table, as last heard
        self.pulls: Dict[bytes, Pull] = {}
        self.peers: Dict[bytes, zmq.Socket] = {}
        self.router: Optional[zmq.Socket] = None
        self.address = ""
        self.ctx: Any = None
        self.keys: Any = None
        self.poller: Any = None
        self.sealer: Any = None       # security.Sealer: every message is sealed
        self.on_copied: Callable[[bytes], None] = lambda oid: None   # a pulled copy landed

    def bind(self, ctx: zmq.Context, keys: Any, poller: Any, ip: str) -> str:
        """Listen for peers' PULLs (CURVE); returns the address peers connect to."""
        self.ctx, self.keys, self.poller = ctx, keys, poller
        self.sealer = Sealer(keys.token)
        router = self.router = ctx.socket(zmq.ROUTER)
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        router.setsockopt(zmq.LINGER, 0)
        router.setsockopt(zmq.SNDHWM, 0)
        router.bind(f"tcp://{ip}:0")
        self.address = router.getsockopt_string(zmq.LAST_ENDPOINT)
        poller.register(router, zmq.POLLIN)
        return self.address

    def close(self) -> None:
        for sock in [self.router, *self.peers.values()]:
            if sock is not None:
                sock.close(0)

    def drain(self, events: dict) -> None:
        if self.router is not None and self.router in events:
            for _ in range(256):
                try:
                    frames = self.router.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                self.serve_pull(frames)
        for node_id, sock in list(self.peers.items()):
            if sock in events:
                for _ in range(64):
                    try:
                        frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    self.on_chunk(node_id, frames)

    # ------------------------------------------------------------------ pulling
    def peer(self, node_id: bytes) -> Optional[zmq.Socket]:
        sock = self.peers.get(node_id)
        if sock is not None:
            return sock
        entry = next((n for n in self.nodes() if n.get("node_id") == node_id.hex()), None)
        if entry is None or not entry.get("alive") or not entry.get("transfer"):
            return None
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.connect(entry["transfer"])
        self.poller.register(sock, zmq.POLLIN)
        self.peers[node_id] = sock
        return sock

    def start(self, oid: bytes, obj: Obj) -> None:
        """Pull the object from the next node known to hold it (lost if none is left)."""
        pull = self.pulls.get(oid) or Pull(oid)
        for node_id in obj.where:
            if node_id in pull.tried or node_id == self.node_id:
                continue
            pull.tried.append(node_id)
            sock = self.peer(node_id)
            if sock is None:
                continue
            pull.node = node_id
            obj.pulling = True
            self.pulls[oid] = pull
            self.request_chunk(sock, pull, 0)
            return
        obj.pulling = False
        self.pulls.pop(oid, None)
        self.objects.lose(oid, obj, "no alive node holding it could be reached", pull.tried)

    def request_chunk(self, sock: zmq.Socket, pull: Pull, off: int) -> None:
        sock.send_multipart(self.sealer.seal(protocol.encode(
            Op.PULL, {"object_id": pull.oid, "offset": off, "length": CHUNK_BYTES})))
        pull.next_off = off + CHUNK_BYTES

    def reset(self, pull: Pull) -> None:
        """Give back the space of a pull that will start over from another node."""
        if pull.offset >= 0:
            self.objects.free_space(pull.offset)
        pull.offset = -1
        pull.size = -1
        pull.got = 0

    def abandon(self, oid: bytes, obj: Obj) -> None:
        """The object was freed while coming: forget the pull."""
        pull = self.pulls.pop(oid, None)
        if pull is not None:
            self.reset(pull)

    def retry(self, oid: bytes, obj: Obj) -> None:
        pull = self.pulls.get(oid)
        if pull is not None:
            self.reset(pull)
        self.start(oid, obj)

    def pulling_from(self, oid: bytes, node_id: bytes) -> bool:
        pull = self.pulls.get(oid)
        return pull is not None and pull.node == node_id

    def node_gone(self, node_id: bytes) -> None:
        sock = self.peers.pop(node_id, None)
        if sock is not None:
            self.poller.unregister(sock)
            sock.close(0)

    def on_chunk(self, node_id: bytes, frames: List[Any]) -> None:
        try:
            op, body, raw = protocol.decode(self.sealer.open([f.buffer for f in frames]))
            if op != Op.CHUNK:
                raise protocol.ProtocolError(f"a peer answered a PULL with {op.name}")
            validate.check(op, body, raw)
        except (protocol.ProtocolError, IndexError, SealError) as exc:
            ratelog.limited(logger).refused(None, f"node {node_id.hex()[:8]}", exc)
            return
        oid = body.get("object_id", b"")
        obj = self.objects.get(oid)
        pull = self.pulls.get(oid)
        if obj is None or pull is None or pull.node != node_id:
            return  # freed or redirected meanwhile
        if body.get("error"):
            logger.info("node %s cannot send %s: %s", node_id.hex()[:8], oid.hex()[:8],
                        body["error"])
            self.retry(oid, obj)
            return
        problem = chunk_problem(body, raw, pull.size)
        if problem:
            ratelog.limited(logger).refused(Op.CHUNK, f"node {node_id.hex()[:8]}",
                                            protocol.ProtocolError(problem))
            self.retry(oid, obj)  # the next holder, or lost: never a write out of bounds
            return
        kind = body["kind"]
        if kind != SHARED:
            self.pulls.pop(oid, None)
            self.land(oid, obj, kind, body["layout"], raw[0], -1, 0)
            return
        if pull.size < 0 and not self.begin(oid, obj, pull, body["size"]):
            return
        data = raw[0] if raw else b""
        self.objects.view(pull.offset + body["offset"], len(data))[:] = data
        pull.got += len(data)
        if pull.next_off < pull.size:
            self.request_chunk(self.peers[node_id], pull, pull.next_off)
        if pull.got >= pull.size:
            self.pulls.pop(oid, None)
            self.land(oid, obj, SHARED, body["layout"], None, pull.offset, pull.size)

    def land(self, oid: bytes, obj: Obj, *how: Any) -> None:
        self.objects.land(oid, obj, *how)
        if obj.copy:
            self.on_copied(oid)

    def begin(self, oid: bytes, obj: Obj, pull: Pull, size: int) -> bool:
        """The first chunk told the size: make room, and ask for the window."""
        pull.size = size
        offset = self.objects.allocate(max(1, size))
        if offset is None:
            self.pulls.pop(oid, None)
            obj.pulling = False
            # Not lost, so not made again: a new copy would find no more room here.
            self.objects.fail(oid, obj, exceptions.ObjectStoreFullError(
                f"object {oid.hex()} cannot come to this node: its store has no room for "
                f"its {size} bytes"))
            return False
        pull.offset = offset
        sock = self.peers[pull.node]
        while pull.next_off < size and pull.next_off < CHUNK_BYTES * CHUNK_WINDOW:
            self.request_chunk(sock, pull, pull.next_off)
        return True

    # ------------------------------------------------------------------ serving
    def serve_pull(self, frames: List[bytes]) -> None:
        ident = frames[0]
        try:
            op, body, raw = protocol.decode(self.sealer.open(frames[1:]))
            if op != Op.PULL:
                raise protocol.ProtocolError(f"the transfer socket serves PULL, not {op.name}")
            validate.check(op, body, raw)
            oid = body["object_id"]
        except SealError as exc:   # no token: nothing to answer with
            ratelog.limited(logger).refused(None, "a peer's transfer socket", exc)
            return
        except (protocol.ProtocolError, IndexError) as exc:
            ratelog.limited(logger).refused(None, "a peer's transfer socket", exc)
            self.answer(ident, {"object_id": b"", "error": f"refused: {exc}"}, b"")
            return
        obj = self.objects.get(oid)
        reply: Dict[str, Any] = {"object_id": oid}
        try:
            if obj is None or obj.state is not READY or is_remote(obj):
                raise exceptions.ObjectLostError("not on this node")
            reply.update(kind=int(obj.kind), layout=obj.layout)
            if obj.kind != SHARED:
                data = obj.data
            else:
                if obj.spilled and not self.objects.restore(oid, obj):
                    raise exceptions.ObjectStoreFullError("spilled, and no room to restore")
                off = min(body["offset"], obj.size)
                n = max(0, min(body["length"], CHUNK_BYTES, obj.size - off))
                reply.update(size=obj.size, offset=off)
                data = self.objects.view(obj.offset + off, n)   # sealing copies it
            obj.exported = True
        except exceptions.ZrayError as exc:
            reply["error"] = str(exc)
            data = b""
        self.answer(ident, reply, data)

    def answer(self, ident: bytes, reply: dict, data: Any) -> None:
        try:
            self.router.send_multipart(
                [ident, *self.sealer.seal(protocol.encode(Op.CHUNK, reply, data))], copy=False)
        except zmq.ZMQError:
            pass  # the peer left


def chunk_problem(body: dict, raw: List[Any], size: int) -> str:
    """Why a CHUNK for a pull that expects ``size`` bytes (-1: not known yet) cannot
    be written ("" when it can): a peer's numbers never write outside the object."""
    if body.get("kind") not in (0, 1, 2) or not raw or "layout" not in body:
        return "a chunk without its kind, layout or bytes"
    if body["kind"] != SHARED:
        return ""
    total, offset = body.get("size"), body.get("offset")
    if not isinstance(total, int) or not isinstance(offset, int):
        return "a shared chunk without its size and offset"
    length = len(raw[0])
    if size >= 0 and total != size:
        return f"a chunk says the object has {total} bytes, its first said {size}"
    if total < 0 or offset < 0 or offset + length > total:
        return f"a chunk of {length} bytes at {offset} does not fit an object of {total}"
    return ""
