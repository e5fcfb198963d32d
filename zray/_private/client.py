"""The connection a driver or worker has to its node agent.

::

    user threads ──outbox──▶ I/O thread ──DEALER/ipc──▶ node agent
         ▲                      │
         └──── cache + cond ◀───┘  (OBJECT, replies, EXECUTE → task queue)

One I/O thread owns the DEALER socket; user threads never touch it.  They
append to an outbox and wake the I/O thread through an inproc pair; the I/O
thread coalesces runs of small messages (ref counts, task submissions) into
one send.  Objects that arrive are kept as descriptors (not values) in a
cache while this process holds a ref to them, so repeated gets, waits and
pushed task results cost no round trip.

Reference counting: ``add_local_ref`` / ``remove_local_ref`` count ObjectRefs
alive in this process; the agent hears only the 0→1 and 1→0 transitions.
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import logging
import os
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import psutil
import zmq

from zray import exceptions
from zray._private import protocol, serialization
from zray._private.protocol import ObjectKind, Op
from zray.object_ref import ObjectRef

logger = logging.getLogger("zray")

_LIVENESS_INTERVAL = 0.5


class _Dep:
    """Stands in for a top-level ref argument inside the pickled arguments."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index

    def __reduce__(self):
        return (_Dep, (self.index,))


class Descriptor:
    """Where an object's bytes are: an inline frame or an arena offset."""

    __slots__ = ("kind", "layout", "data", "offset")

    def __init__(self, kind: int, layout: list, data: Any = None, offset: int = 0) -> None:
        self.kind = kind
        self.layout = layout
        self.data = data
        self.offset = offset

    @classmethod
    def from_message(cls, body: dict, frames: Sequence[Any]) -> "Descriptor":
        kind = body["k"]
        data = frames[0] if frames else None
        if data is not None and not isinstance(data, (bytes, bytearray, memoryview)):
            data = data.buffer  # a zmq.Frame: view its bytes without copying
        return cls(kind, body.get("l") or [], data, body.get("off", 0))


class ConnectionLost(exceptions.NodeDiedError):
    pass


class _Waiter:
    """One blocked get/wait: how many more objects it needs, and its wake-up."""

    __slots__ = ("needed", "event")

    def __init__(self, needed: int) -> None:
        self.needed = needed
        self.event = threading.Event()


class Client:
    def __init__(self, agent_address: str, kind: str, *, identity: Optional[bytes] = None,
                 job_id: Optional[bytes] = None, agent_pid: Optional[int] = None) -> None:
        self.kind = kind                          # "driver" or "worker"
        self.identity = identity or protocol.new_id()
        self.agent_address = agent_address
        self.job_id = job_id or protocol.new_id()
        self.agent_pid = agent_pid
        self.node_id: bytes = b""
        self.welcome: Dict[str, Any] = {}
        self.arena = None
        self.closed = False
        self.lost: Optional[str] = None

        self._refs: Dict[bytes, int] = {}
        self._ref_lock = threading.Lock()
        self._cache: Dict[bytes, Descriptor] = {}
        self._requested: set = set()
        self._callbacks: Dict[bytes, List[Callable[[], None]]] = {}
        self._waiting: Dict[bytes, List[_Waiter]] = {}
        self._cond = threading.Condition()
        self._replies: Dict[int, Tuple[Op, dict, Sequence[Any]]] = {}
        self._req_ids = itertools.count(1)
        self._exported: set = set()
        self.tasks: "collections.deque" = collections.deque()   # EXECUTE for workers
        self.task_ready = threading.Condition()
        self.on_interrupt: Optional[Callable[[dict], None]] = None
        self.current_task: Optional[dict] = None

        self._outbox: "collections.deque" = collections.deque()
        self._signalled = False
        self._wake_lock = threading.Lock()
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.IDENTITY, self.identity)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.SNDHWM, 0)
        self._sock.setsockopt(zmq.RCVHWM, 0)
        self._sock.setsockopt(zmq.RECONNECT_IVL, 10)  # the agent may bind just after us
        wake_addr = f"inproc://zray-wake-{id(self)}"
        self._wake_recv = self._ctx.socket(zmq.PAIR)
        self._wake_recv.bind(wake_addr)
        self._wake_send = self._ctx.socket(zmq.PAIR)
        self._wake_send.connect(wake_addr)
        self._welcomed = threading.Event()
        self._thread = threading.Thread(target=self._io_loop, name="zray-io", daemon=True)

    # ------------------------------------------------------------------ start/stop
    def connect(self, timeout: float = 10.0, pid: Optional[int] = None) -> None:
        self._sock.connect(self.agent_address)
        self._thread.start()
        self._send(protocol.encode(Op.HELLO, {
            "kind": self.kind, "pid": pid or os.getpid(), "job": self.job_id}))
        if not self._welcomed.wait(timeout):
            self.close()
            raise ConnectionError(
                f"no answer from the zray node agent at {self.agent_address} within {timeout:.0f}s")
        if self.lost:
            raise ConnectionLost(self.lost)

    def close(self) -> None:
        if self.closed:
            return
        if self._thread.is_alive() and not self.lost:
            self._send(protocol.encode(Op.BYE, {}))
        self.closed = True
        self._wake()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=2)
        with self._cond:
            self._cond.notify_all()
        with self.task_ready:
            self.task_ready.notify_all()

    # ------------------------------------------------------------------ outbox
    def _wake(self) -> None:
        if not self._signalled:
            self._signalled = True
            with self._wake_lock:
                try:
                    self._wake_send.send(b"", zmq.NOBLOCK)
                except zmq.ZMQError:
                    pass

    def _send(self, frames: List[Any]) -> None:
        self._outbox.append(frames)
        self._wake()

    def _send_item(self, item: tuple) -> None:
        """Queue a coalescable item: ("ref", op, oid) or ("submit", spec)."""
        self._outbox.append(item)
        self._wake()

    def _flush(self) -> None:
        outbox = self._outbox
        sock = self._sock
        while outbox:
            item = outbox.popleft()
            if type(item) is tuple:
                if item[0] == "ref":
                    op, ids = item[1], [item[2]]
                    while outbox and type(outbox[0]) is tuple and outbox[0][0] == "ref" \
                            and outbox[0][1] == op:
                        ids.append(outbox.popleft()[2])
                    sock.send_multipart(protocol.encode(op, {"o": ids}), copy=True)
                else:  # submit
                    specs = [item[1]]
                    while outbox and type(outbox[0]) is tuple and outbox[0][0] == "submit":
                        specs.append(outbox.popleft()[1])
                    sock.send_multipart(protocol.encode(Op.SUBMIT, {"t": specs}))
            else:
                sock.send_multipart(item, copy=len(item) == 1)

    # ------------------------------------------------------------------ I/O thread
    def _io_loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        poller.register(self._wake_recv, zmq.POLLIN)
        next_check = time.monotonic() + _LIVENESS_INTERVAL
        try:
            while True:
                events = dict(poller.poll(int(_LIVENESS_INTERVAL * 1000)))
                if self._wake_recv in events:
                    while True:
                        try:
                            self._wake_recv.recv(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                    self._signalled = False
                self._flush()
                if self.closed:
                    break
                if self._sock in events:
                    for _ in range(1000):
                        try:
                            frames = self._sock.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        self._dispatch(frames)
                now = time.monotonic()
                if now >= next_check:
                    next_check = now + _LIVENESS_INTERVAL
                    self._check_liveness()
                    if self.lost:
                        break
        except Exception as exc:  # the I/O thread must not vanish silently
            if not self.closed:
                self._mark_lost(f"zray connection thread failed: {exc!r}")
        finally:
            try:
                self._flush()
            except Exception:
                pass
            self._sock.close(linger=100)
            self._wake_recv.close()
            with self._wake_lock:
                self._wake_send.close()
            self._ctx.term()

    def _check_liveness(self) -> None:
        if self.agent_pid and not _process_alive(self.agent_pid):
            self._mark_lost(f"the zray node agent (pid {self.agent_pid}) has died")
        elif self.kind == "worker" and os.getppid() == 1:
            self._mark_lost("the worker's parent process has exited")

    def _mark_lost(self, why: str) -> None:
        self.lost = why
        self._welcomed.set()
        with self._cond:
            for waiters in self._waiting.values():
                for waiter in waiters:
                    waiter.event.set()
            self._cond.notify_all()
        with self.task_ready:
            self.tasks.append(None)
            self.task_ready.notify_all()

    def _dispatch(self, frames: List[Any]) -> None:
        try:
            op, body, raw = protocol.decode([f.buffer for f in frames[:1]] + frames[1:])
        except protocol.ProtocolError as exc:
            logger.warning("zray: ignoring a malformed message from the agent: %s", exc)
            return
        if op == Op.OBJECT:
            self._on_object(body, raw)
        elif op == Op.EXECUTE or op == Op.EXIT:
            with self.task_ready:
                self.tasks.append((op, body, raw))
                self.task_ready.notify()
        elif op in (Op.ALLOC_REPLY, Op.QUERY_REPLY, Op.PIN_REPLY, Op.ERROR):
            with self._cond:
                self._replies[body.get("req", 0)] = (op, body, raw)
                self._cond.notify_all()
        elif op == Op.LOG:
            self._print_log(body)
        elif op == Op.WARN:
            logger.warning("zray: %s", body.get("msg", ""))
        elif op == Op.INTERRUPT:
            if self.on_interrupt is not None:
                self.on_interrupt(body)
        elif op == Op.WELCOME:
            self.welcome = body
            self.node_id = body["node"]
            self.agent_pid = self.agent_pid or body.get("pid")
            self._welcomed.set()

    def _on_object(self, body: dict, raw: Sequence[Any]) -> None:
        oid = body["o"]
        callbacks = None
        with self._cond:
            self._requested.discard(oid)
            if oid in self._refs:
                self._cache[oid] = Descriptor.from_message(body, raw)
                callbacks = self._callbacks.pop(oid, None)
            for waiter in self._waiting.pop(oid, ()):
                waiter.needed -= 1
                if waiter.needed <= 0:
                    waiter.event.set()
        if callbacks:
            for callback in callbacks:
                callback()

    def _print_log(self, body: dict) -> None:
        prefix = f"({body.get('name', '?')} pid={body.get('pid', '?')}) "
        stream = sys.stderr if body.get("err") else sys.stdout
        try:
            stream.write("".join(prefix + line + "\n" for line in body.get("lines", ())))
            stream.flush()
        except Exception:
            pass

    # ------------------------------------------------------------------ refs
    def add_local_ref(self, oid: bytes, announce: bool = True) -> None:
        with self._ref_lock:
            count = self._refs.get(oid, 0)
            self._refs[oid] = count + 1
        if count == 0 and announce and not self.closed:
            self._send_item(("ref", Op.ADDREF, oid))

    def remove_local_ref(self, oid: bytes) -> None:
        with self._ref_lock:
            count = self._refs.get(oid, 0) - 1
            if count > 0:
                self._refs[oid] = count
                return
            self._refs.pop(oid, None)
            self._cache.pop(oid, None)
        if not self.closed:
            self._send_item(("ref", Op.DECREF, oid))

    def local_ref_count(self) -> int:
        return len(self._refs)

    # ------------------------------------------------------------------ requests
    def request(self, op: Op, body: dict, *raw: Any, timeout: float = 60.0) -> Tuple[Op, dict, Sequence[Any]]:
        req = next(self._req_ids)
        body["req"] = req
        self._send(protocol.encode(op, body, *raw))
        deadline = time.monotonic() + timeout
        with self._cond:
            while req not in self._replies:
                self._raise_if_lost()
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"zray node agent did not answer {op.name} in {timeout:.0f}s")
                self._cond.wait(left)
            reply = self._replies.pop(req)
        if reply[0] == Op.ERROR:
            raise _error_from_reply(reply[1])
        return reply

    def _raise_if_lost(self) -> None:
        if self.lost:
            raise ConnectionLost(self.lost)
        if self.closed:
            raise ConnectionLost("zray has been shut down in this process")

    # ------------------------------------------------------------------ objects
    def attach_arena(self):
        if self.arena is None:
            from zray._private.object_store import Arena
            self.arena = Arena.attach(self.welcome["arena"])
        return self.arena

    def put_serialized(self, ser: serialization.Serialized, oid: bytes) -> None:
        """Store a serialized value under ``oid`` (this process holds a ref already)."""
        if ser.size <= protocol.INLINE_THRESHOLD:
            data = ser.to_bytes()
            self._send(protocol.encode(Op.PUT, {"o": oid, "l": ser.layout, "c": ser.contained}, data))
            desc = Descriptor(ObjectKind.INLINE, ser.layout, data)
        else:
            offset = self.allocate(oid, ser.size)
            try:
                ser.write_into(self.arena.view(offset, ser.size))
            except BaseException:
                self._send(protocol.encode(Op.ABORT, {"o": oid, "off": offset}))
                raise
            self._send(protocol.encode(Op.SEAL, {
                "o": oid, "off": offset, "l": ser.layout, "c": ser.contained, "n": ser.size}))
            desc = Descriptor(ObjectKind.SHARED, ser.layout, None, offset)
        with self._cond:
            if oid in self._refs:
                self._cache[oid] = desc

    def allocate(self, oid: bytes, size: int) -> int:
        self.attach_arena()
        _, body, _ = self.request(Op.ALLOC, {"o": oid, "n": size})
        return body["off"]

    def put(self, value: Any) -> ObjectRef:
        ser = serialization.serialize(value, "the value passed to put()")
        oid = protocol.object_id(protocol.new_id(), 0)
        ref = ObjectRef(oid, _held=True)
        self.put_serialized(ser, oid)
        return ref

    def _request_missing(self, oids: Sequence[bytes]) -> List[bytes]:
        """Ask the agent for objects not cached nor already asked for; return the missing."""
        missing = [o for o in oids if o not in self._cache]
        if missing:
            new = [o for o in missing if o not in self._requested]
            if new:
                self._requested.update(new)
                self._send(protocol.encode(Op.FETCH, {"o": new}))
        return missing

    def wait_objects(self, oids: Sequence[bytes], num_ready: int,
                     timeout: Optional[float]) -> bool:
        """Block until ``num_ready`` of ``oids`` are cached; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            missing = self._request_missing(oids)
            if len(oids) - len(missing) >= num_ready:
                return True
            self._raise_if_lost()
            waiter = _Waiter(num_ready - (len(oids) - len(missing)))
            for oid in missing:
                self._waiting.setdefault(oid, []).append(waiter)
        blocked = self.kind == "worker" and self.current_task is not None
        if blocked:
            self._send(protocol.encode(Op.BLOCKED, {}))
        try:
            while not waiter.event.is_set():
                self._raise_if_lost()
                if deadline is None:
                    waiter.event.wait(1.0)
                else:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    waiter.event.wait(min(left, 1.0))
            self._raise_if_lost()
            return True
        finally:
            if blocked:
                self._send(protocol.encode(Op.UNBLOCKED, {}))
            if not waiter.event.is_set():
                with self._cond:
                    for oid in missing:
                        waiters = self._waiting.get(oid)
                        if waiters and waiter in waiters:
                            waiters.remove(waiter)
                            if not waiters:
                                del self._waiting[oid]

    def get(self, refs: Sequence[ObjectRef], timeout: Optional[float]) -> List[Any]:
        oids = [r._id for r in refs]
        if not self.wait_objects(oids, len(oids), timeout):
            raise exceptions.GetTimeoutError(
                f"get timed out after {timeout}s: {sum(o not in self._cache for o in oids)} "
                f"of {len(oids)} objects not ready")
        return [self.materialize(oid, self._cache[oid]) for oid in oids]

    def is_ready(self, oid: bytes) -> bool:
        return oid in self._cache

    def materialize(self, oid: bytes, desc: Descriptor) -> Any:
        kind = desc.kind
        if kind == ObjectKind.INLINE:
            return serialization.deserialize(memoryview(desc.data), desc.layout)
        if kind == ObjectKind.SHARED:
            arena = self.attach_arena()
            # Pinning asks the agent where the bytes are now (a spilled object
            # comes back) and keeps them from being spilled while views live.
            _, body, _ = self.request(Op.PIN, {"o": oid})
            offset = body["off"]
            size = desc.layout[-1][0] + desc.layout[-1][1]
            view = arena.buf[offset:offset + size].toreadonly()
            keeper = _Pin(self, ObjectRef(oid))
            return serialization.deserialize(
                view, desc.layout, lambda v: serialization.pinned_buffer(v, keeper))
        raise serialization.load_error(desc.data)

    def future_of(self, ref: ObjectRef) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        oid = ref._id

        def resolve() -> None:
            if threading.current_thread() is self._thread:
                # Reading a shared object needs a round trip this thread serves.
                threading.Thread(target=resolve, daemon=True).start()
                return
            try:
                future.set_result(self.materialize(oid, self._cache[oid]))
            except BaseException as exc:
                future.set_exception(exc)
            keep.clear()

        keep = [ref]  # the ref must live until the value is here
        with self._cond:
            if oid in self._cache:
                ready = True
            else:
                ready = False
                self._callbacks.setdefault(oid, []).append(resolve)
                self._request_missing([oid])
        if ready:
            resolve()
        return future

    # ------------------------------------------------------------------ tasks
    def export_function(self, fid: bytes, blob: bytes, name: str) -> None:
        if fid not in self._exported:
            self._exported.add(fid)
            # The caller's import path travels with the function, so whatever
            # module cloudpickle refers to by name imports in the worker too.
            path = [p for p in sys.path if isinstance(p, str)]
            self._send(protocol.encode(Op.EXPORT, {"f": fid, "n": name, "path": path}, blob))

    def submit(self, spec: dict, num_returns: int) -> List[ObjectRef]:
        """Send one task spec; return refs to its results, made before it runs."""
        tid = spec["t"]
        refs = [ObjectRef(protocol.object_id(tid, i), _held=True) for i in range(num_returns)]
        spec["j"] = self.job_id
        self._send_item(("submit", spec))
        return refs

    def encode_args(self, args: Sequence[Any], kwargs: Dict[str, Any],
                    name: str) -> Tuple[dict, List[ObjectRef]]:
        """The args part of a task spec (deps, pickled arguments, contained refs).

        Also returns refs the caller must hold until the spec is queued: the
        outbox is ordered, so once the SUBMIT is queued no later DECREF can
        overtake it.
        """
        if not args and not kwargs:
            return {}, []
        deps: List[bytes] = []
        keep: List[ObjectRef] = []

        def swap(value: Any) -> Any:
            if isinstance(value, ObjectRef):
                deps.append(value._id)
                keep.append(value)
                return _Dep(len(deps) - 1)
            return value

        args = [swap(a) for a in args]
        kwargs = {k: swap(v) for k, v in kwargs.items()}
        ser = serialization.serialize((args, kwargs), f"an argument of {name}")
        body: dict = {"d": deps} if deps else {}
        if ser.contained:
            body["c"] = ser.contained
        if ser.size <= protocol.INLINE_THRESHOLD:
            body["a"] = ser.to_bytes()
            body["al"] = ser.layout
        else:
            # Large by-value arguments are stored once, and the task reads them
            # zero-copy like any other object.
            ref = self.put_large_args(ser)
            body["ao"] = ref._id
            body.setdefault("d", []).append(ref._id)
            keep.append(ref)
        return body, keep

    def put_large_args(self, ser: serialization.Serialized) -> ObjectRef:
        oid = protocol.object_id(protocol.new_id(), 0)
        ref = ObjectRef(oid, _held=True)
        self.put_serialized(ser, oid)
        return ref

    def query(self, what: str, **extra: Any) -> dict:
        _, body, _ = self.request(Op.QUERY, {"what": what, **extra})
        return body


class _Pin:
    """Held by every view of one read of a shared object; unpins when they are gone."""

    __slots__ = ("client", "ref")

    def __init__(self, client: Client, ref: ObjectRef) -> None:
        self.client = client
        self.ref = ref

    def __del__(self) -> None:
        client = self.client
        if not client.closed:
            client._send_item(("ref", Op.UNPIN, self.ref._id))


def _process_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _error_from_reply(body: dict) -> Exception:
    kind = body.get("type", "")
    message = body.get("msg", "request failed")
    if kind == "ObjectStoreFullError":
        return exceptions.ObjectStoreFullError(message)
    if kind == "ValueError":
        return ValueError(message)
    return exceptions.ZrayError(message)
