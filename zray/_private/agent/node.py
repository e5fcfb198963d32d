"""The node agent: the sockets, the one poll loop and the one handler table.

::

    driver / workers ──DEALER──▶ ROUTER (ipc, session dir) ─┐
    head ◀──DEALER── REGISTER, HEARTBEAT, FORWARD ...       ├─ one poll loop ─▶ handlers
    peers ──▶ transfer ROUTER (a TCP cluster only)          │   (the parts' on_* verbs)
    worker template ◀─pipe─▶ "spawn" / "exited <pid>"       ┘

The agent builds its parts and joins them with named methods and
listeners (:meth:`Agent.connect_parts`); each part owns one thing:

    objects.ObjectTable   objects, refs, pins, the arena and spilling
    tasks.TaskTable       task records, dependency waits, finish, cancel
    dispatch.Dispatcher   ready queues, workers' EXECUTEs, sending ahead, retries
    workers.WorkerPool    the template and each worker's record
    actors.ActorTable     actors, their calls in order, restarts, names
    cluster.HeadLink      registration and heartbeats with the head, both ways
    cluster.ClusterLink   forwarding, RESULTs, the PUB channel, node deaths (TCP only)
    transfer.Transfer     pulling and serving object bytes between nodes (TCP only)
    wire.Wire             sending, for all of them

Handlers are named after the op they serve; a handler that fails answers
with an ERROR and the loop lives on.  The constructor does no I/O:
:meth:`Agent.start` binds the sockets, makes the arena and starts the
worker template, so a test can build every part without processes.

This package never unpickles anything: arguments, functions and values are
opaque bytes here, decoded only in workers and drivers.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from typing import Any, Dict, List, Optional

import psutil
import zmq

from zray import exceptions
from zray._private import protocol, ratelog, security, validate
from zray._private.agent.actors import ActorTable
from zray._private.agent.bundles import Bundles
from zray._private.agent.cluster import ClusterLink, HeadLink, cluster_resources
from zray._private.agent.dispatch import Dispatcher
from zray._private.agent.jobs import Jobs
from zray._private.agent.objects import ObjectTable
from zray._private.agent.recorder import Recorder, events_limit, parent_of, state_rows
from zray._private.agent.resources import NodeResources
from zray._private.agent.tasks import TaskTable
from zray._private.agent.transfer import Transfer
from zray._private.agent.wire import Wire
from zray._private.agent.workers import WorkerPool
from zray._private.protocol import Op

logger = logging.getLogger("zray.node")

_POLLIN = int(zmq.POLLIN)     # plain ints: pyzmq's flag enums are slow to combine
_NOBLOCK = int(zmq.NOBLOCK)

PARENT_CHECK_INTERVAL = 0.2
DRIVER_CHECK_INTERVAL = 1.0   # how often drivers' processes are looked at (a SIGKILL says no BYE)


class ClientRec:
    """A connected driver or worker."""

    __slots__ = ("ident", "kind", "pid", "job", "started")

    def __init__(self, ident: bytes, kind: str, pid: int, job: bytes) -> None:
        self.ident = ident
        self.kind = kind
        self.pid = pid
        self.job = job
        self.started = process_started(pid)   # tells its pid from a reused one

    def gone(self) -> bool:
        """Whether its process has exited (it may not have said BYE)."""
        return self.started is not None and process_started(self.pid) != self.started


def process_started(pid: int) -> Optional[float]:
    """When process ``pid`` started, or None if there is none (or it is not ours to see)."""
    try:
        return psutil.Process(pid).create_time()
    except (psutil.Error, ValueError):
        return None


class Agent:
    def __init__(self, *, session_dir: str, node_id: bytes, head_address: str,
                 resources: Dict[str, float], gpu_ids: List[int], store_bytes: int,
                 parent_pid: Optional[int], node_ip: str = "127.0.0.1",
                 token: Optional[str] = None, adopt: Optional[tuple] = None) -> None:
        self.session_dir = session_dir
        self.node_id = node_id
        self.node_ip = node_ip
        self.parent_pid = parent_pid
        self.head_address = head_address
        self.address = f"ipc://{session_dir}/zray_agent_{node_id.hex()[:8]}.sock"
        self.socket_path = self.address[len("ipc://"):]
        self.store_name = f"zray_{os.path.basename(session_dir)[-12:]}_{node_id.hex()[:8]}"
        # Over TCP (a cluster from `zray head`) every socket speaks CURVE with the
        # cluster's keys; an embedded session stays on ipc and has no peers.
        self.keys = security.Keys(token) if token else None
        if head_address.startswith("tcp://") and self.keys is None:
            raise ValueError("joining a head over TCP needs the cluster token")
        self.clients: Dict[bytes, ClientRec] = {}
        self.running = True

        self.wire = Wire()
        self.resources = NodeResources(resources, gpu_ids)
        self.objects = ObjectTable(store_bytes, self.wire)
        self.tasks = TaskTable(self.objects, self.wire, node_id)
        self.workers = WorkerPool(session_dir=session_dir, node_id=node_id,
                                  agent_address=self.address, resources=self.resources,
                                  wire=self.wire, adopt=adopt)
        self.dispatcher = Dispatcher(self.tasks, self.objects, self.workers, self.resources,
                                     self.wire)
        self.actors = ActorTable(self.tasks, self.objects, self.workers, self.dispatcher,
                                 self.wire, node_id)
        self.head = HeadLink(self.wire, self.node_info, self.load_info)
        self.bundles = Bundles(node_id, self.resources, self.tasks, self.actors,
                               self.dispatcher, self.head, self.wire)
        self.recorder = Recorder(node_id, self.wire, self.objects, events_limit())
        self.jobs = Jobs(self.tasks, self.actors, self.wire, self.clients, self.drop_client,
                         clustered=self.keys is not None)
        self.transfer: Optional[Transfer] = None
        self.cluster: Optional[ClusterLink] = None
        if self.keys is not None:
            self.transfer = Transfer(node_id, self.objects, lambda: self.head.nodes)
            self.cluster = ClusterLink(node_id=node_id, head=self.head, objects=self.objects,
                                       tasks=self.tasks, actors=self.actors,
                                       resources=self.resources, transfer=self.transfer,
                                       wire=self.wire)
        self.connect_parts()
        self.handlers = self.client_handlers()
        self.head_handlers = self.from_head_handlers()
        self.ctx: Any = None
        self.poller: Any = None
        self.guard: Any = None
        self.router: Any = None
        self.head_sock: Any = None
        self.template_fd = -1
        self.wake_r = self.wake_w = -1

    def connect_parts(self) -> None:
        """Join the parts: each hears of the others' events through these."""
        tasks, objects, actors, dispatcher = self.tasks, self.objects, self.actors, self.dispatcher
        objects.on_waiter_ready = tasks.dependency_ready
        objects.freed_listeners.append(actors.object_freed)
        tasks.enqueue = dispatcher.enqueue
        tasks.dequeue = dispatcher.dequeue
        tasks.missing = dispatcher.missing
        tasks.interrupt = dispatcher.interrupt
        tasks.admit_actor_task, tasks.admit_leased = actors.admit, dispatcher.leases.admit
        tasks.call_ready = actors.call_ready
        dispatcher.on_actor_started = actors.started
        dispatcher.group_missing = self.bundles.group_missing
        recorder = self.recorder
        if recorder.enabled:
            tasks.on_submitted = lambda task: recorder.submitted(
                task, parent_of(self.workers.get(task.owner)))
            tasks.on_finished = recorder.finished
            dispatcher.on_running = actors.on_running = dispatcher.leases.on_running = \
                recorder.running
        recorder.snapshot_parts = lambda: state_rows(
            self.node_id, self.clients.values(), self.workers.workers.values(),
            self.actors.actors.values())
        recorder.ask_head = self.head.request
        actors.ask_head = self.head.request
        self.workers.on_worker_died = self.worker_died
        self.workers.on_template_restarted = self.watch_template
        cluster = self.cluster
        if cluster is not None:
            objects.puller = self.transfer
            objects.freed_listeners.append(cluster.object_freed)
            self.transfer.on_copied = cluster.object_copied
            objects.freed_listeners.append(tasks.result_freed)
            objects.rebuild = tasks.rebuild
            objects.ask_owner = cluster.rebuilds.ask
            objects.on_wanted_ready = cluster.rebuilds.ready
            tasks.forward = cluster.forward
            tasks.on_forwarded_finished = cluster.send_result
            tasks.on_forwarded_yielded = cluster.send_items
            dispatcher.offload = cluster.offload
            actors.kill_remote = cluster.kill_remote
            self.head.on_registered = cluster.registered
            self.head.on_node_died = cluster.node_gone
            self.head.on_other_reply = cluster.on_head_reply
            self.head.on_silent = cluster.head_silent
            cluster.subscribe = self.subscribe

    def client_handlers(self) -> dict:
        objects, tasks, actors = self.objects, self.tasks, self.actors
        return {
            Op.HELLO: self.on_hello, Op.BYE: self.on_bye, Op.QUERY: self.on_query,
            Op.LOG: self.on_log, Op.TASK_DONE: self.on_task_done, Op.YIELDED: tasks.on_yielded,
            Op.BLOCKED: self.on_blocked, Op.UNBLOCKED: self.on_unblocked,
            Op.ADDREF: objects.on_addref, Op.DECREF: objects.on_decref,
            Op.FETCH: objects.on_fetch, Op.PUT: objects.on_put, Op.ALLOC: objects.on_alloc,
            Op.SEAL: objects.on_seal, Op.ABORT: objects.on_abort, Op.PIN: objects.on_pin,
            Op.UNPIN: objects.on_unpin,
            Op.EXPORT: tasks.on_export, Op.SUBMIT: self.on_submit, Op.CANCEL: tasks.on_cancel,
            Op.KILL: actors.on_kill, Op.RESERVE_NAME: actors.on_reserve_name,
            Op.PG_REQUEST: self.bundles.on_request, Op.RELEASED: self.dispatcher.leases.on_released,
        }

    def from_head_handlers(self) -> dict:
        handlers = {Op.REGISTERED: self.head.on_registered_msg,
                    Op.HEARTBEAT_ACK: self.head.on_heartbeat_ack,
                    Op.HEAD_REPLY: self.head.on_head_reply,
                    Op.COLLECT: self.recorder.on_collect,
                    Op.JOB_ENDED: self.jobs.ended, **self.bundles.head_handlers(),
                    Op.LOG: lambda body, raw: self.on_log(b"", body, raw)}
        cluster = self.cluster
        if cluster is not None:
            handlers.update({
                Op.FORWARD: cluster.on_forward, Op.RESULT: cluster.on_result,
                Op.TASK_FAILED: cluster.on_task_failed,
                Op.TASK_UNPLACEABLE: cluster.on_task_unplaceable,
                Op.KILL_ACTOR: cluster.on_kill_actor, Op.REBUILD: cluster.rebuilds.on_rebuild,
                Op.REBUILT: cluster.rebuilds.on_rebuilt})
        return handlers

    # ------------------------------------------------------------------ start/stop
    def start(self) -> None:
        """Bind the sockets, make the store, start the worker template."""
        self.objects.open_store(self.store_name, self.session_dir)
        self.recorder.open_output(os.path.join(
            self.session_dir, "logs", f"tasks_{self.node_id.hex()[:8]}.out"))
        self.ctx = zmq.Context()
        self.poller = zmq.Poller()
        if self.keys is not None:
            self.guard = security.Guard(self.ctx, self.keys, f"node {self.node_id.hex()[:8]}")
            self.transfer.bind(self.ctx, self.keys, self.poller, self.node_ip)
            self.guard.watch(self.transfer.router)
        router = self.router = self.ctx.socket(zmq.ROUTER)
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        router.setsockopt(zmq.SNDHWM, 0)
        router.setsockopt(zmq.RCVHWM, 0)
        router.setsockopt(zmq.LINGER, 0)
        old_umask = os.umask(0o077)
        try:
            router.bind(self.address)
        finally:
            os.umask(old_umask)
        head = self.head_sock = self.ctx.socket(zmq.DEALER)
        head.setsockopt(zmq.IDENTITY, self.node_id)
        head.setsockopt(zmq.LINGER, 0)
        head.setsockopt(zmq.SNDHWM, 1000)
        head.setsockopt(zmq.RECONNECT_IVL, 10)
        if self.keys is not None:
            self.keys.join(head)
        head.connect(self.head_address)
        self.wire.attach(router, head)
        self.poller.register(router, zmq.POLLIN)
        self.poller.register(head, zmq.POLLIN)
        self.watch_template(self.workers.start())
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        self.poller.register(self.wake_r, zmq.POLLIN)
        signal.set_wakeup_fd(self.wake_w)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self.on_signal)

    def watch_template(self, fd: int) -> None:
        self.template_fd = fd
        self.poller.register(fd, zmq.POLLIN)

    def subscribe(self, pub_address: str) -> None:
        old = self.cluster.sub
        if old is not None:  # a restarted head publishes on a new port
            self.poller.unregister(old)
            old.close(0)
        sub = self.ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVHWM, 0)
        self.keys.join(sub)
        for topic in (protocol.TOPIC_NODE, protocol.TOPIC_OBJECT):
            sub.setsockopt(zmq.SUBSCRIBE, topic)
        sub.connect(pub_address)
        self.poller.register(sub, zmq.POLLIN)
        self.cluster.sub = sub

    def on_signal(self, signum, frame) -> None:
        self.running = False

    def cleanup(self) -> None:
        signal.set_wakeup_fd(-1)
        self.recorder.close_output()
        self.workers.stop()
        if self.cluster is not None and self.cluster.sub is not None:
            self.cluster.sub.close(0)
        if self.transfer is not None:
            self.transfer.close()
        if self.guard is not None:
            self.guard.stop()
        self.router.close(0)
        self.head_sock.close(0)
        self.ctx.term()
        self.objects.close_store()
        try:
            os.unlink(self.socket_path)
        except OSError:
            pass

    # ------------------------------------------------------------------ loop
    def serve(self) -> None:
        """The one loop: read, handle, dispatch, flush, beat; until told to stop."""
        poller, router, wire = self.poller, self.router, self.wire
        self.head.start(time.monotonic())
        self.workers.want(min(4, self.resources.cpus()))
        next_parent = time.monotonic() + PARENT_CHECK_INTERVAL
        next_drivers = time.monotonic() + DRIVER_CHECK_INTERVAL
        try:
            while self.running:
                events = dict(poller.poll(100))
                if router in events:
                    # EVENTS before each read: a zmq.Again per pass costs more.
                    for _ in range(2000):
                        if not router.get(zmq.EVENTS) & _POLLIN:
                            break
                        self.handle(router.recv_multipart(_NOBLOCK, copy=False))
                    if wire.outgoing:
                        wire.flush_outgoing()  # results first: their callers wait
                if self.head_sock in events:
                    self.drain_head()
                if self.cluster is not None:
                    self.drain_cluster(events)
                if self.template_fd in events and not self.workers.read_template():
                    self.poller.unregister(self.template_fd)  # the next spawn restarts it
                    self.template_fd = -1
                if self.wake_r in events:
                    os.read(self.wake_r, 512)
                self.dispatch()
                if wire.outgoing:
                    wire.flush_outgoing()
                now = time.monotonic()
                self.head.tick(now)
                self.recorder.tick(now)
                self.workers.tick(now)
                self.objects.tick(now)
                if now >= next_parent:
                    next_parent = now + PARENT_CHECK_INTERVAL
                    if self.parent_pid and os.getppid() != self.parent_pid:
                        logger.info("parent %s gone; node agent exits", self.parent_pid)
                        break
                if now >= next_drivers:
                    next_drivers = now + DRIVER_CHECK_INTERVAL
                    self.jobs.check_drivers()
        finally:
            self.cleanup()

    def dispatch(self) -> None:
        try:
            self.actors.pump_ready()
            self.dispatcher.dispatch()
        except Exception as exc:  # the loop lives on; one line a second, not one a pass
            ratelog.limited(logger).warning("dispatch", f"dispatch failed: "
                                            f"{type(exc).__name__}: {exc}", exc)
        if self.cluster is not None:
            self.cluster.flush()

    def handle(self, frames: List[Any]) -> None:
        ident = frames[0].bytes
        op, body = None, {}
        try:
            op, body, raw = protocol.decode([frames[1].buffer] + frames[2:])
            handler = self.handlers.get(op) or validate.unserved(op, "the node agent")
            validate.check(op, body, raw)  # a refused message is refused whole: nothing runs
        except (protocol.ProtocolError, IndexError) as exc:
            ratelog.limited(logger).refused(op, ident.hex()[:8], exc)
            self.wire.send(ident, Op.ERROR, protocol.error_body(validate.req_of(body), exc))
            return
        try:
            handler(ident, body, raw)
        except Exception as exc:
            if not isinstance(exc, (ValueError, exceptions.ZrayError, protocol.ProtocolError)):
                ratelog.limited(logger).failed(op, exc)
                exc = exceptions.ZrayError(f"{op.name} failed: {type(exc).__name__}: {exc}")
            self.wire.send(ident, Op.ERROR, protocol.error_body(validate.req_of(body), exc))

    def drain_head(self) -> None:
        self.head.heard(time.monotonic())
        while True:
            try:
                frames = self.head_sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            op, body = None, {}
            try:
                op, body, raw = protocol.decode(frames)
                handler = self.head_handlers.get(op) or validate.unserved(op, "a node agent")
                validate.check(op, body, raw)
            except protocol.ProtocolError as exc:
                ratelog.limited(logger).refused(op, "the head", exc)
                if op is Op.HEAD_REPLY and validate.req_of(body) in self.head.pending:
                    self.head.on_head_reply({"req": body["req"], "error": f"refused: {exc}"}, [])
                continue
            try:
                handler(body, list(raw))
            except Exception as exc:
                ratelog.limited(logger).failed(op, exc)

    def drain_cluster(self, events: dict) -> None:
        self.transfer.drain(events)
        sub = self.cluster.sub
        if sub is not None and sub in events:
            self.cluster.drain_sub()

    # ------------------------------------------------------------------ clients
    def on_hello(self, ident: bytes, body: dict, raw) -> None:
        kind = body.get("kind")
        if kind not in ("driver", "worker"):
            raise ValueError(f"unknown client kind {kind!r}")
        client = ClientRec(ident, kind, int(body.get("pid", 0)), body.get("job_id", b""))
        if kind == "worker":
            self.workers.hello(ident, client.pid)
        else:
            self.wire.drivers[client.job] = ident
        self.clients[ident] = client
        self.objects.add_client(ident)
        self.wire.send(ident, Op.WELCOME, {
            "node_id": self.node_id, "arena": self.objects.arena.name,
            "arena_size": self.objects.arena.size, "session_dir": self.session_dir,
            "pid": os.getpid(), "ip": self.node_ip})

    def on_bye(self, ident: bytes, body: dict, raw) -> None:
        client = self.clients.get(ident)
        if client is not None and client.kind == "driver":
            self.jobs.end(client, "its driver disconnected")
        else:
            self.drop_client(ident)

    def drop_client(self, ident: bytes) -> None:
        client = self.clients.pop(ident, None)
        if client is None:
            return
        self.objects.drop_client(ident)
        self.dispatcher.leases.client_gone(ident)
        if client.kind == "driver" and self.wire.drivers.get(client.job) == ident:
            del self.wire.drivers[client.job]

    def on_submit(self, ident: bytes, body: dict, raw) -> None:
        if ident not in self.clients:
            raise ValueError("submit before hello")
        self.tasks.on_submit(ident, body, raw)

    def on_log(self, ident: bytes, body: dict, raw) -> None:
        if ident:
            self.recorder.task_output(body)  # also kept in the node's logs
        if self.wire.tell_driver(body.get("job_id", b""), Op.LOG, body):
            return
        if ident and self.cluster is not None:
            self.cluster.route_log(body)

    # ------------------------------------------------------------------ workers
    def on_task_done(self, ident: bytes, body: dict, raw) -> None:
        worker = self.workers.get(ident)
        if worker is None:
            return
        for done, frames in protocol.unpack_batch(body, raw):
            try:
                if worker.actor is not None:
                    self.actors.call_done(worker, done, frames)
                else:
                    self.dispatcher.task_done(worker, done, frames)
            except Exception:
                logger.exception("TASK_DONE from %s failed", ident.hex()[:8])

    def on_blocked(self, ident: bytes, body: dict, raw) -> None:
        worker = self.workers.get(ident)
        if worker is not None:
            self.dispatcher.blocked(worker)

    def on_unblocked(self, ident: bytes, body: dict, raw) -> None:
        worker = self.workers.get(ident)
        if worker is not None:
            self.dispatcher.unblocked(worker)

    def worker_died(self, worker: Any, status: str) -> None:
        self.drop_client(worker.wid)
        if worker.actor is not None:
            self.actors.worker_died(worker, status)
        else:
            self.dispatcher.worker_died(worker, status)

    # ------------------------------------------------------------------ queries
    def node_info(self) -> dict:
        """REGISTER: what this node is, and (for a head that restarted) what it has."""
        return {"node_id": self.node_id, "ip": self.node_ip, "address": self.address,
                "resources": self.resources.declared,
                "store_capacity": self.objects.capacity, "pid": os.getpid(),
                "transfer_address": self.transfer.address if self.transfer else "",
                "hostname": socket.gethostname(), "actors": self.actors.registry(),
                "holds": [oid for oid, obj in self.objects.all()
                          if obj.exported and obj.state.name == "READY" and not obj.where],
                "lineage": list(self.tasks.lineage)}

    def load_info(self) -> dict:
        return {"node_id": self.node_id, "available": self.resources.as_amounts(),
                "store_used": self.objects.used, "queued": self.dispatcher.queued(),
                "running": self.workers.busy(), "workers": len(self.workers.workers),
                "actors": self.actors.alive()}

    def node_table(self) -> List[dict]:
        me = {"node_id": self.node_id.hex(), "alive": True, "address": self.address,
              "node_ip": self.node_ip, "resources": self.resources.declared,
              "available": self.resources.as_amounts(),
              "store_capacity": self.objects.capacity, "store_used": self.objects.used}
        return self.head.node_table(me)

    def on_query(self, ident: bytes, body: dict, raw) -> None:
        what = body.get("what")
        reply: dict = {"req": body.get("req", 0)}
        if what == "resources":
            reply["total"], reply["available"] = cluster_resources(self.node_table())
        elif what == "nodes":
            reply["nodes"] = self.node_table()
        elif what == "errors":
            client = self.clients.get(ident)
            reply["errors"] = self.tasks.errors_of(client.job if client else b"")
        elif what in ("actor", "named_actors"):
            self.actors.look_up(ident, body)  # the head knows the cluster's names
            return
        elif what == "scheduler":
            reply.update(self.dispatcher.stats())
        elif what == "store":
            reply.update(self.objects.stats())
        elif what == "head":
            reply.update(self.head.status())
        elif what == "state":
            self.recorder.on_state_query(ident, body, lambda answer: self.wire.send(
                ident, Op.QUERY_REPLY, dict(answer, req=reply["req"])))
            return
        else:
            raise ValueError(f"unknown query {what!r}")
        self.wire.send(ident, Op.QUERY_REPLY, reply)
