"""The connection a driver or worker has to its node agent.

::

    submit/put/refs ──outbox (coalesced)──┐
    requests, FETCH, BLOCKED ─────────────┼──▶ DEALER/ipc ──▶ node agent
                                          │
    get/wait/request: the waiting thread ─┴── reads the socket itself (the
    "leader"); other waiters follow on a condition; OBJECT, replies and
    EXECUTE (a worker's task queue) are dispatched by whoever leads.

Any thread sends on the DEALER itself, under a lock: a one-at-a-time
``get(f.remote())`` pays no hand-off to another thread on either side.
Submissions, inline puts and finished tasks queue in an outbox; a lone one
is sent at once, a burst is coalesced (a batch is sent at 64 items, or by
the I/O thread about a millisecond after the burst ends).  Ref releases
(DECREF, UNPIN) wait longer still: they cannot hurt by arriving late.  The
I/O thread sends what producers left behind, reads while futures wait and
nobody else does, and watches the agent's liveness.

Objects that arrive are kept as descriptors (not values) in a cache while
this process holds a ref to them, so repeated gets, waits and pushed task
results cost no round trip.  Reads of shared objects keep a pin at the agent
while views live; a pin whose UNPIN has not been sent yet is taken over by
the next read of the same object.

Reference counting: ``add_local_ref`` / ``remove_local_ref`` count ObjectRefs
alive in this process; the agent hears only the 0→1 and 1→0 transitions.
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import logging
import os
import select
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import zmq

from zray import exceptions
from zray._private import protocol, serialization
from zray._private.protocol import ObjectKind, Op
from zray.object_ref import ObjectRef

logger = logging.getLogger("zray")

_LIVENESS_INTERVAL = 0.5
_IDLE_TICK = 0.05          # how often the I/O thread reads when nobody else does
_FOLLOWER_RECHECK = 0.05   # a waiting follower looks again this often, wake-up or not
_BURST_GAP = 0.0002        # submissions this close together are a burst, worth batching
_BATCH_WINDOW = 0.001      # a burst's submissions queued this long are sent by the I/O thread
_FLUSH_AT = 64             # ... or by the submitter once this many are queued
_ZERO_COPY_MIN = 65536     # smaller frames are copied (cheaper than zero-copy)
_EVENTS = int(zmq.EVENTS)  # plain ints: pyzmq's flag enums are slow to combine
_POLLIN = int(zmq.POLLIN)
_NOBLOCK = int(zmq.NOBLOCK)


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
    """One blocked get/wait: how many more objects it needs."""

    __slots__ = ("needed",)

    def __init__(self, needed: int) -> None:
        self.needed = needed


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
        self._pins: Dict[bytes, "_PinEntry"] = {}   # see _reuse_pin
        self._ref_lock = threading.Lock()
        self._cache: Dict[bytes, Descriptor] = {}
        self._requested: set = set()
        self._callbacks: Dict[bytes, List[Callable[[], None]]] = {}
        self._waiting: Dict[bytes, List[_Waiter]] = {}
        self._cond = threading.Condition()        # guards the state above; followers wait on it
        self._replies: Dict[int, Tuple[Op, dict, Sequence[Any]]] = {}
        self._req_ids = itertools.count(1)
        self._exported: set = set()
        self.tasks: "collections.deque" = collections.deque()   # EXECUTE for workers
        self.on_interrupt: Optional[Callable[[dict], None]] = None
        self.current_task: Optional[dict] = None
        self.blocked_count = 0                    # BLOCKED messages sent (workers)

        self._outbox: "collections.deque" = collections.deque()
        self._released: "collections.deque" = collections.deque()  # DECREF/UNPIN items
        self._last_flush = 0.0
        self._last_item = 0.0                     # when the last submit or put was queued
        self._sock_lock = threading.Lock()        # held for every call on the socket
        self._leader = threading.Lock()           # held by the one thread reading the socket
        self._followers = 0
        self._deferred: "collections.deque" = collections.deque()
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.IDENTITY, self.identity)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.SNDHWM, 0)
        self._sock.setsockopt(zmq.RCVHWM, 0)
        self._sock.setsockopt(zmq.RECONNECT_IVL, 10)  # the agent may bind just after us
        self._sock_closed = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._poller = select.poll()
        self._poller.register(self._sock.getsockopt(zmq.FD), select.POLLIN)
        self._poller.register(self._wake_r, select.POLLIN)
        self._background = threading.Event()      # wakes the I/O thread
        self._welcomed = False
        self._thread = threading.Thread(target=self._io_loop, name="zray-io", daemon=True)

    # ------------------------------------------------------------------ start/stop
    def connect(self, timeout: float = 10.0, pid: Optional[int] = None) -> None:
        self._sock.connect(self.agent_address)
        self._thread.start()
        self._send(protocol.encode(Op.HELLO, {
            "kind": self.kind, "pid": pid or os.getpid(), "job": self.job_id}))
        if not self._wait_for(lambda: self._welcomed or self.lost is not None,
                              time.monotonic() + timeout, check_lost=False):
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
        self._wake_leader()
        self._background.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=2)
        if not self._thread.is_alive():
            self._close_socket()
        with self._cond:
            self._cond.notify_all()

    def _close_socket(self) -> None:
        with self._sock_lock:
            if self._sock_closed:
                return
            try:
                self._flush_locked(True)
            except Exception:
                pass
            self._sock_closed = True
            self._sock.close(linger=100)
            self._ctx.term()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    # ------------------------------------------------------------------ sending
    # Any thread sends on the socket itself, under ``_sock_lock``: no hand-off
    # to another thread.  Ref-count changes and task submissions are queued in
    # the outbox and coalesced; the outbox is flushed before any other send,
    # before any wait, when it grows, and by the I/O thread shortly after a
    # burst of submissions ends.  Releases (DECREF, UNPIN) wait longer, in
    # their own queue: a wait does not flush them, so a loop of submit-and-get
    # sends one message per task, not two.  Sending them after the submissions
    # queued since is safe (an object lives a little longer); sending them
    # after a later ADDREF of the same object is not, so an ADDREF moves them
    # into the outbox first.
    def _send(self, frames: List[Any]) -> None:
        with self._sock_lock:
            if self._sock_closed:
                return
            if self._outbox:
                self._flush_locked()
            self._sock.send_multipart(frames, copy=len(frames) == 1 or
                                      all(len(f) < _ZERO_COPY_MIN for f in frames[1:]))
            self._after_send_locked()

    def _send_item(self, item: tuple) -> None:
        """Queue a coalescable item: ("ref", op, oid), ("submit", spec),
        ("put", [oid, layout, contained], data) or ("done", body, frames)."""
        kind = item[0]
        if kind == "ref":
            if item[1] != Op.ADDREF:
                released = self._released
                released.append(item)
                if len(released) >= _FLUSH_AT:
                    self.flush(True)
                return
            if self._released:
                with self._sock_lock:  # keep this ADDREF behind earlier releases
                    released = self._released
                    while released:
                        self._outbox.append(released.popleft())
            self._outbox.append(item)  # goes with the next send: nothing waits on it
            return
        outbox = self._outbox
        outbox.append(item)
        now = time.monotonic()
        in_burst = now - self._last_item < _BURST_GAP
        self._last_item = now
        queued = len(outbox)
        if queued >= _FLUSH_AT or not in_burst:
            self.flush()  # a full batch, or a lone item that nothing would join
        elif queued == 1:
            self._background.set()  # a burst: the I/O thread sends it soon

    def flush(self, releases: bool = False) -> None:
        """Send the queued submissions and ADDREFs (and the releases if asked)."""
        if self._outbox or (releases and self._released):
            with self._sock_lock:
                if not self._sock_closed:
                    self._flush_locked(releases)
                    self._after_send_locked()

    def _flush_locked(self, releases: bool = False) -> None:
        outbox = self._outbox
        if releases:
            released = self._released
            while released:
                outbox.append(released.popleft())
        sock = self._sock
        while outbox:
            item = outbox.popleft()
            kind = item[0]
            if kind == "ref":
                op = item[1]
                if op == Op.UNPIN:
                    ids = [item[2]] if self._unpin_due(item) else []
                    while outbox and outbox[0][0] == "ref" and outbox[0][1] == op:
                        item = outbox.popleft()
                        if self._unpin_due(item):
                            ids.append(item[2])
                    if not ids:
                        continue
                else:
                    ids = [item[2]]
                    while outbox and outbox[0][0] == "ref" and outbox[0][1] == op:
                        ids.append(outbox.popleft()[2])
                sock.send_multipart(protocol.encode(op, {"o": ids}))
            elif kind == "submit":
                specs = [item[1]]
                while outbox and outbox[0][0] == "submit":
                    specs.append(outbox.popleft()[1])
                sock.send_multipart(protocol.encode(Op.SUBMIT, {"t": specs}))
            elif kind == "put":
                objects, frames = [item[1]], [item[2]]
                while outbox and outbox[0][0] == "put":
                    _, header, data = outbox.popleft()
                    objects.append(header)
                    frames.append(data)
                sock.send_multipart(protocol.encode(Op.PUT, {"p": objects}, *frames))
            else:  # done: a worker's finished tasks
                done = [(item[1], item[2])]
                while outbox and outbox[0][0] == "done":
                    _, body, frames = outbox.popleft()
                    done.append((body, frames))
                if len(done) == 1:
                    body, frames = done[0]
                else:
                    body, frames = protocol.pack_batch(done)
                sock.send_multipart(protocol.encode(Op.TASK_DONE, body, *frames),
                                    copy=all(len(f) < _ZERO_COPY_MIN for f in frames))
        self._last_flush = time.monotonic()

    def _after_send_locked(self) -> None:
        # The socket's FD is edge-triggered: a send may consume the signal of
        # a message that arrived meanwhile, so a reader asleep in poll() must
        # be told to look again.  With no reader, the next one drains before
        # it polls.
        if self._leader.locked() and self._sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            self._wake_leader()

    def _wake_leader(self) -> None:
        try:
            os.write(self._wake_w, b"w")
        except OSError:
            pass  # the pipe is full (a wake-up is pending anyway) or closed

    # ------------------------------------------------------------------ receiving
    # The thread that needs a message reads the socket itself (it becomes the
    # *leader*); other threads that wait meanwhile are *followers*, woken
    # through ``_cond`` when the leader has dispatched something or steps down.
    def _wait_for(self, done: Callable[[], bool], deadline: Optional[float],
                  check_lost: bool = True) -> bool:
        """Read and dispatch messages until ``done()``; False at ``deadline``."""
        self.flush()
        while True:
            if done():
                return True
            if check_lost:
                self._raise_if_lost()
            elif self.closed:
                return False
            left = _LIVENESS_INTERVAL if deadline is None else deadline - time.monotonic()
            if left <= 0:
                return done()
            if self._leader.acquire(False):
                try:
                    if not self._drain() and not done():
                        self._poll(min(left, _LIVENESS_INTERVAL))
                        self._drain()
                finally:
                    self._leader.release()
                    self._step_down()
            else:
                with self._cond:
                    self._followers += 1
                    try:
                        if not done() and self._leader.locked():
                            self._cond.wait(min(left, _FOLLOWER_RECHECK))
                    finally:
                        self._followers -= 1

    def _poll(self, timeout: float) -> None:
        if self._sock_closed:
            return
        for fd, _ in self._poller.poll(max(0, int(timeout * 1000)) or 1):
            if fd == self._wake_r:
                try:
                    os.read(self._wake_r, 4096)
                except OSError:
                    pass

    def _drain(self) -> int:
        """Receive and dispatch everything the socket holds (the leader only)."""
        count = 0
        sock = self._sock
        while True:
            batch = []
            with self._sock_lock:
                if self._sock_closed:
                    break
                # EVENTS before each read: cheaper than a zmq.Again per drain,
                # and it re-arms the edge-triggered FD the same way.
                for _ in range(256):
                    if not sock.get(_EVENTS) & _POLLIN:
                        break
                    batch.append(sock.recv_multipart(_NOBLOCK))
            for frames in batch:
                self._dispatch(frames)
            count += len(batch)
            if len(batch) < 256:
                break
        if count and self._followers:
            with self._cond:
                self._cond.notify_all()
        return count

    def _step_down(self) -> None:
        if self._followers:
            with self._cond:
                self._cond.notify_all()
        deferred = self._deferred
        while deferred:
            try:
                deferred.popleft()()
            except Exception:
                logger.exception("zray: a callback failed")

    # ------------------------------------------------------------------ I/O thread
    def _io_loop(self) -> None:
        """Sends what the outbox holds when its producer moves on, serves ref
        futures, delivers logs and cancels while no other thread reads, and
        watches the agent's (and a worker's parent's) liveness."""
        next_check = time.monotonic() + _LIVENESS_INTERVAL
        background = self._background
        try:
            while not self.closed:
                if self._callbacks:
                    # Futures are waiting: read actively, as a leader would.
                    if self._leader.acquire(timeout=_IDLE_TICK):
                        try:
                            self._flush_if_idle()
                            if not self._drain():
                                self._poll(_IDLE_TICK)
                                self._drain()
                        finally:
                            self._leader.release()
                            self._step_down()
                else:
                    background.wait(_IDLE_TICK)
                    background.clear()
                    if self._outbox:
                        # Let a burst of submissions grow into one message.
                        time.sleep(_BATCH_WINDOW)
                    self.flush(True)
                    self.receive_pending()
                now = time.monotonic()
                if now >= next_check:
                    next_check = now + _LIVENESS_INTERVAL
                    self.flush(True)
                    self._check_liveness()
                    if self.lost:
                        break
        except Exception as exc:  # the I/O thread must not vanish silently
            if not self.closed:
                self._mark_lost(f"zray connection thread failed: {exc!r}")
        finally:
            if self.closed:
                self._close_socket()

    def _flush_if_idle(self) -> None:
        if self._outbox and time.monotonic() - self._last_flush >= _BATCH_WINDOW:
            self.flush()

    def _check_liveness(self) -> None:
        if self.agent_pid and not _process_alive(self.agent_pid):
            self._mark_lost(f"the zray node agent (pid {self.agent_pid}) has died")
        elif self.kind == "worker" and os.getppid() == 1:
            self._mark_lost("the worker's parent process has exited")

    def _mark_lost(self, why: str) -> None:
        self.lost = why
        with self._cond:
            for waiters in self._waiting.values():
                for waiter in waiters:
                    waiter.needed = 0
            self.tasks.append(None)
            self._cond.notify_all()
        self._wake_leader()

    def _dispatch(self, frames: List[Any]) -> None:
        try:
            op, body, raw = protocol.decode(frames)
        except protocol.ProtocolError as exc:
            logger.warning("zray: ignoring a malformed message from the agent: %s", exc)
            return
        if op == Op.OBJECT:
            try:
                for one, frames in protocol.unpack_batch(body, raw):
                    self._on_object(one, frames)
            except protocol.ProtocolError as exc:
                logger.warning("zray: ignoring a malformed message from the agent: %s", exc)
        elif op == Op.EXECUTE:
            try:
                self.tasks.extend((op, one, frames)
                                  for one, frames in protocol.unpack_batch(body, raw))
            except protocol.ProtocolError as exc:
                logger.warning("zray: ignoring a malformed message from the agent: %s", exc)
        elif op == Op.EXIT:
            self.tasks.append((op, body, raw))
        elif op in (Op.ALLOC_REPLY, Op.QUERY_REPLY, Op.PIN_REPLY, Op.ERROR):
            self._replies[body.get("req", 0)] = (op, body, raw)
        elif op == Op.LOG:
            self._print_log(body)
        elif op == Op.WARN:
            logger.warning("zray: %s", body.get("msg", ""))
        elif op == Op.INTERRUPT:
            if self.on_interrupt is not None:
                # After the leader steps down: a KeyboardInterrupt must not
                # land in the middle of dispatching.
                self._deferred.append(lambda: self.on_interrupt(body))
        elif op == Op.WELCOME:
            self.welcome = body
            self.node_id = body["node"]
            self.agent_pid = self.agent_pid or body.get("pid")
            self._welcomed = True

    def _on_object(self, body: dict, raw: Sequence[Any]) -> None:
        oid = body["o"]
        with self._cond:
            self._requested.discard(oid)
            if oid in self._refs:
                self._cache[oid] = Descriptor.from_message(body, raw)
                callbacks = self._callbacks.pop(oid, None)
                if callbacks:
                    self._deferred.extend(callbacks)
            waiters = self._waiting.pop(oid, None)
            if waiters:
                for waiter in waiters:
                    waiter.needed -= 1

    def _print_log(self, body: dict) -> None:
        prefix = f"({body.get('name', '?')} pid={body.get('pid', '?')}) "
        stream = sys.stderr if body.get("err") else sys.stdout
        try:
            stream.write("".join(prefix + line + "\n" for line in body.get("lines", ())))
            stream.flush()
        except Exception:
            pass

    # ------------------------------------------------------------------ tasks (workers)
    def next_task(self) -> Optional[tuple]:
        """The next EXECUTE or EXIT for this worker (None once the connection is lost)."""
        tasks = self.tasks
        if not tasks:
            self.flush(True)  # idle now: let go of what the last task held
            self._wait_for(lambda: bool(tasks), None, check_lost=False)
        return tasks.popleft() if tasks else None

    def receive_pending(self) -> None:
        """Dispatch what has arrived, without waiting (unless another thread reads)."""
        if self._leader.acquire(False):
            try:
                self._drain()
            finally:
                self._leader.release()
                self._step_down()

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
            self._pins.pop(oid, None)  # a later read pins anew; this one still unpins
        if not self.closed:
            self._send_item(("ref", Op.DECREF, oid))

    def local_ref_count(self) -> int:
        return len(self._refs)

    # ------------------------------------------------------------------ requests
    def request(self, op: Op, body: dict, *raw: Any, timeout: float = 60.0) -> Tuple[Op, dict, Sequence[Any]]:
        req = next(self._req_ids)
        body["req"] = req
        if op == Op.PIN or op == Op.ALLOC:
            self.flush(True)  # store space we no longer use goes back first
        self._send(protocol.encode(op, body, *raw))
        replies = self._replies
        if not self._wait_for(lambda: req in replies, time.monotonic() + timeout):
            raise TimeoutError(f"zray node agent did not answer {op.name} in {timeout:.0f}s")
        reply = replies.pop(req)
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
            self._send_item(("put", [oid, ser.layout, ser.contained], data))
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

    def _request_missing(self, oids: Sequence[bytes]) -> Tuple[List[bytes], List[bytes]]:
        """(objects not cached, those of them not yet asked for); call with _cond held.

        The caller sends the FETCH for the second list once it has let go of _cond.
        """
        cache = self._cache
        missing = [o for o in oids if o not in cache]
        new: List[bytes] = []
        if missing:
            requested = self._requested
            new = [o for o in missing if o not in requested]
            if new:
                requested.update(new)
        return missing, new

    def _fetch(self, oids: List[bytes]) -> None:
        if oids:
            self._send(protocol.encode(Op.FETCH, {"o": oids}))

    def wait_objects(self, oids: Sequence[bytes], num_ready: int,
                     timeout: Optional[float]) -> bool:
        """Block until ``num_ready`` of ``oids`` are cached; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        cache = self._cache
        if len(oids) == 1 and num_ready == 1 and oids[0] in cache:
            return True
        with self._cond:
            missing, new = self._request_missing(oids)
            if len(oids) - len(missing) >= num_ready:
                return True
            self._raise_if_lost()
            waiter = _Waiter(num_ready - (len(oids) - len(missing)))
            waiting = self._waiting
            for oid in missing:
                waiters = waiting.get(oid)
                if waiters is None:
                    waiting[oid] = [waiter]
                else:
                    waiters.append(waiter)
        self._fetch(new)
        blocked = self.kind == "worker" and self.current_task is not None
        if blocked:
            self.blocked_count += 1
            self._send(protocol.encode(Op.BLOCKED, {}))
        try:
            if not self._wait_for(lambda: waiter.needed <= 0, deadline):
                return False
            self._raise_if_lost()
            return True
        finally:
            if blocked:
                self._send(protocol.encode(Op.UNBLOCKED, {}))
            if waiter.needed > 0:
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
            pin = self._reuse_pin(oid)
            if pin is None:
                # Pinning asks the agent where the bytes are now (a spilled object
                # comes back) and keeps them from being spilled while views live.
                _, body, _ = self.request(Op.PIN, {"o": oid})
                pin = _PinEntry(body["off"])
                with self._ref_lock:
                    self._pins[oid] = pin
            offset = pin.offset
            size = desc.layout[-1][0] + desc.layout[-1][1]
            view = arena.buf[offset:offset + size].toreadonly()
            keeper = _Pin(self, ObjectRef(oid), pin)
            return serialization.deserialize(
                view, desc.layout, lambda v: serialization.pinned_buffer(v, keeper))
        raise serialization.load_error(desc.data)

    # A pin outlives the views of one read until its UNPIN is sent (releases are
    # sent lazily): a read in the meantime takes it over instead of asking the
    # agent again.  Each _PinEntry stands for one PIN, and sends one UNPIN.
    def _reuse_pin(self, oid: bytes) -> Optional["_PinEntry"]:
        with self._ref_lock:
            pin = self._pins.get(oid)
            if pin is None or not pin.live:
                return None
            pin.count += 1
            return pin

    def adopt_pins(self, body: dict) -> List[tuple]:
        """Take over the pins the agent made for an EXECUTE's shared arguments.

        Each becomes this process's pin on the object (or, if it has one
        already, an extra to give back); the caller reads the arguments, then
        hands the result to :meth:`release_pins`, and the views keep their own.
        """
        adopted = []
        for desc in body.get("deps", ()):
            if not desc.get("pin"):
                continue
            oid = desc["o"]
            pin = _PinEntry(desc.get("off", 0))
            with self._ref_lock:
                current = self._pins.get(oid)
                if current is None or not current.live:
                    self._pins[oid] = pin
            adopted.append((oid, pin))
        return adopted

    def release_pins(self, adopted: List[tuple]) -> None:
        for oid, pin in adopted:
            self.unpin(oid, pin)

    def unpin(self, oid: bytes, pin: "_PinEntry") -> None:
        with self._ref_lock:
            pin.count -= 1
            last = pin.count == 0
        if last and not self.closed:
            self._send_item(("ref", Op.UNPIN, oid, pin))

    def _unpin_due(self, item: tuple) -> bool:
        """Whether a queued UNPIN is still to be sent (no read took its pin over)."""
        pin = item[3]
        with self._ref_lock:
            if pin.count > 0 or not pin.live:
                return False
            pin.live = False
            if self._pins.get(item[2]) is pin:
                del self._pins[item[2]]
            return True

    def future_of(self, ref: ObjectRef) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        oid = ref._id

        def resolve() -> None:
            desc = self._cache.get(oid)
            if threading.current_thread() is self._thread and desc is not None \
                    and desc.kind == ObjectKind.SHARED:
                # Reading a shared object needs a round trip: not on the thread
                # that watches the connection.
                threading.Thread(target=resolve, daemon=True).start()
                return
            try:
                future.set_result(self.materialize(oid, self._cache[oid]))
            except BaseException as exc:
                future.set_exception(exc)
            keep.clear()

        keep = [ref]  # the ref must live until the value is here
        new: List[bytes] = []
        with self._cond:
            if oid in self._cache:
                ready = True
            else:
                ready = False
                self._callbacks.setdefault(oid, []).append(resolve)
                _, new = self._request_missing([oid])
        if ready:
            resolve()
        else:
            self._fetch(new)
            self._background.set()  # the I/O thread reads while futures wait
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
        # The agent pushes a task's results to its submitter: no FETCH needed.
        self._requested.update(ref._id for ref in refs)
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


class _PinEntry:
    """One PIN this process holds at its agent: where the object is, and how
    many reads use it (guarded by the client's ``_ref_lock``)."""

    __slots__ = ("offset", "count", "live")

    def __init__(self, offset: int) -> None:
        self.offset = offset
        self.count = 1
        self.live = True     # False once its UNPIN is on its way


class _Pin:
    """Held by every view of one read of a shared object; unpins when they are gone."""

    __slots__ = ("client", "ref", "pin")

    def __init__(self, client: Client, ref: ObjectRef, pin: _PinEntry) -> None:
        self.client = client
        self.ref = ref
        self.pin = pin

    def __del__(self) -> None:
        self.client.unpin(self.ref._id, self.pin)


def _process_alive(pid: int) -> bool:
    import psutil

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
