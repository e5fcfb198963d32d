"""The client's socket: one DEALER to the node agent, and who reads it when.

Owns the socket, the lock every call on it takes, the reading protocol
(leader and followers), the I/O thread, the agent's liveness, and the
request/reply matching.  What arrives is handed to the handlers registered
with :meth:`Transport.on`; the transport reads no message body except
WELCOME and replies (it must not know about objects or tasks).

Reading::

    thread waiting on something ──▶ becomes the *leader*: drains the socket,
                                    polls it, dispatches each message
    other waiting threads ─────────▶ *followers*: sleep on a condition, woken
                                    when the leader dispatched something or
                                    stepped down (then one of them leads)

The thread that needs a message reads the socket itself, so a lone
``get(f.remote())`` pays no hand-off to another thread.  Handlers registered
with ``after_read=True`` (and callbacks given to :meth:`defer`) run once the
leader has stepped down, never in the middle of dispatching.

The I/O thread sends what producers left in the outbox, reads while
callbacks (ref futures) wait and nobody else reads, and watches the agent's
process (and a worker's parent): when either is gone the connection is
*lost*, every waiter wakes, and the listeners given to :meth:`on_lost` run.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import select
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import zmq

from zray import exceptions
from zray._private import protocol
from zray._private.client.outbox import BATCH_WINDOW, Outbox
from zray._private.protocol import Op

logger = logging.getLogger("zray")

_LIVENESS_CHECK = 0.5      # how often the I/O thread looks at the agent's process
_IDLE_TICK = 0.05          # how often the I/O thread reads when nobody else does
_FOLLOWER_RECHECK = 0.05   # a waiting follower looks again this often, wake-up or not
_ZERO_COPY_MIN = 65536     # smaller frames are copied (cheaper than zero-copy)
_EVENTS = int(zmq.EVENTS)  # plain ints: pyzmq's flag enums are slow to combine
_POLLIN = int(zmq.POLLIN)
_NOBLOCK = int(zmq.NOBLOCK)

#: Replies matched to their request by ``req``.
_REPLIES = frozenset({Op.ALLOC_REPLY, Op.PIN_REPLY, Op.QUERY_REPLY, Op.NAME_RESERVED,
                      Op.ERROR})

Handler = Callable[[dict, Sequence[Any]], None]
Reply = Tuple[Op, dict, Sequence[Any]]


class ConnectionLost(exceptions.NodeDiedError):
    """The node agent (or, for a worker, its parent) is gone."""


def _never() -> bool:
    return False


def _nothing(oid: bytes, pin: Any) -> bool:
    return True


class Transport:
    """The DEALER, its locks, the leader/follower reading and the I/O thread.

    Built without I/O; :meth:`start` connects and starts the I/O thread.
    ``unpin_due`` is handed to the outbox; ``reading_wanted`` tells the I/O
    thread that callbacks wait for messages, so it reads actively.
    """

    def __init__(self, address: str, identity: bytes, *, kind: str,
                 agent_pid: Optional[int] = None,
                 unpin_due: Callable[[bytes, Any], bool] = _nothing,
                 reading_wanted: Callable[[], bool] = _never) -> None:
        self.address = address
        self.identity = identity
        self.kind = kind
        self.agent_pid = agent_pid
        self.welcome: Dict[str, Any] = {}
        self.closed = False
        self.lost: Optional[str] = None

        self._lock = threading.Lock()              # every call on the socket
        self._leader = threading.Lock()            # held by the one thread reading
        self._cond = threading.Condition(threading.Lock())  # followers sleep on it
        self._followers = 0
        self._deferred: "collections.deque" = collections.deque()
        self._handlers: Dict[Op, Tuple[Handler, bool]] = {}
        self._lost_listeners: List[Callable[[], None]] = []
        self._replies: Dict[int, Reply] = {}
        self._side: Dict[Any, Callable[[List[Any]], None]] = {}  # see add_socket
        self._req_ids = itertools.count(1)
        self._reading_wanted = reading_wanted
        self._background = threading.Event()       # wakes the I/O thread
        self.outbox = Outbox(self._send_locked, lock=self._lock,
                             after_send=self._after_send_locked,
                             wake=self._background.set, unpin_due=unpin_due)

        self._ctx: Any = None
        self._sock: Any = None
        self._sock_closed = True
        self._poller: Any = None
        self._wake_r = self._wake_w = -1
        self._thread = threading.Thread(target=self._io_loop, name="zray-io", daemon=True)

    # ------------------------------------------------------------------ wiring
    def on(self, op: Op, handler: Handler, *, after_read: bool = False) -> None:
        """Call ``handler(body, raw)`` for each ``op`` that arrives.

        With ``after_read`` it runs once the reading thread has stepped down
        (for handlers that may raise into it, like a KeyboardInterrupt).
        """
        self._handlers[op] = (handler, after_read)

    def on_lost(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` once the connection is lost."""
        self._lost_listeners.append(listener)

    def defer(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once the reading thread steps down (reading thread only)."""
        self._deferred.append(callback)

    def wake_io(self) -> None:
        """Let the I/O thread look at the outbox and the callbacks now."""
        self._background.set()

    def is_io_thread(self) -> bool:
        return threading.current_thread() is self._thread

    # ------------------------------------------------------------------ start/stop
    def start(self) -> None:
        """Connect the DEALER (the agent may bind just after) and start the I/O thread."""
        self._ctx = zmq.Context()
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, self.identity)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.setsockopt(zmq.RECONNECT_IVL, 10)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._poller = select.poll()
        self._poller.register(sock.getsockopt(zmq.FD), select.POLLIN)
        self._poller.register(self._wake_r, select.POLLIN)
        sock.connect(self.address)
        self._sock = sock
        self._sock_closed = False
        self._thread.start()

    def close(self) -> None:
        """Say BYE (unless lost), stop the I/O thread and close the socket."""
        if self.closed:
            return
        started = self._thread.is_alive()
        if started and not self.lost:
            self.outbox.send(protocol.encode(Op.BYE, {}))
        self.closed = True
        self._wake_leader()
        self._background.set()
        if started and threading.current_thread() is not self._thread:
            self._thread.join(timeout=2)
        if not self._thread.is_alive():
            self._close_socket()
        with self._cond:
            self._cond.notify_all()

    def _close_socket(self) -> None:
        with self._lock:
            if self._sock_closed:
                return
            self.outbox.close_locked()
            self._sock_closed = True
            for side in self._side:
                side.close(linger=0)
            self._side.clear()
            self._sock.close(linger=100)
            self._ctx.term()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    # ------------------------------------------------------------------ side sockets
    def add_socket(self, kind: int, handler: Callable[[List[Any]], None]) -> Any:
        """A socket read along with the agent's: ``handler(frames)`` for each
        message, on the reading thread (the direct path: a worker's ROUTER for
        its actor's callers, a caller's DEALER to an actor's worker).  Bind or
        connect it, and send on it with :meth:`send_on` (or with the lock held)."""
        sock = self._ctx.socket(kind)
        for option in (zmq.LINGER, zmq.SNDHWM, zmq.RCVHWM):
            sock.setsockopt(option, 0)
        with self._lock:
            self._side[sock] = handler
            self._poller.register(sock.getsockopt(zmq.FD), select.POLLIN)
        self._wake_leader()  # a reader asleep in poll() takes the new socket in
        return sock

    def remove_socket(self, sock: Any, linger: int = 0) -> None:
        """Read what ``sock`` has received, then close it (what it still has to
        send goes within ``linger`` ms).  Called by a handler: answers that came
        on it before the message that closes it are not lost."""
        pending = []
        with self._lock:
            handler = self._side.pop(sock, None)
            if handler is None or self._sock_closed:
                return
            while sock.get(_EVENTS) & _POLLIN:
                pending.append(sock.recv_multipart(_NOBLOCK))
            self._poller.unregister(sock.getsockopt(zmq.FD))
            sock.close(linger=linger)
        for frames in pending:
            handler(frames)

    def send_on(self, sock: Any, frames: List[Any]) -> bool:
        """Send on a side socket now, never blocking; False if it could not."""
        with self._lock:
            if self._sock_closed or sock not in self._side:
                return False
            try:
                sock.send_multipart(frames, _NOBLOCK, copy=all(len(f) < _ZERO_COPY_MIN
                                                               for f in frames))
            except zmq.ZMQError:
                return False
            self._after_send_locked()
        return True

    # ------------------------------------------------------------------ sending
    def _send_locked(self, frames: List[Any]) -> None:
        self._sock.send_multipart(frames, copy=len(frames) == 1 or
                                  all(len(f) < _ZERO_COPY_MIN for f in frames[1:]))

    def _after_send_locked(self) -> None:
        # The socket's FD is edge-triggered: a send may consume the signal of
        # a message that arrived meanwhile, so a reader asleep in poll() must
        # be told to look again.  With no reader, the next one drains before
        # it polls.
        if self._leader.locked() and (self._sock.get(_EVENTS) & _POLLIN or any(
                side.get(_EVENTS) & _POLLIN for side in self._side)):
            self._wake_leader()

    def _wake_leader(self) -> None:
        try:
            os.write(self._wake_w, b"w")
        except OSError:
            pass  # the pipe is full (a wake-up is pending anyway) or closed

    def request(self, op: Op, body: dict, *raw: Any, timeout: float = 60.0) -> Reply:
        """Send a request and wait for its reply; an ERROR reply is raised."""
        req = next(self._req_ids)
        body["req"] = req
        self.outbox.send(protocol.encode(op, body, *raw))
        replies = self._replies
        if not self.wait_until(lambda: req in replies, time.monotonic() + timeout):
            raise TimeoutError(f"zray node agent did not answer {op.name} in {timeout:.0f}s")
        reply = replies.pop(req)
        if reply[0] == Op.ERROR:
            error = reply[1]
            raise exceptions.from_error(error.get("error_type", ""),
                                        error.get("message", f"{op.name} failed"))
        return reply

    # ------------------------------------------------------------------ receiving
    def raise_if_lost(self) -> None:
        if self.lost:
            raise ConnectionLost(self.lost)
        if self.closed:
            raise ConnectionLost("zray has been shut down in this process")

    def wait_until(self, done: Callable[[], bool], deadline: Optional[float] = None, *,
                   raise_if_lost: bool = True) -> bool:
        """Read and dispatch messages until ``done()``; False at ``deadline``.

        A lost or closed connection raises ConnectionLost, or without
        ``raise_if_lost`` returns False.
        """
        self.outbox.flush()
        while True:
            if done():
                return True
            if raise_if_lost:
                self.raise_if_lost()
            elif self.closed or self.lost:
                return False
            left = _LIVENESS_CHECK if deadline is None else deadline - time.monotonic()
            if left <= 0:
                return done()
            if self._leader.acquire(False):
                try:
                    if not self._drain() and not done():
                        self._poll(min(left, _LIVENESS_CHECK))
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

    def receive_pending(self) -> None:
        """Dispatch what has arrived, without waiting (unless another thread reads)."""
        if self._leader.acquire(False):
            try:
                self._drain()
            finally:
                self._leader.release()
                self._step_down()

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
            with self._lock:
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
            if self._side:
                count += self._drain_side()
            if len(batch) < 256:
                break
        if count and self._followers:
            with self._cond:
                self._cond.notify_all()
        return count

    def _drain_side(self) -> int:
        batch = []
        with self._lock:
            if self._sock_closed:
                return 0
            for sock, handler in self._side.items():
                while sock.get(_EVENTS) & _POLLIN:
                    batch.append((handler, sock.recv_multipart(_NOBLOCK)))
        for handler, frames in batch:
            try:
                handler(frames)
            except Exception as exc:  # one bad message must not break the reader
                logger.warning("zray: ignoring a malformed direct message: %r", exc)
        return len(batch)

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

    def _dispatch(self, frames: List[Any]) -> None:
        try:
            op, body, raw = protocol.decode(frames)
        except protocol.ProtocolError as exc:
            logger.warning("zray: ignoring a malformed message from the agent: %s", exc)
            return
        entry = self._handlers.get(op)
        if entry is not None:
            handler, after_read = entry
            if after_read:
                self._deferred.append(lambda: handler(body, raw))
                return
            try:
                handler(body, raw)
            except Exception as exc:  # one bad message must not break the reader
                logger.warning("zray: ignoring a malformed %s from the agent: %r",
                               op.name, exc)
        elif op in _REPLIES:
            req = body.get("req", 0)
            if req == 0 and op == Op.ERROR:  # an answer to a message that was no request
                logger.warning("zray: the node agent refused a message: %s",
                               body.get("message", body))
                return
            self._replies[req] = (op, body, raw)
        elif op == Op.WELCOME:
            self.welcome = body
            self.agent_pid = self.agent_pid or body.get("pid")
        else:
            logger.warning("zray: ignoring an unexpected %s from the agent", op.name)

    # ------------------------------------------------------------------ I/O thread
    def _io_loop(self) -> None:
        """Sends what the outbox holds when its producer moves on, serves
        callbacks, delivers logs and interrupts while no other thread reads,
        and watches the agent's (and a worker's parent's) liveness."""
        next_check = time.monotonic() + _LIVENESS_CHECK
        background = self._background
        outbox = self.outbox
        try:
            while not self.closed:
                if self._reading_wanted():
                    # Callbacks wait: read actively, as a leader would.
                    if self._leader.acquire(timeout=_IDLE_TICK):
                        try:
                            outbox.flush_if_idle()
                            if not self._drain():
                                self._poll(_IDLE_TICK)
                                self._drain()
                        finally:
                            self._leader.release()
                            self._step_down()
                else:
                    background.wait(_IDLE_TICK)
                    background.clear()
                    if outbox.has_queued:
                        time.sleep(BATCH_WINDOW)  # let a burst grow into one message
                    outbox.flush(True)
                    self.receive_pending()
                now = time.monotonic()
                if now >= next_check:
                    next_check = now + _LIVENESS_CHECK
                    outbox.flush(True)
                    self._check_liveness()
                    if self.lost:
                        break
        except Exception as exc:  # the I/O thread must not vanish silently
            if not self.closed:
                self._mark_lost(f"zray connection thread failed: {exc!r}")
        finally:
            if self.closed:
                self._close_socket()

    def _check_liveness(self) -> None:
        if self.agent_pid and not _process_alive(self.agent_pid):
            self._mark_lost(f"the zray node agent (pid {self.agent_pid}) has died")
        elif self.kind == "worker" and os.getppid() == 1:
            self._mark_lost("the worker's parent process has exited")

    def _mark_lost(self, why: str) -> None:
        self.lost = why
        for listener in self._lost_listeners:
            try:
                listener()
            except Exception:
                logger.exception("zray: a connection-lost listener failed")
        with self._cond:
            self._cond.notify_all()
        self._wake_leader()


def _process_alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
