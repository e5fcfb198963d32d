"""The node agent: local scheduler, worker pool and object store of one node.

::

    driver / workers ──DEALER──▶ ROUTER (ipc, session dir)      ┐
                                                                 ├─ one poll loop
    head ◀──DEALER── heartbeats, registration                    │
    worker template ◀─pipe─▶ "spawn" / "exit <pid>" lines        ┘

Tasks are submitted here, wait here for their arguments, and run on this
node's workers when their resources fit; a single-node program never waits
on the head.  The agent owns the object table: every object's state, where
its bytes are (inline in memory, or in the shared-memory arena), who holds
refs to it, and who is waiting for it.  Handlers are named after the op
they serve and routed through one table; a handler that fails answers with
an error and the loop lives on.

This module must not unpickle anything: arguments, functions and values
are opaque bytes here, decoded only in workers and drivers.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from typing import Any, Deque, Dict, List, Optional

import zmq

from zray import exceptions
from zray._private import protocol, scheduling, security
from zray._private.object_store import Allocator, Arena, SpillStore
from zray._private.protocol import ObjectKind, Op

logger = logging.getLogger("zray.node")

_POLLIN = int(zmq.POLLIN)     # plain ints: pyzmq's flag enums are slow to combine
_NOBLOCK = int(zmq.NOBLOCK)

HEARTBEAT_INTERVAL = 0.5
PARENT_CHECK_INTERVAL = 0.2

PENDING, READY = 0, 1
WAITING, QUEUED, RUNNING, FINISHED = "waiting", "queued", "running", "finished"
REMOTE = "remote"           # forwarded to the head; its RESULT comes back here

# Pipelining: a busy worker running quick tasks is handed the next ones of
# the same kind before it finishes, so it never waits for the agent between
# two tasks.  "Quick" is judged from each function's measured run time; the
# backlog is kept to about BACKLOG_SECONDS of work so that a slow task never
# strands many others behind it.
QUICK_TASK_SECONDS = 0.002
BACKLOG_SECONDS = 0.01
MAX_BACKLOG = 16

CHUNK_BYTES = 8 * 1024 * 1024
CHUNK_WINDOW = 4            # chunk requests in flight per object pulled


def _system_error(exc: BaseException) -> bytes:
    """Pickle one of zray's own errors (the same bytes serialization.system_error makes)."""
    return pickle.dumps(exc, protocol=5)


class Obj:
    __slots__ = ("state", "kind", "layout", "size", "data", "offset", "refs", "contained",
                 "waiting", "fetchers", "spilled", "owner", "pins", "where", "pull",
                 "exported", "held_for")

    def __init__(self) -> None:
        self.state = PENDING
        self.kind = ObjectKind.INLINE
        self.layout: list = []
        self.size = 0
        self.data: Any = None
        self.offset = -1
        self.refs = 0
        self.contained: List[bytes] = []
        self.waiting: List["Task"] = []
        self.fetchers: set = set()
        self.spilled = False
        self.owner: Optional[bytes] = None
        self.pins = 0      # live views in some process: never spilled while > 0
        self.where: List[bytes] = []     # nodes holding it, while there is no copy here
        self.pull: Optional["Pull"] = None
        self.exported = False            # other nodes know it: announce when it is freed
        self.held_for: Optional[bytes] = None  # kept for a task's origin node until freed


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


class Task:
    __slots__ = ("spec", "tid", "name", "owner", "job", "demand", "gpus", "state", "worker",
                 "retries_left", "cancelled", "held", "deps_left", "returns", "shape", "actor",
                 "origin", "err", "reserved")

    def __init__(self, spec: dict, owner: bytes) -> None:
        self.spec = spec
        self.tid: bytes = spec["t"]
        self.name: str = spec.get("n", "task")
        self.owner = owner
        self.job: bytes = spec.get("j", b"")
        self.demand, self.gpus, self.shape = _demand_of(spec.get("q"))
        self.state = WAITING
        self.worker: Optional["WorkerRec"] = None
        retries = int(spec.get("x", 3))
        self.retries_left = retries if retries >= 0 else 1 << 62
        self.cancelled = False
        self.held: List[bytes] = []
        self.deps_left = 0
        self.returns = [protocol.object_id(self.tid, i) for i in range(spec.get("r", 1))]
        self.actor: Optional[ActorRec] = None
        self.origin: Optional[bytes] = None   # the node that forwarded it here
        self.err = ""
        self.reserved = -1    # store space set aside for its result (reserve_result)


_DEFAULT_DEMAND = {"CPU": 1.0}
_demands: Dict[tuple, tuple] = {}


def _demand_of(resources: Optional[dict]) -> tuple:
    """(demand in units, GPUs, shape) of a task's resources, computed once per kind.

    Tasks share the demand dict: nobody changes it.
    """
    if resources is None:
        resources = _DEFAULT_DEMAND  # an empty dict is a task that needs nothing
    key = tuple(resources.items())
    known = _demands.get(key)
    if known is None:
        demand = scheduling.to_units(resources)
        known = (demand, float(resources.get("GPU", 0)), tuple(sorted(demand.items())))
        if len(_demands) < 10_000:  # bounded: resource specs are few in practice
            _demands[key] = known
    return known


class ActorRec:
    """An actor on this node: its worker, its calls in order, and its fate."""

    __slots__ = ("aid", "spec", "owner", "worker", "state", "queue", "inflight",
                 "restarts_left", "name", "detached", "cause", "anchor", "killed", "exiting",
                 "held")

    def __init__(self, spec: dict, owner: bytes) -> None:
        self.aid: bytes = spec["A"]
        self.spec = spec
        self.owner = owner
        self.worker: Optional[WorkerRec] = None
        self.state = "pending"        # pending, alive, restarting, dead
        self.queue: Deque[Task] = collections.deque()
        self.inflight: Dict[bytes, Task] = {}
        restarts = int(spec.get("mr", 0))
        self.restarts_left = restarts if restarts >= 0 else 1 << 62
        self.name: Optional[str] = spec.get("nm")
        self.detached = bool(spec.get("det"))
        self.cause = ""
        self.anchor = protocol.object_id(spec["t"], 0)
        self.killed = False
        self.exiting = False
        self.held: List[bytes] = []   # constructor arguments, kept for restarts


class ClientRec:
    __slots__ = ("ident", "kind", "pid", "job", "held", "worker", "pins")

    def __init__(self, ident: bytes, kind: str, pid: int, job: bytes) -> None:
        self.ident = ident
        self.kind = kind
        self.pid = pid
        self.job = job
        self.held: set = set()
        self.worker: Optional[WorkerRec] = None
        self.pins: Dict[bytes, int] = collections.Counter()


class WorkerRec:
    __slots__ = ("wid", "pid", "state", "task", "holding", "gpu_ids", "functions", "calls",
                 "blocked", "actor", "backlog", "epoch")

    def __init__(self, wid: bytes) -> None:
        self.wid = wid
        self.pid = 0
        self.state = "starting"   # starting, idle, busy, retiring
        self.task: Optional[Task] = None
        self.holding: Dict[str, int] = {}
        self.gpu_ids: List[int] = []
        self.functions: set = set()
        self.calls: Dict[bytes, int] = collections.Counter()
        self.blocked = False
        self.actor: Optional[ActorRec] = None
        # Tasks sent ahead to this worker, to run after ``task`` (see fill_backlogs).
        self.backlog: Deque[Task] = collections.deque()
        # BLOCKED messages seen from it: a task sent ahead carries this count, and the
        # worker drops one whose count is behind its own (the agent took it back).
        self.epoch = 0


class Agent:
    def __init__(self, *, session_dir: str, node_id: bytes, head_address: str,
                 resources: Dict[str, float], gpu_ids: List[int], store_bytes: int,
                 parent_pid: Optional[int], node_ip: str = "127.0.0.1",
                 token: Optional[str] = None, adopt: Optional[tuple] = None) -> None:
        self.session_dir = session_dir
        self.node_id = node_id
        self.node_ip = node_ip
        self.parent_pid = parent_pid
        self.total = scheduling.to_units(resources)
        self.available = dict(self.total)
        self.resources = resources
        self.gpus = scheduling.GpuPool(gpu_ids)
        self.address = f"ipc://{session_dir}/zray_agent_{node_id.hex()[:8]}.sock"
        self.socket_path = self.address[len("ipc://"):]

        self.arena = Arena.create(f"zray_{os.path.basename(session_dir)[-12:]}_{node_id.hex()[:8]}",
                                  store_bytes)
        self.allocator = Allocator(store_bytes)
        self.spill = SpillStore(session_dir)

        self.objects: Dict[bytes, Obj] = {}
        self.tasks: Dict[bytes, Task] = {}
        self.functions: Dict[bytes, Any] = {}
        self.clients: Dict[bytes, ClientRec] = {}
        self.workers: Dict[bytes, WorkerRec] = {}
        self.workers_by_pid: Dict[int, WorkerRec] = {}
        self.idle: List[WorkerRec] = []
        self.queues: Dict[tuple, Deque[Task]] = collections.OrderedDict()
        self.infeasible: List[Task] = []
        self.warned_shapes: set = set()
        self.starting = 0
        self.pending_allocs: Dict[bytes, int] = {}
        self.run_times: Dict[bytes, list] = {}   # function -> [runs seen, mean seconds]
        self.result_sizes: Dict[bytes, int] = {}  # function -> size of its last shared result
        self.missing_by_shape: Dict[tuple, dict] = {}  # what this node can never provide
        self.actors_to_pump: Dict[bytes, ActorRec] = {}  # actors with new ready calls
        self.sent_ahead = 0                       # tasks sent to busy workers, ever
        self.taken_back = 0                       # ... and taken back when one blocked
        self.reserved_used = 0                    # results written into space set aside
        self.errors: Dict[bytes, Deque[dict]] = collections.defaultdict(
            lambda: collections.deque(maxlen=1000))
        self.drivers_by_job: Dict[bytes, bytes] = {}
        self.cluster_nodes: List[dict] = []
        self.actors: Dict[bytes, ActorRec] = {}
        self.anchors: Dict[bytes, ActorRec] = {}
        self.names: Dict[str, dict] = {}
        self.remote_actors: set = set()      # placed on other nodes by the head
        self.job_origins: Dict[bytes, bytes] = {}  # job -> node of its driver (forwarded work)
        self.pulls: Dict[bytes, Pull] = {}
        self.peers: Dict[bytes, zmq.Socket] = {}
        self.freed_out: List[bytes] = []     # exported objects freed here: announce
        # OBJECT messages for each client, sent as one batch at the end of a loop pass.
        self.outgoing: Dict[bytes, List[tuple]] = {}
        self.pub_seq = -1
        self.sub: Optional[zmq.Socket] = None
        self.running = True

        self.ctx = zmq.Context()
        self.poller = zmq.Poller()
        # Over TCP (a cluster from `zray head`) every socket speaks CURVE with the
        # cluster's keys; an embedded session stays on ipc and has no peers.
        self.keys = security.Keys(token) if token else None
        if head_address.startswith("tcp://") and self.keys is None:
            raise ValueError("joining a head over TCP needs the cluster token")
        self.guard = security.Guard(self.ctx, self.keys, f"node {node_id.hex()[:8]}") \
            if self.keys else None
        self.transfer: Optional[zmq.Socket] = None
        self.transfer_address = ""
        if self.keys:
            self.transfer = self.ctx.socket(zmq.ROUTER)
            self.transfer.setsockopt(zmq.ROUTER_MANDATORY, 1)
            self.transfer.setsockopt(zmq.LINGER, 0)
            self.transfer.setsockopt(zmq.SNDHWM, 0)
            self.keys.serve(self.transfer)
            self.transfer.bind(f"tcp://{node_ip}:0")
            self.transfer_address = self.transfer.getsockopt_string(zmq.LAST_ENDPOINT)
            self.guard.watch(self.transfer)
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.router.setsockopt(zmq.SNDHWM, 0)
        self.router.setsockopt(zmq.RCVHWM, 0)
        self.router.setsockopt(zmq.LINGER, 0)
        old_umask = os.umask(0o077)
        try:
            self.router.bind(self.address)
        finally:
            os.umask(old_umask)
        self.head = self.ctx.socket(zmq.DEALER)
        self.head.setsockopt(zmq.IDENTITY, node_id)
        self.head.setsockopt(zmq.LINGER, 0)
        self.head.setsockopt(zmq.SNDHWM, 1000)
        self.head.setsockopt(zmq.RECONNECT_IVL, 10)
        if self.keys:
            self.keys.join(self.head)
        self.head.connect(head_address)

        self.adopt = adopt
        self.template = self._start_template()
        self.template_buf = b""
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        signal.set_wakeup_fd(self.wake_w)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)

        self.handlers = {
            Op.HELLO: self.on_hello, Op.EXPORT: self.on_export, Op.SUBMIT: self.on_submit,
            Op.ADDREF: self.on_addref, Op.DECREF: self.on_decref, Op.FETCH: self.on_fetch,
            Op.PUT: self.on_put, Op.ALLOC: self.on_alloc, Op.SEAL: self.on_seal,
            Op.ABORT: self.on_abort, Op.BLOCKED: self.on_blocked,
            Op.UNBLOCKED: self.on_unblocked, Op.TASK_DONE: self.on_task_done,
            Op.LOG: self.on_log, Op.CANCEL: self.on_cancel, Op.QUERY: self.on_query,
            Op.BYE: self.on_bye, Op.KILL: self.on_kill, Op.PIN: self.on_pin,
            Op.UNPIN: self.on_unpin,
        }
        self.head_handlers = {
            Op.REGISTERED: self.on_registered, Op.HEARTBEAT_ACK: self.on_heartbeat_ack,
            Op.FORWARD: self.on_forward, Op.RESULT: self.on_result,
            Op.ACTOR_OP: self.on_actor_op, Op.HEAD_REPLY: self.on_head_reply,
            Op.LOG: lambda body, raw: self.on_log(b"", body, raw),
        }

    # ------------------------------------------------------------------ loop
    def _on_signal(self, signum, frame) -> None:
        self.running = False

    def serve(self) -> None:
        poller = self.poller
        poller.register(self.router, zmq.POLLIN)
        poller.register(self.head, zmq.POLLIN)
        poller.register(self.template.stdout.fileno(), zmq.POLLIN)
        poller.register(self.wake_r, zmq.POLLIN)
        if self.transfer is not None:
            poller.register(self.transfer, zmq.POLLIN)
        self.send_head(Op.REGISTER, self.node_info())
        self.want_workers(min(4, max(1, self.total.get("CPU", 0) // scheduling.UNIT)))
        next_beat = time.monotonic()
        next_parent = time.monotonic() + PARENT_CHECK_INTERVAL
        try:
            while self.running:
                events = dict(poller.poll(100))
                if self.router in events:
                    router = self.router
                    # EVENTS before each read: a zmq.Again per pass costs more.
                    for _ in range(2000):
                        if not router.get(zmq.EVENTS) & _POLLIN:
                            break
                        self.handle(router.recv_multipart(_NOBLOCK, copy=False))
                    if self.outgoing:
                        self.flush_outgoing()  # results first: their callers wait
                if self.head in events:
                    self.drain_head()
                if self.keys is not None:
                    self.drain_cluster(events)
                if self.template.stdout.fileno() in events:
                    self.read_template()
                if self.wake_r in events:
                    os.read(self.wake_r, 512)
                try:
                    self.dispatch()
                except Exception:
                    logger.exception("dispatch failed")  # the loop lives on
                if self.outgoing:
                    self.flush_outgoing()
                if self.freed_out:
                    self.send_head(Op.ANNOUNCE, {"node": self.node_id, "freed": self.freed_out})
                    self.freed_out = []
                now = time.monotonic()
                if now >= next_beat:
                    next_beat = now + HEARTBEAT_INTERVAL
                    self.send_head(Op.HEARTBEAT, self.load_info())
                if now >= next_parent:
                    next_parent = now + PARENT_CHECK_INTERVAL
                    if self.parent_pid and os.getppid() != self.parent_pid:
                        logger.info("parent %s gone; node agent exits", self.parent_pid)
                        break
        finally:
            self.cleanup()

    def handle(self, frames: List[Any]) -> None:
        ident = frames[0].bytes
        try:
            op, body, raw = protocol.decode([frames[1].buffer] + frames[2:])
        except (protocol.ProtocolError, IndexError) as exc:
            logger.warning("malformed message from %s: %s", ident.hex()[:8], exc)
            self.send(ident, Op.ERROR, {"type": "ProtocolError", "msg": str(exc)})
            return
        handler = self.handlers.get(op)
        if handler is None:
            self.send(ident, Op.ERROR, {"req": body.get("req", 0), "type": "ProtocolError",
                                        "msg": f"the node agent does not serve {op.name}"})
            return
        try:
            handler(ident, body, raw)
        except Exception as exc:
            if not isinstance(exc, ValueError):
                logger.exception("handler %s failed", op.name)
            msg = str(exc) if isinstance(exc, ValueError) else f"{op.name} failed: {exc}"
            self.send(ident, Op.ERROR, {"req": body.get("req", 0), "type": type(exc).__name__,
                                        "msg": msg})

    def send(self, ident: bytes, op: Op, body: dict, *raw: Any) -> bool:
        if self.outgoing and ident in self.outgoing:
            self.flush_outgoing(ident)  # what was queued for this peer goes first
        return self.send_now(ident, op, body, *raw)

    def send_now(self, ident: bytes, op: Op, body: dict, *raw: Any) -> bool:
        try:
            frames = [ident, *protocol.encode(op, body, *raw)]
            # Zero-copy sends cost more than a memcpy for small frames.
            big = any(len(f) > 65536 for f in raw) if raw else False
            self.router.send_multipart(frames, copy=not big)
            return True
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EHOSTUNREACH:
                return False  # the peer left; its records go when we hear of it
            raise

    def send_batch(self, ident: bytes, op: Op, items: List[tuple]) -> bool:
        """Several ``(body, raw frames)`` messages of one op, in one send."""
        if len(items) == 1:
            body, raw = items[0]
            return self.send(ident, op, body, *raw)
        body, raw = protocol.pack_batch(items)
        return self.send(ident, op, body, *raw)

    def queue_object(self, ident: bytes, body: dict, data: Any = None) -> None:
        """An OBJECT for a client, sent with the others of this loop pass."""
        item = (body, () if data is None else (data,))
        queued = self.outgoing.get(ident)
        if queued is None:
            self.outgoing[ident] = [item]
        else:
            queued.append(item)

    def flush_outgoing(self, ident: Optional[bytes] = None) -> None:
        for peer in ([ident] if ident is not None else list(self.outgoing)):
            items = self.outgoing.pop(peer, None)
            if not items:
                continue
            if len(items) == 1:
                body, raw = items[0]
            else:
                body, raw = protocol.pack_batch(items)
            try:
                self.send_now(peer, Op.OBJECT, body, *raw)
            except Exception:  # one peer's trouble must not stop the loop
                logger.exception("sending %d objects to %s failed", len(items), peer.hex()[:8])

    def send_head(self, op: Op, body: dict, *raw: Any) -> bool:
        try:
            self.head.send_multipart(protocol.encode(op, body, *raw), zmq.NOBLOCK)
            return True
        except zmq.Again:
            return False  # head unreachable for now; the next heartbeat carries the state

    def drain_head(self) -> None:
        while True:
            try:
                frames = self.head.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                op, body, raw = protocol.decode(frames)
            except protocol.ProtocolError as exc:
                logger.warning("malformed message from head: %s", exc)
                continue
            handler = self.head_handlers.get(op)
            if handler is None:
                logger.warning("the head sent %s, which a node agent does not serve", op.name)
                continue
            try:
                handler(body, list(raw))
            except Exception:
                logger.exception("%s from the head failed", op.name)

    # ------------------------------------------------------------------ info
    def node_info(self) -> dict:
        return {"node": self.node_id, "ip": self.node_ip, "address": self.address,
                "resources": self.resources, "store": self.arena.size, "pid": os.getpid(),
                "transfer": self.transfer_address, "hostname": socket.gethostname()}

    def load_info(self) -> dict:
        queued = sum(len(q) for q in self.queues.values())
        running = sum(1 for w in self.workers.values() if w.task is not None)
        return {"node": self.node_id, "available": scheduling.from_units(self.available),
                "store_used": self.allocator.used, "queued": queued + len(self.infeasible),
                "running": running, "workers": len(self.workers),
                "actors": sum(1 for a in self.actors.values() if a.state == "alive")}

    # ------------------------------------------------------------------ clients
    def on_hello(self, ident: bytes, body: dict, raw) -> None:
        kind = body.get("kind")
        if kind not in ("driver", "worker"):
            raise ValueError(f"unknown client kind {kind!r}")
        client = ClientRec(ident, kind, int(body.get("pid", 0)), body.get("job", b""))
        self.clients[ident] = client
        if kind == "worker":
            worker = self.workers.get(ident)
            if worker is None:
                raise ValueError("a worker this agent did not start said hello")
            client.worker = worker
            worker.pid = client.pid
            self.workers_by_pid[worker.pid] = worker
            worker.state = "idle"
            self.starting = max(0, self.starting - 1)
            self.idle.append(worker)
        else:
            self.drivers_by_job[client.job] = ident
        self.send(ident, Op.WELCOME, {
            "node": self.node_id, "arena": self.arena.name, "arena_size": self.arena.size,
            "session": self.session_dir, "pid": os.getpid(), "ip": self.node_ip})

    def on_bye(self, ident: bytes, body: dict, raw) -> None:
        self.drop_client(ident)

    def drop_client(self, ident: bytes) -> None:
        client = self.clients.pop(ident, None)
        if client is None:
            return
        for oid, count in client.pins.items():
            obj = self.objects.get(oid)
            if obj is not None:
                obj.pins -= count
        for oid in client.held:
            self.decref(oid)
        if client.kind == "driver" and self.drivers_by_job.get(client.job) == ident:
            del self.drivers_by_job[client.job]

    # ------------------------------------------------------------------ refs
    def on_addref(self, ident: bytes, body: dict, raw) -> None:
        client = self.clients.get(ident)
        if client is None:
            return
        for oid in body["o"]:
            if oid not in client.held:
                client.held.add(oid)
                obj = self.objects.get(oid)
                if obj is None:
                    obj = self.objects[oid] = Obj()  # announced before it is sealed
                obj.refs += 1

    def on_decref(self, ident: bytes, body: dict, raw) -> None:
        client = self.clients.get(ident)
        if client is None:
            return
        for oid in body["o"]:
            if oid in client.held:
                client.held.discard(oid)
                self.decref(oid)

    def decref(self, oid: bytes) -> None:
        obj = self.objects.get(oid)
        if obj is None:
            return
        obj.refs -= 1
        if obj.refs <= 0 and obj.state == READY and not obj.waiting:
            self.free(oid, obj)

    def free(self, oid: bytes, obj: Obj) -> None:
        if self.objects.pop(oid, None) is None:
            return
        actor = self.anchors.pop(oid, None)
        if actor is not None:
            self.retire_actor(actor)  # the last handle is gone
        if obj.kind == ObjectKind.SHARED:
            if obj.spilled:
                self.spill.discard(oid)
            elif obj.offset >= 0:
                self.allocator.free(obj.offset)
        if obj.pull is not None:
            self.abandon_pull(oid, obj)
            self.pulls.pop(oid, None)
            obj.pull = None
        if obj.exported and obj.held_for is None:
            self.freed_out.append(oid)
        for inner in obj.contained:
            self.decref(inner)

    def hold(self, client: ClientRec, oid: bytes, obj: Obj) -> None:
        if oid not in client.held:
            client.held.add(oid)
            obj.refs += 1

    # ------------------------------------------------------------------ objects
    def on_put(self, ident: bytes, body: dict, raw) -> None:
        """Inline objects, one raw frame each, in the order of ``body["p"]``."""
        puts = body["p"]
        if len(raw) != len(puts):
            raise ValueError(f"PUT of {len(puts)} objects came with {len(raw)} frames")
        client = self.clients.get(ident)
        objects = self.objects
        for (oid, layout, contained), data in zip(puts, raw):
            obj = objects.get(oid)
            if obj is None:
                obj = objects[oid] = Obj()
            if client is not None:
                self.hold(client, oid, obj)
            self.seal(oid, obj, ObjectKind.INLINE, layout, data, -1, contained)

    def on_alloc(self, ident: bytes, body: dict, raw) -> None:
        size = int(body["n"])
        offset = self.allocate(size)
        if offset is None:
            self.send(ident, Op.ERROR, {
                "req": body.get("req", 0), "type": "ObjectStoreFullError",
                "msg": f"the object store of node {self.node_id.hex()[:8]} has no room for "
                       f"{size} bytes ({self.allocator.used} of {self.allocator.capacity} "
                       f"bytes in use by objects still referenced)"})
            return
        self.pending_allocs[body["o"]] = offset
        self.send(ident, Op.ALLOC_REPLY, {"req": body.get("req", 0), "off": offset})

    def allocate(self, size: int) -> Optional[int]:
        offset = self.allocator.allocate(size)
        if offset is None and size <= self.allocator.capacity:
            self.spill_until(size)
            offset = self.allocator.allocate(size)
        return offset

    def spill_until(self, size: int) -> None:
        """Move sealed shared objects to disk until ``size`` bytes could fit."""
        for oid, obj in list(self.objects.items()):
            if self.allocator.largest_free >= size:
                return
            if obj.state == READY and obj.kind == ObjectKind.SHARED and not obj.spilled \
                    and obj.pins <= 0 and obj.offset >= 0:
                self.spill.spill(oid, self.arena.view(obj.offset, obj.size))
                self.allocator.free(obj.offset)
                obj.spilled = True
                obj.offset = -1

    def restore(self, oid: bytes, obj: Obj) -> bool:
        offset = self.allocate(obj.size)
        if offset is None:
            return False
        self.spill.restore_into(oid, self.arena.view(offset, obj.size))
        obj.offset = offset
        obj.spilled = False
        return True

    def on_pin(self, ident: bytes, body: dict, raw) -> None:
        oid = body["o"]
        obj = self.objects.get(oid)
        client = self.clients.get(ident)
        if obj is None or obj.state != READY or obj.kind != ObjectKind.SHARED or client is None:
            raise exceptions.ObjectLostError(f"object {oid.hex()} is not in this node's store")
        if obj.spilled and not self.restore(oid, obj):
            raise exceptions.ObjectStoreFullError(
                f"object {oid.hex()} is spilled and the store has no room to bring it back")
        obj.pins += 1
        client.pins[oid] += 1
        self.send(ident, Op.PIN_REPLY, {"req": body.get("req", 0), "off": obj.offset})

    def on_unpin(self, ident: bytes, body: dict, raw) -> None:
        client = self.clients.get(ident)
        for oid in body["o"]:
            obj = self.objects.get(oid)
            if client is not None and client.pins.get(oid, 0) > 0:
                client.pins[oid] -= 1
                if obj is not None:
                    obj.pins -= 1

    def on_abort(self, ident: bytes, body: dict, raw) -> None:
        offset = self.pending_allocs.pop(body["o"], None)
        if offset is not None:
            self.allocator.free(offset)

    def on_seal(self, ident: bytes, body: dict, raw) -> None:
        oid = body["o"]
        self.pending_allocs.pop(oid, None)
        obj = self.objects.get(oid) or Obj()
        self.objects[oid] = obj
        client = self.clients.get(ident)
        if client is not None:
            self.hold(client, oid, obj)
        obj.size = int(body["n"])
        self.seal(oid, obj, ObjectKind.SHARED, body["l"], None, int(body["off"]),
                  body.get("c", ()))

    def seal(self, oid: bytes, obj: Obj, kind: int, layout: list, data: Any, offset: int,
             contained) -> None:
        if obj.state == READY:  # sealed twice (a retried task): keep the first
            if kind == ObjectKind.SHARED and offset >= 0:
                self.allocator.free(offset)
            return
        obj.state = READY
        obj.kind = kind
        obj.layout = layout
        obj.data = data
        obj.offset = offset
        for inner in contained:
            inner_obj = self.objects.get(inner)
            if inner_obj is not None:
                inner_obj.refs += 1
                obj.contained.append(inner)
        self.notify(oid, obj)

    def notify(self, oid: bytes, obj: Obj) -> None:
        """The object is ready (or arrived here): serve fetchers, wake waiting tasks."""
        fetchers, obj.fetchers = obj.fetchers, set()
        for ident in fetchers:
            self.send_object(ident, oid, obj)
        waiting, obj.waiting = obj.waiting, []
        for task in waiting:
            task.deps_left -= 1
            if task.deps_left == 0 and task.state == WAITING:
                self.make_ready(task)
        if obj.refs <= 0 and not obj.waiting and not obj.fetchers and obj.pull is None:
            self.free(oid, obj)

    def on_fetch(self, ident: bytes, body: dict, raw) -> None:
        for oid in body["o"]:
            obj = self.objects.get(oid)
            if obj is None:
                self.send_error_object(ident, oid, exceptions.ObjectLostError(
                    f"object {oid.hex()} is not known to this node: it was freed, or "
                    f"the ref did not come from this cluster"))
            elif obj.state == READY:
                self.send_object(ident, oid, obj)
            else:
                obj.fetchers.add(ident)
                if obj.where and obj.pull is None:
                    self.start_pull(oid, obj)

    def send_object(self, ident: bytes, oid: bytes, obj: Obj) -> None:
        if self.is_remote(obj):
            obj.fetchers.add(ident)  # served when it lands here
            if obj.pull is None:
                self.start_pull(oid, obj)
            return
        if obj.kind == ObjectKind.SHARED:
            if obj.spilled and not self.restore(oid, obj):
                self.send_error_object(ident, oid, exceptions.ObjectStoreFullError(
                    f"object {oid.hex()} is spilled and there is no room to bring it back"))
                return
            self.queue_object(ident, {"o": oid, "k": obj.kind, "l": obj.layout,
                                      "off": obj.offset})
        else:
            self.queue_object(ident, {"o": oid, "k": obj.kind, "l": obj.layout}, obj.data)

    def send_error_object(self, ident: bytes, oid: bytes, exc: BaseException) -> None:
        self.queue_object(ident, {"o": oid, "k": ObjectKind.ERROR, "l": []},
                          _system_error(exc))

    def descriptor(self, oid: bytes, obj: Obj) -> tuple:
        if obj.kind == ObjectKind.SHARED:
            if obj.spilled and not self.restore(oid, obj):
                raise exceptions.ObjectStoreFullError(f"no room to restore spilled {oid.hex()}")
            return {"o": oid, "k": obj.kind, "l": obj.layout, "off": obj.offset}, None
        return {"o": oid, "k": obj.kind, "l": obj.layout}, obj.data

    # ------------------------------------------------------------------ tasks
    def on_export(self, ident: bytes, body: dict, raw) -> None:
        self.functions.setdefault(body["f"], (raw[0], body.get("path") or []))

    def on_submit(self, ident: bytes, body: dict, raw) -> None:
        client = self.clients.get(ident)
        if client is None:
            raise ValueError("submit before hello")
        for spec in body["t"]:
            self.submit(client, spec)

    def submit(self, client: ClientRec, spec: dict) -> None:
        task = Task(spec, client.ident)
        if task.tid in self.tasks:
            return
        self.tasks[task.tid] = task
        dead_actor = None
        if "A" in spec:
            if spec.get("new"):
                actor = ActorRec(spec, client.ident)
                self.actors[actor.aid] = actor
                self.anchors[actor.anchor] = actor
            else:
                actor = self.actors.get(spec["A"])
                if actor is None and self.can_forward():
                    pass  # on another node: make_ready forwards the call
                elif actor is None or actor.state == "dead":
                    dead_actor = actor.cause if actor is not None else \
                        f"actor {spec['A'].hex()} is not known to this node"
                else:
                    actor.queue.append(task)
            task.actor = actor
        for oid in task.returns:
            obj = self.objects.get(oid)
            if obj is None:
                obj = self.objects[oid] = Obj()
            obj.owner = client.ident
            obj.fetchers.add(client.ident)  # results are pushed to the submitter
            self.hold(client, oid, obj)
        lost = None
        for oid in list(spec.get("d", ())) + list(spec.get("c", ())):
            obj = self.objects.get(oid)
            if obj is None:
                lost = oid
                continue
            obj.refs += 1
            task.held.append(oid)
        if dead_actor is not None:
            self.finish_with_error(task, exceptions.ActorDiedError(
                f"cannot call {task.name}: {dead_actor}"))
            return
        if task.actor is not None and spec.get("new"):
            if spec.get("det"):
                self.objects[task.actor.anchor].refs += 1  # detached: lives until killed
            for oid in task.held:
                self.objects[oid].refs += 1
                task.actor.held.append(oid)
        if lost is not None:
            self.finish_with_error(task, exceptions.ObjectLostError(
                f"task {task.name}: argument {lost.hex()} is not known to this node "
                f"(freed, or a ref from another cluster)"))
            return
        for oid in spec.get("d", ()):
            obj = self.objects[oid]
            if obj.state != READY:
                task.deps_left += 1
                obj.waiting.append(task)
        if task.deps_left == 0:
            self.make_ready(task)

    def make_ready(self, task: Task) -> None:
        for oid in task.spec.get("d", ()):
            obj = self.objects.get(oid)
            if obj is not None and obj.kind == ObjectKind.ERROR:
                self.finish_with_error_data(task, obj.data)  # same root cause
                return
        if "A" in task.spec and task.actor is None:
            self.forward(task)  # a call to an actor on another node
            return
        missing = self.missing_by_shape.get(task.shape)
        if missing is None:
            missing = self.missing_by_shape[task.shape] = scheduling.missing(self.total,
                                                                             task.demand)
        if missing and self.can_forward():
            self.forward(task)  # this node can never run it: the head places it
            return
        if self.fetch_deps(task):
            return  # back here when its arguments have arrived
        if task.actor is not None and not task.spec.get("new"):
            task.state = QUEUED
            # Sent at the end of this loop pass, with the calls that follow it.
            self.actors_to_pump[task.actor.aid] = task.actor
            return
        if missing:
            task.state = QUEUED
            self.infeasible.append(task)
            self.warn_infeasible(task, missing)
            return
        task.state = QUEUED
        queue = self.queues.get(task.shape)
        if queue is None:
            queue = self.queues[task.shape] = collections.deque()
        queue.append(task)

    def fetch_deps(self, task: Task) -> bool:
        """Pull arguments that are on other nodes; True if the task must wait for them."""
        if self.keys is None:
            return False  # a single-node session: everything is here
        for oid in task.spec.get("d", ()):
            obj = self.objects.get(oid)
            if obj is not None and self.is_remote(obj):
                task.deps_left += 1
                obj.waiting.append(task)
                if obj.pull is None:
                    self.start_pull(oid, obj)
        return task.deps_left > 0

    def warn_infeasible(self, task: Task, missing: dict) -> None:
        key = (task.name, task.shape)
        if key in self.warned_shapes:
            return
        self.warned_shapes.add(key)
        need = ", ".join(f"{name}: {n:g} (node has {have:g})"
                         for name, (n, have) in sorted(missing.items()))
        msg = (f"task {task.name} cannot run on this cluster: it needs {need}. "
               f"It stays queued until a node with these resources joins.")
        logger.warning(msg)
        driver = self.drivers_by_job.get(task.job)
        if driver is not None:
            self.send(driver, Op.WARN, {"msg": msg})

    def dispatch(self) -> None:
        """Send actors their ready calls; start queued tasks whose resources fit,
        on idle workers; then send quick ones ahead to busy workers."""
        if self.actors_to_pump:
            actors, self.actors_to_pump = self.actors_to_pump, {}
            for actor in actors.values():
                self.pump_actor(actor)
        self.start_queued()
        if self.run_times and any(self.queues.values()):
            self.fill_backlogs()

    def start_queued(self) -> None:
        for queue in list(self.queues.values()):
            while queue:
                task = queue[0]
                if task.state != QUEUED:
                    queue.popleft()  # cancelled while queued
                    continue
                if not scheduling.fits(self.available, task.demand):
                    if self.keys is not None and self.spill_task(task, queue):
                        continue
                    break
                gpu_ids: List[int] = []
                if task.gpus:
                    assigned = self.gpus.assign(task.gpus)
                    if assigned is None:
                        break
                    gpu_ids = assigned
                worker = self.idle_worker()
                if worker is None:
                    if gpu_ids:
                        self.gpus.release(gpu_ids, task.gpus)
                    self.want_workers(len(queue))
                    return
                queue.popleft()
                self.run(task, worker, gpu_ids)

    def is_quick(self, task: Task) -> bool:
        seen = self.run_times.get(task.spec["f"])
        return seen is not None and seen[0] >= 3 and seen[1] < QUICK_TASK_SECONDS

    def can_send_ahead(self, task: Task) -> bool:
        spec = task.spec
        return (task.actor is None and not task.gpus and not spec.get("m")
                and not task.cancelled and spec["f"] in self.functions and self.is_quick(task))

    def fill_backlogs(self) -> None:
        """Send queued quick tasks to busy workers that run quick tasks of the same shape."""
        for worker in list(self.workers.values()):
            task = worker.task
            if worker.state != "busy" or worker.blocked or task is None \
                    or worker.actor is not None or not self.can_send_ahead(task):
                continue
            queue = self.queues.get(task.shape)
            if not queue:
                continue
            mean = self.run_times[task.spec["f"]][1]
            depth = min(MAX_BACKLOG, max(1, int(BACKLOG_SECONDS / max(mean, 1e-6))))
            backlog = worker.backlog
            messages = []
            while queue and len(backlog) < depth:
                nxt = queue[0]
                if nxt.state != QUEUED:
                    queue.popleft()  # cancelled while queued
                    continue
                if not self.can_send_ahead(nxt):
                    break
                queue.popleft()
                message = self.execute_message(worker, nxt)
                if message is None:
                    continue
                message[0]["ep"] = worker.epoch
                self.sent_ahead += 1
                nxt.state = RUNNING
                nxt.worker = worker
                backlog.append(nxt)
                messages.append(message)
            if messages and not self.send_batch(worker.wid, Op.EXECUTE, messages):
                for lost in backlog:
                    lost.retries_left += 1  # sent ahead into the void: not a try
                self.worker_died(worker, "unreachable")

    def take_back(self, worker: WorkerRec) -> None:
        """Return the tasks sent ahead to a worker to the front of their queues."""
        backlog = worker.backlog
        while backlog:
            task = backlog.pop()
            task.worker = None
            self.unreserve(task)  # the worker drops it unrun
            if task.state != RUNNING:
                continue
            task.state = QUEUED
            self.taken_back += 1
            queue = self.queues.get(task.shape)
            if queue is None:
                queue = self.queues[task.shape] = collections.deque()
            queue.appendleft(task)

    def spill_task(self, task: Task, queue: Deque[Task]) -> bool:
        """A saturated node hands the head of a queue to a node that is idle now."""
        others = [n for n in self.cluster_nodes
                  if n.get("alive") and n.get("node_id") != self.node_id.hex()]
        if not others or task.spec.get("d") and any(
                self.is_remote(self.objects[oid]) for oid in task.spec["d"]
                if oid in self.objects):
            return False
        local = scheduling.NodeLoad(self.node_id, self.total, self.available, queued=len(queue))
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
        queue.popleft()
        self.forward(task, exclude=self.node_id)
        return True

    def idle_worker(self) -> Optional[WorkerRec]:
        while self.idle:
            worker = self.idle.pop()
            if worker.state == "idle":
                return worker
        return None

    def want_workers(self, wanted: int) -> None:
        # Start as many as could run now, but never a storm: forks are cheap,
        # idle interpreters are not.
        cpus = max(1, self.available.get("CPU", 0) // scheduling.UNIT)
        for _ in range(min(wanted, cpus, 32) - self.starting):
            self.spawn_worker()

    def run(self, task: Task, worker: WorkerRec, gpu_ids: List[int]) -> None:
        scheduling.acquire(self.available, task.demand)
        worker.holding = task.demand
        worker.gpu_ids = gpu_ids
        worker.state = "busy"
        worker.task = task
        task.worker = worker
        task.state = RUNNING
        if task.actor is not None:
            worker.actor = task.actor
            task.actor.worker = worker
        self.execute_on(worker, task)

    def execute_on(self, worker: WorkerRec, task: Task) -> None:
        message = self.execute_message(worker, task)
        if message is not None and not self.send(worker.wid, Op.EXECUTE, message[0], *message[1]):
            if task.actor is None:
                task.retries_left += 1  # it never reached the worker: not a try
            self.worker_died(worker, "unreachable")

    def execute_message(self, worker: WorkerRec, task: Task) -> Optional[tuple]:
        """The EXECUTE ``(body, frames)`` for a task; None if it failed instead."""
        spec = task.spec
        frames: List[Any] = []
        deps = []
        client = self.clients.get(worker.wid)
        for oid in spec.get("d", ()):
            obj = self.objects[oid]
            desc, data = self.descriptor(oid, obj)
            if data is not None:
                desc["i"] = len(frames)
                frames.append(data)
            elif client is not None:
                # Pinned for the worker as its PIN would be: it reads the
                # object at once and sends the UNPIN when its views are gone.
                obj.pins += 1
                client.pins[oid] += 1
                desc["pin"] = 1
            deps.append(desc)
        body = {"s": spec, "deps": deps, "gpus": worker.gpu_ids}
        fid = spec["f"]
        if task.actor is None:
            self.reserve_result(task, body)
        if fid and fid not in worker.functions:
            blob, path = self.functions.get(fid, (None, None))
            if blob is None:
                self.finish_with_error(task, exceptions.ZrayError(
                    f"task {task.name}: its function was never exported to this node"))
                self.release_worker(worker)
                return None
            body["fi"] = len(frames)
            body["path"] = path
            frames.append(blob)
            worker.functions.add(fid)
        return body, frames

    def reserve_result(self, task: Task, body: dict) -> None:
        """Set store space aside for a task whose function's last result was
        large, so its worker writes it without an ALLOC round trip.  Only free
        space is used (nothing is spilled for a guess); TASK_DONE gives back
        what the result did not use."""
        size = self.result_sizes.get(task.spec["f"], 0)
        if size > protocol.INLINE_THRESHOLD and task.reserved < 0 and len(task.returns) == 1:
            offset = self.allocator.allocate(size)
            if offset is not None:
                task.reserved = offset
                body["pa"] = [offset, size]

    def unreserve(self, task: Task, results: Any = ()) -> None:
        """Free the space set aside for ``task`` unless a result took it."""
        offset, task.reserved = task.reserved, -1
        if offset < 0:
            return
        if any(r.get("off") == offset for r in results if r.get("k") == ObjectKind.SHARED):
            self.reserved_used += 1
        else:
            self.allocator.free(offset)

    def release_worker(self, worker: WorkerRec) -> None:
        if not worker.blocked:
            scheduling.release(self.available, worker.holding)
        else:
            scheduling.release(self.available,
                               {k: v for k, v in worker.holding.items() if k != "CPU"})
        if worker.gpu_ids or (worker.task and worker.task.gpus):
            self.gpus.release(worker.gpu_ids, worker.task.gpus if worker.task else 0)
        worker.holding = {}
        worker.gpu_ids = []
        worker.blocked = False
        worker.task = None

    def on_task_done(self, ident: bytes, body: dict, raw) -> None:
        for done, frames in protocol.unpack_batch(body, raw):
            try:
                self.task_done(ident, done, frames)
            except Exception:
                logger.exception("TASK_DONE from %s failed", ident.hex()[:8])

    def task_done(self, ident: bytes, body: dict, raw) -> None:
        worker = self.workers.get(ident)
        if worker is None:
            return
        if worker.actor is not None:
            self.actor_task_done(worker, worker.actor, body, raw)
            return
        if worker.task is None:
            return
        task = worker.task
        if body.get("t") != task.tid:
            logger.warning("worker %s reported task %s while running %s", ident.hex()[:8],
                           bytes(body.get("t") or b"").hex()[:8], task.tid.hex()[:8])
            return
        fid = task.spec["f"]
        worker.calls[fid] += 1
        results = body.get("res", ())
        if len(results) == 1 and isinstance(results[0], dict):
            self.result_sizes[fid] = results[0].get("n", 0) \
                if results[0].get("k") == ObjectKind.SHARED else 0
        if task.reserved >= 0:
            self.unreserve(task, results)
        seconds = body.get("dt")
        if type(seconds) is float:
            seen = self.run_times.get(fid)
            if seen is None:
                self.run_times[fid] = [1, seconds]
            else:
                seen[0] += 1
                seen[1] += (seconds - seen[1]) * 0.2
        if worker.backlog:
            # The next task is already there: it holds what this one held.
            nxt = worker.backlog.popleft()
            worker.task = nxt
        else:
            self.release_worker(worker)
            max_calls = task.spec.get("m", 0)
            if max_calls and worker.calls[fid] >= max_calls:
                worker.state = "retiring"
                self.send(worker.wid, Op.EXIT, {})
            else:
                worker.state = "idle"
                self.idle.append(worker)
        if task.cancelled:
            for result in body.get("res", ()):
                if result.get("k") == ObjectKind.SHARED:
                    self.allocator.free(result["off"])
            self.finish_with_error(task, exceptions.TaskCancelledError(
                f"task {task.name} was cancelled"))
            return
        self.seal_results(task, body, raw)
        self.finish(task)

    def seal_results(self, task: Task, body: dict, raw) -> None:
        for result in body.get("res", ()):
            oid = result["o"]
            self.pending_allocs.pop(oid, None)
            obj = self.objects.get(oid)
            if obj is None:
                obj = self.objects[oid] = Obj()
            data = raw[result["i"]] if "i" in result else None
            if result["k"] == ObjectKind.SHARED:
                obj.size = result["n"]
            self.seal(oid, obj, result["k"], result.get("l", []), data, result.get("off", -1),
                      result.get("c", ()))
            if result["k"] == ObjectKind.ERROR:
                task.err = body.get("err", "")
                self.record_error(task, task.err)

    # ------------------------------------------------------------------ actors
    def actor_task_done(self, worker: WorkerRec, actor: ActorRec, body: dict, raw) -> None:
        task = self.tasks.get(body.get("t", b""))
        if task is None:
            return
        if task.spec.get("new"):
            worker.task = None
            worker.state = "actor"
            task.worker = None
            self.seal_results(task, body, raw)
            self.finish(task)
            if body.get("err"):
                actor.cause = f"the actor's constructor raised: {body['err']}"
                actor.killed = True
                self.send(worker.wid, Op.EXIT, {})
                self.actor_dead(actor)
            else:
                actor.state = "alive"
                self.pump_actor(actor)
            return
        actor.inflight.pop(task.tid, None)
        self.seal_results(task, body, raw)
        self.finish(task)
        if actor.exiting:
            self.retire_actor(actor)

    def pump_actor(self, actor: ActorRec) -> None:
        """Send an actor its ready calls, in submission order."""
        if actor.state != "alive" or actor.worker is None:
            return
        queue = actor.queue
        worker = actor.worker
        messages = []
        while queue:
            task = queue[0]
            if task.state == FINISHED:
                queue.popleft()
                continue
            if task.state != QUEUED:
                break  # an earlier call still waits for its arguments
            queue.popleft()
            task.state = RUNNING
            task.worker = worker
            actor.inflight[task.tid] = task
            message = self.execute_message(worker, task)
            if message is not None:
                messages.append(message)
        if messages and not self.send_batch(worker.wid, Op.EXECUTE, messages):
            self.worker_died(worker, "unreachable")

    def on_kill(self, ident: bytes, body: dict, raw) -> None:
        actor = self.actors.get(body["A"])
        if actor is None and ident and self.can_forward():
            self.send_head(Op.ACTOR_OP, {"A": body["A"],
                                         "no_restart": body.get("no_restart", True)})
            return
        if actor is None or actor.state == "dead":
            return
        if body.get("no_restart", True):
            actor.killed = True
            actor.cause = "the actor was killed by zray.kill()"
        if actor.worker is not None and actor.worker.pid:
            try:
                os.kill(actor.worker.pid, signal.SIGKILL)
            except OSError:
                pass
        elif actor.killed:
            self.actor_dead(actor)

    def retire_actor(self, actor: ActorRec) -> None:
        """No handle is left: let queued calls finish, then end the actor."""
        if actor.state == "dead" or actor.detached:
            return
        actor.exiting = True
        if actor.queue or actor.inflight:
            return
        actor.killed = True
        actor.cause = "every handle to the actor is gone"
        if actor.worker is not None:
            self.send(actor.worker.wid, Op.EXIT, {})
        else:
            self.actor_dead(actor)

    def actor_worker_died(self, worker: WorkerRec, actor: ActorRec, status: str) -> None:
        scheduling.release(self.available, worker.holding)
        if worker.gpu_ids:
            self.gpus.release(worker.gpu_ids, float(actor.spec.get("q", {}).get("GPU", 0)))
        worker.holding = {}
        actor.worker = None
        inflight, actor.inflight = actor.inflight, {}
        why = actor.cause or f"the actor's worker (pid {worker.pid}) died ({status})"
        for task in inflight.values():
            self.finish_with_error(task, exceptions.ActorDiedError(
                f"{task.name} did not finish: {why}"))
        creating = worker.task
        worker.task = None
        if creating is not None and creating.state != FINISHED:
            self.tasks.pop(creating.tid, None)
        if not actor.killed and actor.restarts_left > 0:
            actor.restarts_left -= 1
            actor.state = "restarting"
            restart = Task(actor.spec, actor.owner)
            restart.actor = actor
            self.tasks[restart.tid] = restart
            self.make_ready(restart)  # its arguments are held by the actor
            return
        if creating is not None and creating.state != FINISHED:
            self.finish_with_error(creating, exceptions.ActorDiedError(why))
        actor.cause = why
        self.actor_dead(actor)

    def actor_dead(self, actor: ActorRec) -> None:
        actor.state = "dead"
        self.anchors.pop(actor.anchor, None)
        if actor.name and self.names.get(actor.name, {}).get("aid") == actor.aid:
            del self.names[actor.name]
        queued, actor.queue = actor.queue, collections.deque()
        for task in queued:
            if task.state != FINISHED:
                self.unwait(task)
                self.finish_with_error(task, exceptions.ActorDiedError(
                    f"cannot run {task.name}: {actor.cause}"))
        held, actor.held = actor.held, []
        for oid in held:
            self.decref(oid)
        if actor.detached and actor.anchor in self.objects:
            actor.detached = False
            self.decref(actor.anchor)

    def finish(self, task: Task) -> None:
        task.state = FINISHED
        self.tasks.pop(task.tid, None)
        if task.origin is not None:
            self.send_result(task)
        held, task.held = task.held, []
        for oid in held:
            self.decref(oid)

    def finish_with_error(self, task: Task, exc: BaseException) -> None:
        self.finish_with_error_data(task, _system_error(exc), str(exc))

    def finish_with_error_data(self, task: Task, data: Any, text: str = "") -> None:
        for oid in task.returns:
            obj = self.objects.get(oid)
            if obj is None:
                continue
            self.seal(oid, obj, ObjectKind.ERROR, [], data, -1, ())
        self.record_error(task, text or "failed because an argument's task failed")
        self.finish(task)

    def record_error(self, task: Task, text: str) -> None:
        self.errors[task.job].append({"task_name": task.name, "task_id": task.tid.hex(),
                                      "error": text, "time": time.time(),
                                      "node_id": self.node_id.hex()})

    def on_blocked(self, ident: bytes, body: dict, raw) -> None:
        worker = self.workers.get(ident)
        if worker is None:
            return
        worker.epoch += 1
        if worker.backlog:
            self.take_back(worker)  # they may be what it waits for
        if worker.task is None or worker.blocked:
            return
        worker.blocked = True
        cpu = worker.holding.get("CPU", 0)
        if cpu:
            scheduling.release(self.available, {"CPU": cpu})

    def on_unblocked(self, ident: bytes, body: dict, raw) -> None:
        worker = self.workers.get(ident)
        if worker is None or worker.task is None or not worker.blocked:
            return
        worker.blocked = False
        cpu = worker.holding.get("CPU", 0)
        if cpu:
            scheduling.acquire(self.available, {"CPU": cpu})  # may oversubscribe briefly

    def on_cancel(self, ident: bytes, body: dict, raw) -> None:
        task = self.tasks.get(body["t"])
        if task is None or task.state == FINISHED:
            return
        if task.state == REMOTE:  # its late RESULT finds nothing to finish
            self.finish_with_error(task, exceptions.TaskCancelledError(
                f"task {task.name} was cancelled (it had been sent to another node)"))
            return
        if task.state in (WAITING, QUEUED):
            self.unwait(task)
            if task in self.infeasible:
                self.infeasible.remove(task)
            task.state = FINISHED  # queues skip it lazily
            self.finish_with_error(task, exceptions.TaskCancelledError(
                f"task {task.name} was cancelled before it ran"))
            return
        task.cancelled = True
        worker = task.worker
        if worker is None:
            return
        if task is not worker.task:
            # Sent ahead, not started: the worker skips it and reports it cancelled.
            self.send(worker.wid, Op.INTERRUPT, {"t": task.tid})
            return
        if body.get("force"):
            try:
                os.kill(worker.pid, signal.SIGKILL)
            except OSError:
                pass
        else:
            self.send(worker.wid, Op.INTERRUPT, {"t": task.tid})

    def unwait(self, task: Task) -> None:
        for oid in task.spec.get("d", ()):
            obj = self.objects.get(oid)
            if obj is not None and task in obj.waiting:
                obj.waiting.remove(task)

    def on_log(self, ident: bytes, body: dict, raw) -> None:
        job = body.get("job", b"")
        driver = self.drivers_by_job.get(job)
        if driver is not None:
            self.send(driver, Op.LOG, body)
        elif job in self.job_origins and ident:
            # A forwarded task's output goes to its driver's node, through the head.
            body["to"] = self.job_origins[job]
            self.send_head(Op.LOG, body)


    # ------------------------------------------------------------------ cluster
    def on_registered(self, body: dict, raw) -> None:
        self.cluster_nodes = body.get("nodes", self.cluster_nodes)
        self.pub_seq = body.get("seq", 0)
        if self.sub is None and self.keys is not None and body.get("pub"):
            self.sub = self.ctx.socket(zmq.SUB)
            self.sub.setsockopt(zmq.LINGER, 0)
            self.sub.setsockopt(zmq.RCVHWM, 0)
            self.keys.join(self.sub)
            for topic in (b"node", b"obj"):
                self.sub.setsockopt(zmq.SUBSCRIBE, topic)
            self.sub.connect(body["pub"])
            self.poller.register(self.sub, zmq.POLLIN)

    def on_heartbeat_ack(self, body: dict, raw) -> None:
        if body.get("unknown"):  # the head restarted and forgot us
            self.send_head(Op.REGISTER, self.node_info())
        before = {n["node_id"]: n.get("alive") for n in self.cluster_nodes}
        self.cluster_nodes = body.get("nodes", self.cluster_nodes)
        for node in self.cluster_nodes:
            if before.get(node["node_id"]) and not node.get("alive"):
                self.node_gone(bytes.fromhex(node["node_id"]))

    def alive_nodes(self) -> List[dict]:
        return [n for n in self.cluster_nodes if n.get("alive")]

    def drain_cluster(self, events: dict) -> None:
        if self.transfer in events:
            for _ in range(256):
                try:
                    frames = self.transfer.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                self.serve_pull(frames)
        if self.sub is not None and self.sub in events:
            for _ in range(1000):
                try:
                    frames = self.sub.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                self.on_pub(frames)
        for node_id, sock in list(self.peers.items()):
            if sock in events:
                for _ in range(64):
                    try:
                        frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    self.on_chunk(node_id, frames)

    def on_pub(self, frames: List[bytes]) -> None:
        try:
            op, body, _ = protocol.decode(frames[1:])
        except (protocol.ProtocolError, IndexError) as exc:
            logger.warning("malformed message on the PUB channel: %s", exc)
            return
        seq = body.get("seq", 0)
        if seq <= self.pub_seq:
            return  # already covered by a snapshot
        if seq != self.pub_seq + 1:
            # Missed messages: ask for the state instead of replaying (zguide's Clone).
            logger.info("PUB gap (%d after %d): asking the head for a snapshot", seq,
                        self.pub_seq)
            self.send_head(Op.HEAD_QUERY, {"what": "snapshot"})
        self.pub_seq = seq
        if op == Op.PUB_NODE and body.get("event") == "died":
            self.node_gone(body["node"])
        elif op == Op.PUB_NODE:
            self.send_head(Op.HEAD_QUERY, {"what": "nodes"})  # the new node's entry
        elif op == Op.PUB_OBJECT:
            for oid in body.get("freed", ()):
                self.release_held(oid)
            node = body.get("node")
            for oid in body.get("sealed", ()):
                obj = self.objects.get(oid)
                if obj is not None and obj.where and node not in obj.where:
                    obj.where.append(node)

    def on_head_reply(self, body: dict, raw) -> None:
        if body.get("error"):
            logger.warning("the head answered with an error: %s", body["error"])
        if "nodes" in body and "directory" not in body:
            self.cluster_nodes = body["nodes"]
        if "directory" in body:
            self.pub_seq = max(self.pub_seq, body.get("seq", 0))
            directory = body["directory"]
            for oid, obj in list(self.objects.items()):
                if obj.held_for is not None and oid not in directory:
                    self.release_held(oid)  # freed while we were not listening
            self.cluster_nodes = body.get("nodes", self.cluster_nodes)

    def release_held(self, oid: bytes) -> None:
        obj = self.objects.get(oid)
        if obj is not None and obj.held_for is not None:
            obj.held_for = None
            obj.exported = False  # its owner announced the free already
            self.decref(oid)

    def node_gone(self, node_id: bytes) -> None:
        """A node died: what only it held is lost; what we kept for it is let go."""
        logger.warning("node %s died", node_id.hex()[:8])
        sock = self.peers.pop(node_id, None)
        if sock is not None:
            self.poller.unregister(sock)
            sock.close(0)
        for oid, obj in list(self.objects.items()):
            if obj.held_for == node_id:
                self.release_held(oid)
                continue
            if node_id in obj.where:
                obj.where.remove(node_id)
            pull = obj.pull
            if pull is not None and pull.node == node_id:
                self.abandon_pull(oid, obj)
                self.start_pull(oid, obj)
            elif not obj.where and obj.offset < 0 and obj.pull is None and self.is_remote(obj):
                self.lose(oid, obj, f"the only node holding it ({node_id.hex()[:8]}) died")

    @staticmethod
    def is_remote(obj: Obj) -> bool:
        """Whether the object's bytes are on another node and not (yet) here."""
        if obj.state == READY:
            return obj.kind == ObjectKind.SHARED and obj.offset < 0 and not obj.spilled
        return bool(obj.where) or obj.pull is not None

    def lose(self, oid: bytes, obj: Obj, why: str) -> None:
        err = _system_error(exceptions.ObjectLostError(f"object {oid.hex()} is lost: {why}"))
        obj.where = []
        if obj.state == READY:
            obj.kind, obj.layout, obj.data, obj.offset = ObjectKind.ERROR, [], err, -1
            self.notify(oid, obj)
        else:
            self.seal(oid, obj, ObjectKind.ERROR, [], err, -1, ())

    # -- placement across nodes
    def can_forward(self) -> bool:
        return self.keys is not None

    def forward(self, task: Task, exclude: Optional[bytes] = None) -> None:
        """Hand a task to the head's global scheduler; its RESULT comes back here."""
        spec = task.spec
        frames: List[Any] = []
        body: Dict[str, Any] = {"s": spec, "origin": self.node_id, "inl": {}, "loc": {}}
        fid = spec.get("f")
        if fid:
            blob, path = self.functions.get(fid, (None, None))
            if blob is not None:
                body["fi"], body["path"] = len(frames), path
                frames.append(blob)
        for oid in list(spec.get("d", ())) + list(spec.get("c", ())):
            obj = self.objects.get(oid)
            if obj is None or obj.state != READY:
                continue
            if obj.kind != ObjectKind.SHARED:
                body["inl"][oid] = [int(obj.kind), obj.layout, len(frames)]
                frames.append(obj.data)
            else:
                body["loc"][oid] = list(obj.where) if self.is_remote(obj) else [self.node_id]
                obj.exported = True
        if exclude is not None:
            body["not"] = exclude
        for oid in task.returns:
            obj = self.objects.get(oid)
            if obj is not None:
                obj.exported = True  # the copy kept there goes when it is freed here
        if task.actor is not None and spec.get("new"):
            self.actors.pop(task.actor.aid, None)
            self.anchors.pop(task.actor.anchor, None)
            self.remote_actors.add(task.actor.aid)
            if task.actor.name:
                entry = self.names.get(task.actor.name)
                if entry is not None:
                    entry["remote"] = True
            task.actor = None
        task.state = REMOTE
        self.send_head(Op.FORWARD, body, *frames)

    def on_forward(self, body: dict, raw) -> None:
        """Run a task another node forwarded; send its RESULT back when it ends."""
        spec = body["s"]
        if spec["t"] in self.tasks:
            return
        if "fi" in body:
            self.functions.setdefault(spec["f"], (raw[body["fi"]], body.get("path") or []))
        task = Task(spec, b"")
        task.origin = body["origin"]
        self.tasks[task.tid] = task
        self.job_origins[task.job] = task.origin
        for oid in task.returns:
            obj = self.objects.get(oid)
            if obj is None:
                obj = self.objects[oid] = Obj()
            obj.refs += 1
            obj.held_for = task.origin
        inline = body.get("inl", {})
        located = body.get("loc", {})
        for oid in list(spec.get("d", ())) + list(spec.get("c", ())):
            obj = self.objects.get(oid)
            if obj is None:
                obj = self.objects[oid] = Obj()
                obj.refs += 1
                if oid in inline:
                    kind, layout, index = inline[oid]
                    self.seal(oid, obj, kind, layout, raw[index], -1, ())
                else:
                    obj.where = list(located.get(oid, ()))
            else:
                obj.refs += 1
            task.held.append(oid)
        if "A" in spec:
            if spec.get("new"):
                actor = ActorRec(spec, b"")
                self.actors[actor.aid] = actor
                self.anchors[actor.anchor] = actor
                if spec.get("det"):
                    self.objects[actor.anchor].refs += 1
                for oid in task.held:
                    self.objects[oid].refs += 1
                    actor.held.append(oid)
            else:
                actor = self.actors.get(spec["A"])
                if actor is None or actor.state == "dead":
                    why = actor.cause if actor is not None else "its actor is not on this node"
                    self.finish_with_error(task, exceptions.ActorDiedError(
                        f"cannot call {task.name}: {why}"))
                    return
                actor.queue.append(task)
            task.actor = actor
        for oid in spec.get("d", ()):
            obj = self.objects[oid]
            if obj.state != READY:
                task.deps_left += 1
                obj.waiting.append(task)
                if obj.where and obj.pull is None:
                    self.start_pull(oid, obj)
                elif not obj.where:
                    self.lose(oid, obj, "no node was known to hold it when its task was "
                                        "forwarded")
        if task.deps_left == 0 and task.state == WAITING:
            self.make_ready(task)

    def send_result(self, task: Task) -> None:
        results = []
        frames: List[Any] = []
        for oid in task.returns:
            obj = self.objects.get(oid)
            if obj is None or obj.state != READY:
                continue
            if obj.kind == ObjectKind.SHARED:
                results.append({"o": oid, "k": int(obj.kind), "l": obj.layout, "n": obj.size,
                                "at": 1, "c": obj.contained})
                obj.exported = True
            else:
                results.append({"o": oid, "k": int(obj.kind), "l": obj.layout,
                                "i": len(frames), "c": obj.contained})
                frames.append(obj.data)
        self.send_head(Op.RESULT, {"t": task.tid, "origin": task.origin, "node": self.node_id,
                                   "res": results, "err": task.err}, *frames)
        for oid in task.returns:
            obj = self.objects.get(oid)
            if obj is None or obj.kind == ObjectKind.SHARED:
                continue
            if oid in self.anchors:
                obj.exported = True  # the actor lives until its origin frees the anchor
            else:
                self.release_held(oid)  # its bytes went with the RESULT

    def on_result(self, body: dict, raw) -> None:
        task = self.tasks.get(body["t"])
        if task is None or task.state != REMOTE:
            return
        if body.get("wait"):
            driver = self.drivers_by_job.get(task.job)
            logger.warning(body["msg"])
            if driver is not None:
                self.send(driver, Op.WARN, {"msg": body["msg"]})
            return
        if "fail" in body:
            etype = getattr(exceptions, body["fail"], exceptions.ZrayError)
            self.finish_with_error(task, etype(body.get("msg", "")))
            return
        node = body.get("node")
        for result in body.get("res", ()):
            oid = result["o"]
            obj = self.objects.get(oid)
            if obj is None:
                obj = self.objects[oid] = Obj()  # nobody holds it: it goes once sealed
            obj.exported = True
            if result.get("at"):
                obj.size = int(result["n"])
                obj.where = [node]
                self.seal(oid, obj, ObjectKind.SHARED, result["l"], None, -1, result.get("c", ()))
            else:
                self.seal(oid, obj, result["k"], result["l"], raw[result["i"]], -1,
                          result.get("c", ()))
            if result["k"] == ObjectKind.ERROR:
                self.record_error(task, body.get("err", ""))
        self.finish(task)

    def on_actor_op(self, body: dict, raw) -> None:
        self.on_kill(b"", body, raw)

    # -- object transfer
    def peer(self, node_id: bytes) -> Optional[zmq.Socket]:
        sock = self.peers.get(node_id)
        if sock is not None:
            return sock
        entry = next((n for n in self.cluster_nodes if n.get("node_id") == node_id.hex()), None)
        if entry is None or not entry.get("alive") or not entry.get("transfer"):
            return None
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        self.keys.join(sock)
        sock.connect(entry["transfer"])
        self.poller.register(sock, zmq.POLLIN)
        self.peers[node_id] = sock
        return sock

    def start_pull(self, oid: bytes, obj: Obj) -> None:
        pull = obj.pull or Pull(oid)
        for node_id in obj.where:
            if node_id in pull.tried or node_id == self.node_id:
                continue
            pull.tried.append(node_id)
            sock = self.peer(node_id)
            if sock is None:
                continue
            pull.node = node_id
            obj.pull = pull
            self.pulls[oid] = pull
            self.request_chunk(sock, pull, 0)
            return
        obj.pull = None
        self.pulls.pop(oid, None)
        self.lose(oid, obj, "no alive node holding it could be reached")

    def request_chunk(self, sock: zmq.Socket, pull: Pull, off: int) -> None:
        sock.send_multipart(protocol.encode(Op.PULL, {"o": pull.oid, "off": off,
                                                      "n": CHUNK_BYTES}))
        pull.next_off = off + CHUNK_BYTES

    def abandon_pull(self, oid: bytes, obj: Obj) -> None:
        pull = obj.pull
        if pull is not None and pull.offset >= 0:
            self.allocator.free(pull.offset)
            pull.offset = -1
            pull.size = -1
            pull.got = 0

    def on_chunk(self, node_id: bytes, frames: List[Any]) -> None:
        try:
            op, body, raw = protocol.decode([frames[0].bytes] + frames[1:])
        except (protocol.ProtocolError, IndexError) as exc:
            logger.warning("malformed chunk from node %s: %s", node_id.hex()[:8], exc)
            return
        oid = body.get("o", b"")
        obj = self.objects.get(oid)
        pull = self.pulls.get(oid)
        if obj is None or pull is None or obj.pull is not pull or pull.node != node_id:
            return  # freed or redirected meanwhile
        if body.get("err"):
            logger.info("node %s cannot send %s: %s", node_id.hex()[:8], oid.hex()[:8],
                        body["err"])
            self.abandon_pull(oid, obj)
            self.start_pull(oid, obj)
            return
        kind = body["k"]
        if kind != ObjectKind.SHARED:
            self.land(oid, obj, kind, body["l"], raw[0].bytes, -1)
            return
        if pull.size < 0:
            pull.size = int(body["n"])
            offset = self.allocate(max(1, pull.size))
            if offset is None:
                del self.pulls[oid]
                obj.pull = None
                self.lose(oid, obj, f"this node's store has no room for its {pull.size} bytes")
                return
            pull.offset = offset
            sock = self.peers[node_id]
            while pull.next_off < pull.size and pull.next_off < CHUNK_BYTES * CHUNK_WINDOW:
                self.request_chunk(sock, pull, pull.next_off)
        data = raw[0].buffer if raw else b""
        off = int(body["off"])
        self.arena.view(pull.offset + off, len(data))[:] = data
        pull.got += len(data)
        if pull.next_off < pull.size:
            self.request_chunk(self.peers[node_id], pull, pull.next_off)
        if pull.got >= pull.size:
            self.land(oid, obj, kind, body["l"], None, pull.offset)

    def land(self, oid: bytes, obj: Obj, kind: int, layout: list, data: Any,
             offset: int) -> None:
        """A pulled object is complete here: seal it and serve whoever waited."""
        pull = self.pulls.pop(oid, None)
        obj.pull = None
        obj.where = []
        if pull is not None and kind == ObjectKind.SHARED:
            obj.size = pull.size
        if obj.state == READY:
            obj.kind, obj.layout, obj.data, obj.offset = kind, layout, data, offset
            self.notify(oid, obj)
        else:
            if kind == ObjectKind.SHARED:
                obj.size = pull.size if pull is not None else obj.size
            self.seal(oid, obj, kind, layout, data, offset, ())

    def serve_pull(self, frames: List[bytes]) -> None:
        ident = frames[0]
        try:
            op, body, _ = protocol.decode(frames[1:])
            if op != Op.PULL:
                raise protocol.ProtocolError(f"the transfer socket serves PULL, not {op.name}")
        except (protocol.ProtocolError, IndexError) as exc:
            logger.warning("malformed transfer request: %s", exc)
            return
        oid = body.get("o", b"")
        obj = self.objects.get(oid)
        reply: Dict[str, Any] = {"o": oid}
        try:
            if obj is None or obj.state != READY or self.is_remote(obj):
                raise exceptions.ObjectLostError("not on this node")
            reply.update(k=int(obj.kind), l=obj.layout)
            if obj.kind != ObjectKind.SHARED:
                data = obj.data
            else:
                if obj.spilled and not self.restore(oid, obj):
                    raise exceptions.ObjectStoreFullError("spilled, and no room to restore")
                off = int(body.get("off", 0))
                n = max(0, min(int(body.get("n", CHUNK_BYTES)), obj.size - off))
                reply.update(n=obj.size, off=off)
                data = bytes(self.arena.view(obj.offset + off, n))
            obj.exported = True
        except exceptions.ZrayError as exc:
            reply["err"] = str(exc)
            data = b""
        try:
            self.transfer.send_multipart([ident, *protocol.encode(Op.CHUNK, reply, data)])
        except zmq.ZMQError:
            pass  # the peer left

    # ------------------------------------------------------------------ queries
    def on_query(self, ident: bytes, body: dict, raw) -> None:
        what = body.get("what")
        reply: dict = {"req": body.get("req", 0)}
        if what == "resources":
            reply["total"], reply["available"] = self.cluster_resources()
        elif what == "nodes":
            reply["nodes"] = self.node_table()
        elif what == "errors":
            client = self.clients.get(ident)
            reply["errors"] = list(self.errors.get(client.job if client else b"", ()))
        elif what == "reserve_name":
            name = body["name"]
            taken = self.names.get(name)
            if taken is not None:
                raise ValueError(f"an actor named {name!r} already exists; pick another "
                                 f"name or use zray.get_actor({name!r})")
            self.names[name] = {"aid": body["aid"], "meta": body["meta"],
                                "anchor": body["anchor"]}
        elif what == "actor":
            entry = self.names.get(body["name"])
            if entry is None:
                raise ValueError(f"no live actor is named {body['name']!r}")
            reply.update(entry)
        elif what == "scheduler":
            reply.update(sent_ahead=self.sent_ahead, taken_back=self.taken_back,
                         reserved_used=self.reserved_used,
                         queued=sum(len(q) for q in self.queues.values()))
        elif what == "store":
            reply.update(used=self.allocator.used, capacity=self.allocator.capacity,
                         objects=len(self.objects), spilled=self.spill.spilled_bytes)
        else:
            raise ValueError(f"unknown query {what!r}")
        self.send(ident, Op.QUERY_REPLY, reply)

    def node_table(self) -> List[dict]:
        me = {"node_id": self.node_id.hex(), "alive": True, "address": self.address,
              "node_ip": self.node_ip, "resources": self.resources,
              "available": scheduling.from_units(self.available),
              "store_capacity": self.arena.size, "store_used": self.allocator.used}
        others = [n for n in self.cluster_nodes if n.get("node_id") != me["node_id"]]
        return [me] + others

    def cluster_resources(self):
        total: Dict[str, float] = {}
        available: Dict[str, float] = {}
        for node in self.node_table():
            if not node.get("alive"):
                continue
            for name, amount in node.get("resources", {}).items():
                total[name] = total.get(name, 0) + amount
            for name, amount in node.get("available", {}).items():
                available[name] = available.get(name, 0) + max(0.0, amount)
        available = {k: v for k, v in available.items() if v > 0}
        return total, available

    # ------------------------------------------------------------------ workers
    def _start_template(self) -> subprocess.Popen:
        if self.adopt is not None:
            adopted, self.adopt = _AdoptedTemplate(*self.adopt), None
            return adopted
        log = open(os.path.join(self.session_dir, "logs", f"workers_{self.node_id.hex()[:8]}.log"),
                   "ab")
        env = dict(os.environ)
        env["ZRAY_SESSION_DIR"] = self.session_dir
        proc = subprocess.Popen(
            [sys.executable, "-m", "zray._private.worker_main", "--template",
             "--agent", self.address, "--node", self.node_id.hex()],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env,
            close_fds=True)
        log.close()
        os.set_blocking(proc.stdout.fileno(), False)
        return proc

    def spawn_worker(self) -> None:
        wid = protocol.new_id()
        worker = WorkerRec(wid)
        self.workers[wid] = worker
        self.starting += 1
        try:
            self.template.stdin.write(f"spawn {wid.hex()}\n".encode())
            self.template.stdin.flush()
        except (BrokenPipeError, OSError):
            logger.error("worker template is gone; restarting it")
            self.template = self._start_template()
            self.template_buf = b""
            self.poller.register(self.template.stdout.fileno(), zmq.POLLIN)
            self.template.stdin.write(f"spawn {wid.hex()}\n".encode())
            self.template.stdin.flush()

    def read_template(self) -> None:
        try:
            chunk = os.read(self.template.stdout.fileno(), 65536)
        except BlockingIOError:
            return
        if not chunk:  # the template is gone: the next spawn starts another
            try:
                self.poller.unregister(self.template.stdout.fileno())
            except KeyError:
                pass
            return
        self.template_buf += chunk
        *lines, self.template_buf = self.template_buf.split(b"\n")
        for line in lines:
            parts = line.decode(errors="replace").split()
            if len(parts) >= 3 and parts[0] == "spawned":
                worker = self.workers.get(bytes.fromhex(parts[1]))
                if worker is not None:
                    worker.pid = int(parts[2])
                    self.workers_by_pid[worker.pid] = worker
            elif len(parts) >= 3 and parts[0] == "exited":
                worker = self.workers_by_pid.pop(int(parts[1]), None)
                if worker is not None:
                    self.worker_died(worker, parts[2])

    def worker_died(self, worker: WorkerRec, status: str) -> None:
        self.workers.pop(worker.wid, None)
        self.workers_by_pid.pop(worker.pid, None)
        if worker.state == "starting":
            self.starting = max(0, self.starting - 1)
        worker.state = "dead"
        self.drop_client(worker.wid)
        if worker.actor is not None:
            self.actor_worker_died(worker, worker.actor, status)
            return
        task = worker.task
        if task is None:
            return
        self.release_worker(worker)
        # Tasks sent ahead may have started too (their TASK_DONE can lag): each
        # is treated like the running one.
        lost = [task, *worker.backlog]
        worker.backlog.clear()
        for task in lost:
            task.worker = None
            self.unreserve(task)
            if task.state == FINISHED:
                continue
            if task.cancelled:
                self.finish_with_error(task, exceptions.TaskCancelledError(
                    f"task {task.name} was cancelled (its worker was stopped)"))
            elif task.retries_left > 0:
                task.retries_left -= 1
                task.state = WAITING
                self.make_ready(task)
            else:
                self.finish_with_error(task, exceptions.WorkerCrashedError(
                    f"the worker running task {task.name} (pid {worker.pid}) died ({status}) "
                    f"and no retries were left"))

    # ------------------------------------------------------------------ stop
    def cleanup(self) -> None:
        signal.set_wakeup_fd(-1)
        try:
            self.template.stdin.close()  # the template kills its workers and exits
        except OSError:
            pass
        try:
            self.template.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.template.kill()
            if isinstance(self.template, subprocess.Popen):
                self.template.wait()
        for pid in list(self.workers_by_pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        for sock in [self.sub, self.transfer, *self.peers.values()]:
            if sock is not None:
                sock.close(0)
        if self.guard is not None:
            self.guard.stop()
        self.router.close(0)
        self.head.close(0)
        self.ctx.term()
        self.arena.close()
        self.arena.unlink()
        self.spill.cleanup()
        try:
            os.unlink(self.socket_path)
        except OSError:
            pass


class _AdoptedTemplate:
    """A worker template started next to this agent by whoever started both, handed
    over as two pipe ends.  Not our child: its exit shows as EOF on its stdout."""

    def __init__(self, pid: int, fd_in: int, fd_out: int) -> None:
        self.pid = pid
        self.stdin = os.fdopen(fd_in, "wb")
        self.stdout = os.fdopen(fd_out, "rb", buffering=0)
        os.set_blocking(fd_out, False)

    def wait(self, timeout: float) -> None:
        import select
        deadline = time.monotonic() + timeout
        fd = self.stdout.fileno()
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise subprocess.TimeoutExpired("worker template", timeout)
            if select.select([fd], [], [], left)[0]:
                try:
                    if not os.read(fd, 65536):
                        return
                except BlockingIOError:
                    pass

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except OSError:
            pass


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m zray._private.node")
    parser.add_argument("--template", default="", help="PID,IN_FD,OUT_FD of a started template")
    parser.add_argument("--session-dir", required=True)
    parser.add_argument("--node-id", required=True)
    parser.add_argument("--head", required=True)
    parser.add_argument("--resources", required=True, help="JSON: total resources")
    parser.add_argument("--gpu-ids", default="")
    parser.add_argument("--store-bytes", type=int, required=True)
    parser.add_argument("--parent-pid", type=int, default=0)
    parser.add_argument("--node-ip", default="127.0.0.1")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s node %(levelname)s %(message)s")
    token = os.environ.pop("ZRAY_TOKEN", None)  # never on the command line: ps shows it
    agent = Agent(session_dir=args.session_dir, node_id=bytes.fromhex(args.node_id),
                  head_address=args.head, resources=json.loads(args.resources),
                  gpu_ids=[int(g) for g in args.gpu_ids.split(",") if g],
                  store_bytes=args.store_bytes, parent_pid=args.parent_pid or None,
                  node_ip=args.node_ip, token=token,
                  adopt=tuple(int(x) for x in args.template.split(",")) if args.template else None)
    ready_file = os.path.join(args.session_dir, f"agent_{args.node_id[:8]}.ready")
    with open(ready_file + ".tmp", "w") as f:
        f.write(agent.address)
    os.replace(ready_file + ".tmp", ready_file)
    profile_dir = os.environ.get("ZRAY_PROFILE_DIR")
    if profile_dir:  # a developer's switch: dump the agent's profile at exit
        import cProfile

        cProfile.runctx("agent.serve()", globals(), {"agent": agent},
                        os.path.join(profile_dir, f"agent_{os.getpid()}.prof"))
    else:
        agent.serve()


if __name__ == "__main__":
    main()
