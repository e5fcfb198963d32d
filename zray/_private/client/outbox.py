"""The client's outgoing queue: what is coalesced, and in which order it leaves.

Owns the ordering of everything a driver or worker sends.  Small, frequent
items (task submissions, inline puts, finished tasks, ref-count changes and
pin releases) are queued here and sent together; every other message goes
through :meth:`Outbox.send`, which sends the queue first, so the agent sees
each item before anything sent after it.

Policy, kept in one place because the hot path depends on it:

* a lone submission, put or finished task goes at once (nothing would join it);
* a burst (items less than ``BURST_GAP`` apart) is coalesced: sent when
  ``FLUSH_AT`` items are queued, or by the I/O thread ``BATCH_WINDOW`` after
  the burst went quiet (``wake`` tells it);
* releases (DECREF, UNPIN) wait longer, in their own queue: a wait does not
  send them, so a loop of submit-and-get sends one message per task, not two.
  Sending them late is safe (an object lives a little longer); sending one
  after a later ADDREF of the same object is not, so an ADDREF moves the
  releases queued before it into the main queue first;
* an UNPIN still queued when a new read takes its pin over is not sent at all
  (``unpin_due`` says which).

It knows nothing of sockets: it is given ``send(frames)``, which it calls
with ``lock`` held (the transport's socket lock), so it is unit-tested with a
list.  It must not read the object cache's tables: the one question it asks
about pins goes through ``unpin_due``.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Any, Callable, List, Optional

from zray._private import protocol
from zray._private.protocol import Op

BURST_GAP = 0.0002      # items this close together are a burst, worth batching
BATCH_WINDOW = 0.001    # a burst's items queued this long are sent by the I/O thread
FLUSH_AT = 64           # ... or by the producer once this many are queued

_SUBMIT = Op.SUBMIT
_PUT = Op.PUT
_DONE = Op.TASK_DONE
_ADDREF = Op.ADDREF
_DECREF = Op.DECREF
_UNPIN = Op.UNPIN
_encode = protocol.encode


def _nothing() -> None:
    pass


def _always(oid: bytes, pin: Any) -> bool:
    return True


class Outbox:
    """Queued items, and the one lock every send of the connection takes.

    Items are tuples whose first element is the op they travel in:
    ``(SUBMIT, spec)``, ``(PUT, entry, data)``, ``(TASK_DONE, body, frames)``,
    ``(ADDREF, oid)``, ``(DECREF, oid)``, ``(UNPIN, oid, pin)``.
    """

    def __init__(self, send: Callable[[List[Any]], None], *,
                 lock: Optional[Any] = None,
                 after_send: Callable[[], None] = _nothing,
                 wake: Callable[[], None] = _nothing,
                 unpin_due: Callable[[bytes, Any], bool] = _always,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.lock = lock if lock is not None else threading.Lock()
        self._send = send              # called with self.lock held
        self._after_send = after_send  # once per locked section that sent
        self._wake = wake              # asks the I/O thread to flush soon
        self._unpin_due = unpin_due
        self._clock = clock
        self._queue: "collections.deque" = collections.deque()
        self._released: "collections.deque" = collections.deque()
        self._last_item = 0.0          # when the last submit, put or done was queued
        #: Sends direct actor calls to their workers (see submit_direct), with the lock held.
        self.direct: Callable[[List[dict]], None] = lambda specs: None
        self._lazy = 0                 # SUBMITs of direct calls at the end of the queue
        self._calls: List[dict] = []   # direct calls of a burst, not sent yet
        self.last_flush = 0.0
        self.closed = False

    # ------------------------------------------------------------------ producers
    def submit(self, spec: dict) -> None:
        self._add((_SUBMIT, spec))

    def submit_direct(self, spec: dict) -> None:
        """A direct call: sent to its worker now; its SUBMIT, which the agent needs
        soon but not first, is queued in order but sends nothing by itself: it
        goes with the next message to the agent (or within a batch window).  A
        call with refs in its arguments is SUBMITted first: the worker asks the
        agent for them, which must know the call holds them."""
        now = self._clock()
        in_burst = now - self._last_item < BURST_GAP
        self._last_item = now
        with self.lock:
            if self.closed:
                return
            self._queue.append((_SUBMIT, spec))
            self._lazy += 1
            calls = self._calls
            calls.append(spec)
            if "deps" in spec or "contained" in spec:
                self._flush_locked(False)
                self._after_send()
            elif not in_burst or len(calls) >= FLUSH_AT:
                self._send_calls_locked()
                self._after_send()
        queued = len(self._queue)
        if queued >= FLUSH_AT:
            self.flush(True)
        elif queued == 1 or self._calls:
            self._wake()

    def call(self, spec: dict) -> None:
        """A direct call whose SUBMIT was sent (or queued) before: to its worker now."""
        with self.lock:
            if self.closed:
                return
            if self._queue:
                self._flush_locked(False)
            self.direct([spec])
            self._after_send()

    def _send_calls_locked(self) -> None:
        calls, self._calls = self._calls, []
        if len(calls) == 1 or all(c["direct"] == calls[0]["direct"] for c in calls):
            self.direct(calls)
            return
        by_worker: dict = {}
        for spec in calls:
            by_worker.setdefault(spec["direct"], []).append(spec)
        for specs in by_worker.values():
            self.direct(specs)

    def put(self, entry: list, data: Any) -> None:
        """An inline object: ``entry`` is ``[object_id, layout, contained]``."""
        self._add((_PUT, entry, data))

    def task_done(self, body: dict, frames: List[Any], lazy: bool = False) -> None:
        """A finished task; ``lazy`` (a direct call whose caller has its answer
        already) sends nothing by itself, as a direct call's SUBMIT."""
        if not lazy:
            self._add((_DONE, body, frames))
            return
        with self.lock:
            self._queue.append((_DONE, body, frames))
            self._lazy += 1
        if len(self._queue) >= FLUSH_AT:
            self.flush(True)
        else:
            self._wake()

    def flush_idle(self) -> None:
        """Nothing to do for now: send what is queued and the releases, unless
        only lazy items are queued (the I/O thread sends them, and the releases
        behind them, within a batch window)."""
        if self._lazy and len(self._queue) == self._lazy:
            self._wake()
        else:
            self.flush(True)

    def addref(self, oid: bytes) -> None:
        released = self._released
        if released:
            with self.lock:  # keep this ADDREF behind the releases queued before it
                queue = self._queue
                while released:
                    queue.append(released.popleft())
        self._queue.append((_ADDREF, oid))  # goes with the next send: nothing waits on it

    def decref(self, oid: bytes) -> None:
        self._release((_DECREF, oid))

    def unpin(self, oid: bytes, pin: Any) -> None:
        self._release((_UNPIN, oid, pin))

    def _add(self, item: tuple) -> None:
        queue = self._queue
        queue.append(item)
        now = self._clock()
        in_burst = now - self._last_item < BURST_GAP
        self._last_item = now
        queued = len(queue)
        if queued >= FLUSH_AT or not in_burst:
            self.flush()  # a full batch, or a lone item that nothing would join
        else:
            self._wake()  # a burst: the I/O thread sends it soon

    def _release(self, item: tuple) -> None:
        released = self._released
        released.append(item)
        if len(released) >= FLUSH_AT:
            # Releases can come from a finalizer run in the middle of a send on
            # this very thread: never wait for the lock here.
            if self.lock.acquire(False):
                try:
                    if not self.closed:
                        self._flush_locked(True)
                        self._after_send()
                finally:
                    self.lock.release()
            else:
                self._wake()

    # ------------------------------------------------------------------ sending
    @property
    def has_queued(self) -> bool:
        """Whether items other than releases wait to be sent."""
        return bool(self._queue or self._calls)

    def send(self, frames: List[Any]) -> None:
        """Send one message now, after everything queued before it."""
        with self.lock:
            if self.closed:
                return
            if self._queue:
                self._flush_locked(False)
            self._send(frames)
            self._after_send()

    def flush(self, releases: bool = False) -> None:
        """Send the queued items (and the releases if asked)."""
        if len(self._queue) > self._lazy or (releases and (self._released or self._queue)):
            with self.lock:
                if not self.closed:
                    self._flush_locked(releases)
                    self._after_send()
        if self._calls:  # their SUBMITs may wait (see submit_direct)
            with self.lock:
                if not self.closed and self._calls:
                    self._send_calls_locked()
                    self._after_send()

    def flush_if_idle(self) -> None:
        """Send the queue if nothing has been sent for a batch window."""
        if (self._queue or self._calls) and self._clock() - self.last_flush >= BATCH_WINDOW:
            self.flush(bool(self._lazy))

    def close_locked(self) -> None:
        """Send what is left (best effort) and refuse all later sends; call with
        ``lock`` held, just before the socket closes."""
        if self.closed:
            return
        try:
            self._flush_locked(True)
        except Exception:
            pass
        self.closed = True

    def _flush_locked(self, releases: bool) -> None:
        queue = self._queue
        self._lazy = 0
        if releases:
            released = self._released
            while released:
                queue.append(released.popleft())
        send = self._send
        while queue:
            item = queue.popleft()
            op = item[0]
            if op is _SUBMIT:
                specs = [item[1]]
                while queue and queue[0][0] is _SUBMIT:
                    specs.append(queue.popleft()[1])
                send(_encode(_SUBMIT, {"tasks": specs}))
            elif op is _PUT:
                entries, frames = [item[1]], [item[2]]
                while queue and queue[0][0] is _PUT:
                    _, entry, data = queue.popleft()
                    entries.append(entry)
                    frames.append(data)
                send(_encode(_PUT, {"objects": entries}, *frames))
            elif op is _DONE:
                if queue and queue[0][0] is _DONE:
                    done = [(item[1], item[2])]
                    while queue and queue[0][0] is _DONE:
                        _, body, frames = queue.popleft()
                        done.append((body, frames))
                    body, frames = protocol.pack_batch(done)
                else:
                    body, frames = item[1], item[2]
                send(_encode(_DONE, body, *frames))
            elif op is _UNPIN:
                due = self._unpin_due
                ids = [item[1]] if due(item[1], item[2]) else []
                while queue and queue[0][0] is _UNPIN:
                    item = queue.popleft()
                    if due(item[1], item[2]):
                        ids.append(item[1])
                if ids:
                    send(_encode(_UNPIN, {"object_ids": ids}))
            else:  # ADDREF or DECREF
                ids = [item[1]]
                while queue and queue[0][0] is op:
                    ids.append(queue.popleft()[1])
                send(_encode(op, {"object_ids": ids}))
        if self._calls:
            self._send_calls_locked()
        self.last_flush = self._clock()
