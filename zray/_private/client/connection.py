"""``Client``: the one object the rest of zray uses to talk to its node agent.

A facade over the three parts of the package (see its docstring for the
data flow): it joins the transport, the outbox and the object cache with a
few named calls, and gives the API (``zray``, actors, remote functions,
ObjectRef) and the worker loop public verbs: ``submit``, ``put``, ``get``,
``wait_objects``, ``cancel``, ``kill_actor``, ``reserve_name``, ``log``,
``task_done``, ``blocked``/``unblocked``, ``query``, ``spec_namespace`` ...
It owns no socket, queue or table itself, and holds no worker state: a
worker registers its handlers with :meth:`Client.listen` and its blocking
hook as ``wait_hook`` (a worker's namespace is read from the task it runs,
through ``zray.runtime_context``).
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from zray import exceptions
from zray._private import ids, protocol, serialization
from zray._private.client.arguments import encode_args
from zray._private.client.direct import DirectCalls
from zray._private.client.objects import Descriptor, ObjectCache, PinEntry
from zray._private.client.transport import ConnectionLost, Handler, Transport
from zray._private.names import anonymous_namespace
from zray._private.protocol import ObjectKind, Op
from zray.object_ref import ObjectRef

logger = logging.getLogger("zray")

_encode = protocol.encode


class Client:
    """A driver's or worker's connection to its node agent."""

    def __init__(self, agent_address: str, kind: str, *, identity: Optional[bytes] = None,
                 job_id: Optional[bytes] = None, agent_pid: Optional[int] = None) -> None:
        self.kind = kind                          # "driver" or "worker"
        self.identity = identity or ids.new_id()
        self.agent_address = agent_address
        self.job_id = job_id or ids.new_id()
        self.arena: Any = None
        #: The namespace ``init`` set for this driver's job; None: the job's own
        #: anonymous namespace, ``"anonymous-" + job_id.hex()``.
        self.namespace: Optional[str] = None
        #: False: lines printed by this job's tasks are dropped, not printed here.
        self.log_to_driver = True
        #: Called before a blocking get/wait; returns what to call after it (or None).
        self.wait_hook: Optional[Callable[[], Optional[Callable[[], None]]]] = None
        self._exported: set = set()
        self.objects = ObjectCache(pin_at_agent=self.pin, give_back=self._give_back,
                                   attach_arena=self.attach_arena, release=self._let_go)
        self.transport = Transport(agent_address, self.identity, kind=kind,
                                   agent_pid=agent_pid, unpin_due=self.objects.unpin_due,
                                   reading_wanted=self.objects.has_callbacks)
        self.outbox = self.transport.outbox
        self.transport.on(Op.OBJECT, self._on_object)
        self.transport.on(Op.LOG, self._on_log)
        self.transport.on(Op.WARN, lambda body, raw: logger.warning(
            "zray: %s", body.get("message", "")))
        self.transport.on_lost(self.objects.release_waiters)
        self.direct = DirectCalls(self.transport, agent_address, self.objects.arrived,
                                  self.objects.has, self._when_ready)
        self.transport.on(Op.ACTOR_DIRECT, self.direct.on_offer)
        self.transport.on(Op.LEASE, self.direct.on_lease)

    # ------------------------------------------------------------------ state
    @property
    def welcome(self) -> Dict[str, Any]:
        return self.transport.welcome

    @property
    def node_id(self) -> bytes:
        return self.transport.welcome.get("node_id", b"")

    @property
    def closed(self) -> bool:
        return self.transport.closed

    def spec_namespace(self) -> Optional[str]:
        """The namespace to put in the specs this process submits, or None (the
        job's anonymous one).  A driver's is the one ``init`` set; a worker's is
        that of the task or actor it runs, so nested work stays in it."""
        if self.kind == "driver":
            return self.namespace
        from zray.runtime_context import running_namespace

        return running_namespace()

    @property
    def lost(self) -> Optional[str]:
        return self.transport.lost

    # ------------------------------------------------------------------ start/stop
    def connect(self, timeout: float = 10.0, pid: Optional[int] = None) -> None:
        transport = self.transport
        transport.start()
        self.send(_encode(Op.HELLO, {"kind": self.kind, "pid": pid or os.getpid(),
                                     "job_id": self.job_id}))
        if not transport.wait_until(lambda: bool(transport.welcome) or transport.lost is not None,
                                    time.monotonic() + timeout, raise_if_lost=False):
            self.close()
            raise ConnectionError(
                f"no answer from the zray node agent at {self.agent_address} within {timeout:.0f}s")
        if transport.lost:
            raise ConnectionLost(transport.lost)
        if self.kind == "driver" and transport.welcome.get("arena"):
            self.attach_arena().keep_warm()   # a driver's puts find its pages mapped

    def close(self) -> None:
        self.transport.close()

    # ------------------------------------------------------------------ messaging
    def send(self, frames: List[Any]) -> None:
        """Send a message now, after everything queued before it."""
        self.outbox.send(frames)

    def flush(self, releases: bool = False) -> None:
        """Send the queued items now (and the ref releases, if asked)."""
        self.outbox.flush(releases)

    def listen(self, op: Op, handler: Handler, *, after_read: bool = False) -> None:
        """Handle each ``op`` from the agent with ``handler(body, raw)`` (see Transport.on)."""
        self.transport.on(op, handler, after_read=after_read)

    def wait_until(self, done: Callable[[], bool], timeout: Optional[float] = None) -> bool:
        """Read and dispatch messages until ``done()``; False on timeout or a lost connection."""
        deadline = None if timeout is None else time.monotonic() + timeout
        return self.transport.wait_until(done, deadline, raise_if_lost=False)

    def receive_pending(self) -> None:
        """Dispatch what has arrived, without waiting."""
        self.transport.receive_pending()

    def side_socket(self, kind: int, handler: Callable[[List[Any]], None]) -> Any:
        """A socket read with the agent's (see Transport.add_socket)."""
        return self.transport.add_socket(kind, handler)

    def send_on(self, sock: Any, frames: List[Any]) -> bool:
        return self.transport.send_on(sock, frames)

    def request(self, op: Op, body: dict, *raw: Any,
                timeout: float = 60.0) -> Tuple[Op, dict, Sequence[Any]]:
        """Send a request, wait for its reply; an ERROR reply is raised as its exception."""
        if op == Op.PIN or op == Op.ALLOC:
            self.outbox.flush(True)  # store space we no longer use goes back first
        return self.transport.request(op, body, *raw, timeout=timeout)

    def query(self, what: str, **extra: Any) -> dict:
        _, body, _ = self.request(Op.QUERY, {"what": what, **extra})
        return body

    def reserve_name(self, name: str, actor_id: bytes, anchor: bytes, meta: dict, *,
                     namespace: Optional[str] = None,
                     get_if_exists: bool = False) -> Optional[dict]:
        """Claim ``name`` in ``namespace`` (None: this job's) for an actor about to be
        created.  Returns None when the name is now its, or the entry of the actor
        holding it when ``get_if_exists``; raises ValueError if it is taken."""
        _, reply, _ = self.request(Op.RESERVE_NAME, {
            "namespace": namespace or anonymous_namespace(self.job_id), "name": name,
            "actor_id": actor_id, "anchor": anchor, "meta": meta,
            "get_if_exists": get_if_exists})
        return reply.get("existing")

    def cancel(self, task_id: bytes, force: bool = False) -> None:
        self.send(_encode(Op.CANCEL, {"task_id": task_id, "force": force}))

    def kill_actor(self, actor_id: bytes, no_restart: bool = True) -> None:
        self.direct.close(actor_id)  # later calls go the agent's way: it knows of the kill
        self.send(_encode(Op.KILL, {"actor_id": actor_id, "no_restart": no_restart}))

    def log(self, job_id: bytes, name: str, lines: List[str], *, stderr: bool = False) -> None:
        """Lines a task printed, for the driver of its job."""
        self.send(_encode(Op.LOG, {"job_id": job_id, "name": name, "pid": os.getpid(),
                                   "stderr": stderr, "lines": lines}))

    def task_done(self, body: dict, frames: List[Any], lazy: bool = False) -> None:
        """A finished task (``protocol.TaskDone``); queued, so quick ones go back
        together (``lazy``: see Outbox.task_done)."""
        self.outbox.task_done(body, frames, lazy)

    def yielded(self, body: dict, frames: List[Any]) -> None:
        """A generator task's next item (``protocol.TaskDone`` fields), sent at once."""
        self.send(_encode(Op.YIELDED, body, *frames))

    def blocked(self) -> None:
        """This worker waits in get/wait: its agent may lend its CPU."""
        self.send(_encode(Op.BLOCKED, {}))

    def unblocked(self) -> None:
        self.send(_encode(Op.UNBLOCKED, {}))

    # ------------------------------------------------------------------ receiving
    def _on_object(self, body: dict, raw: Sequence[Any]) -> None:
        arrived = self.objects.arrived
        defer = self.transport.defer
        for one, frames in protocol.unpack_batch(body, raw):
            callbacks = arrived(one, frames)
            if callbacks:
                for callback in callbacks:
                    defer(callback)

    def _on_log(self, body: dict, raw: Sequence[Any]) -> None:
        if self.log_to_driver:
            self._print_log(body, raw)

    @staticmethod
    def _print_log(body: dict, raw: Sequence[Any]) -> None:
        prefix = f"({body.get('name', '?')} pid={body.get('pid', '?')}) "
        stream = sys.stderr if body.get("stderr") else sys.stdout
        try:
            stream.write("".join(prefix + line + "\n" for line in body.get("lines", ())))
            stream.flush()
        except Exception:
            pass

    # ------------------------------------------------------------------ refs
    def add_local_ref(self, oid: bytes, announce: bool = True) -> None:
        if self.objects.add_ref(oid) and announce and not self.transport.closed:
            self.outbox.addref(oid)

    def remove_local_ref(self, oid: bytes) -> None:
        if self.objects.remove_ref(oid) and not self.transport.closed:
            self.outbox.decref(oid)

    def local_ref_count(self) -> int:
        return self.objects.ref_count()

    # ------------------------------------------------------------------ objects
    def attach_arena(self) -> Any:
        if self.arena is None:
            from zray._private.object_store import Arena
            self.arena = Arena.attach(self.welcome["arena"])
        return self.arena

    def pin(self, oid: bytes) -> int:
        """Pin a shared object at the agent; returns where its bytes are now."""
        _, body, _ = self.request(Op.PIN, {"object_id": oid})
        return body["offset"]

    def _let_go(self, oid: bytes) -> None:
        """Drop the ref the agent holds for this process on a pushed object."""
        if not self.transport.closed:
            self.outbox.decref(oid)

    def _give_back(self, oid: bytes, pin: PinEntry) -> None:
        if not self.transport.closed:
            self.outbox.unpin(oid, pin)

    def allocate(self, oid: bytes, size: int) -> int:
        """Reserve arena space for a large object; returns its offset."""
        self.attach_arena()
        _, body, _ = self.request(Op.ALLOC, {"object_id": oid, "size": size})
        return body["offset"]

    def put(self, value: Any) -> ObjectRef:
        ser = serialization.serialize(value, "the value passed to put()")
        return self.put_new(ser)

    def put_new(self, ser: serialization.Serialized) -> ObjectRef:
        """Store a serialized value as a new object; returns the ref to it."""
        oid = ids.object_id(ids.new_id(), 0)
        ref = ObjectRef(oid, _held=True)
        self.put_serialized(ser, oid)
        return ref

    def put_serialized(self, ser: serialization.Serialized, oid: bytes) -> None:
        """Store a serialized value under ``oid`` (this process holds a ref already)."""
        if ser.size <= protocol.INLINE_THRESHOLD:
            data = ser.to_bytes()
            self.outbox.put([oid, ser.layout, ser.contained], data)
            desc = Descriptor(ObjectKind.INLINE, ser.layout, data)
        else:
            offset = self.allocate(oid, ser.size)
            try:
                ser.write_into(self.arena.view(offset, ser.size))
            except BaseException:
                self.send(_encode(Op.ABORT, {"object_id": oid}))
                raise
            self.send(_encode(Op.SEAL, {"object_id": oid, "offset": offset, "size": ser.size,
                                        "layout": ser.layout, "contained": ser.contained}))
            desc = Descriptor(ObjectKind.SHARED, ser.layout, None, offset)
        self.objects.keep(oid, desc)

    def wait_objects(self, oids: Sequence[bytes], num_ready: int,
                     timeout: Optional[float], *, pin: bool = False,
                     stop_on_error: bool = False) -> bool:
        """Block until ``num_ready`` of ``oids`` are here; False on timeout.

        With ``pin`` (a get about to read them), the agent pins the shared
        ones it sends, which saves each read its PIN round trip.  With
        ``stop_on_error`` the wait also ends (True) when one of them arrives
        as a failure.  A ``timeout`` of 0 only looks at what is here already
        (the I/O thread takes in pushed results while nobody reads).
        """
        if len(oids) == 1 and num_ready == 1 and self.objects.has(oids[0]):
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        transport = self.transport
        waiter, new = self.objects.watch(oids, num_ready)
        if waiter is None:
            return True
        if stop_on_error:
            def done() -> bool:
                return waiter.needed <= 0 or waiter.failed
        else:
            def done() -> bool:
                return waiter.needed <= 0
        try:
            transport.raise_if_lost()
            if new:
                self.send(_encode(Op.FETCH, {"object_ids": new, "pin": True} if pin
                                  else {"object_ids": new}))
            if timeout is not None and timeout <= 0:
                return done()  # a look, not a wait: nothing to lend the agent
            hook = self.wait_hook
            after = hook() if hook is not None else None
            try:
                if not transport.wait_until(done, deadline):
                    return False
                transport.raise_if_lost()
                return True
            finally:
                if after is not None:
                    after()
        finally:
            if waiter.needed > 0:
                self.objects.unwatch(oids, waiter)

    def get(self, refs: Sequence[ObjectRef], timeout: Optional[float]) -> List[Any]:
        """The values of ``refs``; the first failure among them is raised as
        soon as it is here, without waiting for the others."""
        oids = [r._id for r in refs]
        objects = self.objects
        try:
            failed = objects.first_failure(oids)
            if failed is None:
                ready = self.wait_objects(oids, len(oids), timeout, pin=True,
                                          stop_on_error=True)
                failed = objects.first_failure(oids)
                if failed is None and not ready:
                    raise exceptions.GetTimeoutError(
                        f"get timed out after {timeout}s: {sum(not objects.has(o) for o in oids)}"
                        f" of {len(oids)} objects not ready")
            lookup = objects.lookup
            if failed is not None:
                objects.materialize(failed, lookup(failed))  # raises the failure
            return [objects.materialize(oid, lookup(oid)) for oid in oids]
        finally:
            objects.release_fetch_pins(oids)

    def is_ready(self, oid: bytes) -> bool:
        return self.objects.has(oid)

    def materialize(self, oid: bytes, desc: Descriptor) -> Any:
        return self.objects.materialize(oid, desc)

    def adopt_pins(self, args: Sequence[dict]) -> list:
        """Take over the pins of an EXECUTE's arguments (see ObjectCache.adopt_pins)."""
        return self.objects.adopt_pins(args)

    def release_pins(self, adopted: list) -> None:
        self.objects.release_pins(adopted)

    def future_of(self, ref: ObjectRef) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        oid = ref._id
        objects = self.objects
        transport = self.transport

        def resolve() -> None:
            desc = objects.lookup(oid)
            if desc is not None and desc.kind == ObjectKind.SHARED and transport.is_io_thread():
                # Reading a shared object may need a round trip: not on the
                # thread that watches the connection.
                threading.Thread(target=resolve, daemon=True).start()
                return
            try:
                future.set_result(objects.materialize(oid, desc))
            except BaseException as exc:
                future.set_exception(exc)
            keep.clear()

        keep = [ref]  # the ref must live until the value is here
        ready, new = objects.when_ready(oid, resolve)
        if ready:
            resolve()
        else:
            if new:
                self.send(_encode(Op.FETCH, {"object_ids": new}))
            transport.wake_io()  # the I/O thread reads while futures wait
        return future

    def _when_ready(self, oid: bytes, callback: Callable[[], None]) -> None:
        """Call ``callback`` (after a read) once ``oid`` is here."""
        ready, new = self.objects.when_ready(oid, callback)
        if ready:
            callback()
            return
        if new:
            self.send(_encode(Op.FETCH, {"object_ids": new}))
        self.transport.wake_io()  # the I/O thread reads while callbacks wait

    # ------------------------------------------------------------------ tasks
    def export_function(self, fid: bytes, blob: bytes, name: str) -> None:
        if fid not in self._exported:
            self._exported.add(fid)
            # The caller's import path travels with the function, so whatever
            # module cloudpickle refers to by name imports in the worker too.
            path = [p for p in sys.path if isinstance(p, str)]
            self.send(_encode(Op.EXPORT, {"function_id": fid, "name": name, "sys_path": path},
                              blob))

    def submit(self, spec: protocol.TaskSpec) -> List[ObjectRef]:
        """Queue one task spec; return refs to its results, made before it runs."""
        oids = protocol.returns_of(spec)
        refs = [ObjectRef(oid, _held=True) for oid in oids]
        self.objects.expect(oids)  # the agent pushes a task's results to its submitter
        direct = self.direct
        if "actor_id" in spec and "method" in spec and direct.route(spec) and direct.waits(spec):
            self.outbox.submit(spec)  # sent to its worker once its arguments are here
        elif "direct" in spec or (direct.leases and "actor_id" not in spec and
                                  direct.route_task(spec)):
            self.outbox.submit_direct(spec)
        else:
            self.outbox.submit(spec)
        return refs

    def encode_args(self, args: Sequence[Any], kwargs: Dict[str, Any],
                    name: str) -> Tuple[dict, List[ObjectRef]]:
        """The args part of a task spec, and refs to hold until it is queued
        (see ``arguments.encode_args``)."""
        return encode_args(args, kwargs, name, self.put_new)
