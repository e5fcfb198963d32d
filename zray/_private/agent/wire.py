"""Sending, for every part of the node agent.

The agent's parts never touch a socket: they send through this one object,
which holds the client ROUTER and the DEALER to the head once the agent has
bound them (``attach``).  OBJECT messages for a client are queued during a
loop pass and sent as one batch at its end (``queue_object`` /
``flush_outgoing``): a task's results reach its caller in one message.
A unit test builds a ``Wire`` with no sockets and reads what was sent from
``sent`` and ``to_head``.

Owns: the outgoing OBJECT queue and which client is each job's driver.
Must not: decide anything; it only frames and sends.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional, Tuple

import zmq

from zray._private import protocol
from zray._private.protocol import Op

logger = logging.getLogger("zray.node")

#: Below this a zero-copy send costs more than a memcpy (measured: 24 µs a frame).
ZERO_COPY_MIN = 65536


class Wire:
    def __init__(self) -> None:
        self.router: Optional[zmq.Socket] = None
        self.head: Optional[zmq.Socket] = None
        self.outgoing: Dict[bytes, List[tuple]] = {}
        self.drivers: Dict[bytes, bytes] = {}    # job -> its driver's identity
        # Without sockets (unit tests), messages are kept here instead.
        self.sent: List[Tuple[bytes, Op, dict, tuple]] = []
        self.to_head: List[Tuple[Op, dict, tuple]] = []

    def attach(self, router: zmq.Socket, head: zmq.Socket) -> None:
        self.router = router
        self.head = head

    # -- clients
    def send(self, ident: bytes, op: Op, body: dict, *raw: Any) -> bool:
        """One message to a client, after what was queued for it; False if it is gone."""
        if self.outgoing and ident in self.outgoing:
            self.flush_outgoing(ident)
        return self.send_now(ident, op, body, *raw)

    def send_now(self, ident: bytes, op: Op, body: dict, *raw: Any) -> bool:
        if self.router is None:
            self.sent.append((ident, op, body, raw))
            return True
        try:
            big = any(len(f) > ZERO_COPY_MIN for f in raw) if raw else False
            self.router.send_multipart([ident, *protocol.encode(op, body, *raw)], copy=not big)
            return True
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EHOSTUNREACH:
                return False  # the peer left; its records go when we hear of it
            raise

    def send_batch(self, ident: bytes, op: Op, items: List[tuple]) -> bool:
        """Several ``(body, raw frames)`` messages of one op, in one send."""
        if len(items) == 1:
            body, raw = items[0]
        else:
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

    def tell_driver(self, job: bytes, op: Op, body: dict) -> bool:
        """A message to the driver of ``job``, if it is connected here."""
        driver = self.drivers.get(job)
        return driver is not None and self.send(driver, op, body)

    def warn(self, job: bytes, message: str) -> None:
        logger.warning(message)
        self.tell_driver(job, Op.WARN, {"message": message})

    # -- the head
    def send_head(self, op: Op, body: dict, *raw: Any) -> bool:
        if self.head is None:
            self.to_head.append((op, body, raw))
            return True
        try:
            self.head.send_multipart(protocol.encode(op, body, *raw), zmq.NOBLOCK)
            return True
        except zmq.Again:
            return False  # head unreachable for now; the next heartbeat carries the state
