"""The caller's side of the direct path: actor calls sent straight to the worker.

::

    call ──▶ SUBMIT (the agent records it: refs, retries, events, failures)
         └─▶ DIRECT_CALL to the actor's worker, in the same send
    worker ──DIRECT_REPLY──▶ here: inline results and errors, one hop
           ──TASK_DONE──▶ agent: seals the results, pushes those not inline

The agent offers the path (ACTOR_DIRECT) when the actor lives on this node
and every call this caller made to it is done; the offer names how many
calls the agent had from us, and is taken only if that is every call we
sent its way, so no call can overtake an earlier one.  From then on every
call to that actor goes direct, those with ref arguments too (the worker
gets them itself), until the agent withdraws the offer because the worker
is gone; the agent answers for the calls that were on their way.

Owns: the direct channels (one DEALER per actor) and the count of calls
sent to each actor through the agent.  Must not: touch the agent's socket
or the object cache's tables; results go through ``arrived``.
"""

from __future__ import annotations

import collections
import os
from typing import Any, Callable, Dict, List, Optional, Sequence

import zmq

from zray._private import protocol
from zray._private.protocol import ObjectKind, Op

_DIRECT_KINDS = (ObjectKind.INLINE, ObjectKind.ERROR)
#: ZRAY_DIRECT_CALLS=0 keeps every call on the agent's path (to compare, or to rule it out).
ENABLED = os.environ.get("ZRAY_DIRECT_CALLS", "1") != "0"
_encode = protocol.encode


class DirectCalls:
    """Which actors this client calls directly, and the sockets to their workers."""

    def __init__(self, transport: Any, agent_address: str,
                 arrived: Callable[[dict, Sequence[Any]], Optional[list]]) -> None:
        self.transport = transport
        self.agent_address = agent_address
        self.arrived = arrived
        self.channels: Dict[bytes, tuple] = {}    # actor ID -> (worker ID, DEALER)
        self.sent: Dict[bytes, int] = collections.Counter()  # calls sent the agent's way

    def route(self, spec: dict) -> bool:
        """Mark an actor call direct (True) if its actor's path is open; else count it."""
        aid = spec["actor_id"]
        channel = self.channels.get(aid)
        if channel is not None:
            spec["direct"] = channel[0]
            return True
        self.sent[aid] += 1
        return False

    def on_offer(self, body: dict, raw: Sequence[Any] = ()) -> None:
        """ACTOR_DIRECT: open the path to an actor's worker, or close it."""
        aid, wid = body["actor_id"], body["worker_id"]
        self.close(aid)
        endpoint = protocol.direct_endpoint(self.agent_address, wid) if wid and ENABLED else ""
        if not endpoint or self.sent[aid] != body["seen"]:
            return  # withdrawn, or a call we sent is not in the agent's count yet
        sock = self.transport.add_socket(zmq.DEALER, self.on_reply)
        sock.connect(endpoint)
        self.channels[aid] = (wid, sock)
        self.transport.outbox.direct = self.send

    def close(self, aid: bytes) -> None:
        channel = self.channels.pop(aid, None)
        if channel is not None:
            self.transport.remove_socket(channel[1])

    def send(self, specs: List[dict]) -> None:
        """The outbox's hook (with the socket lock held): direct calls to one actor.
        A call that cannot be sent is the agent's to answer (it gets the SUBMIT)."""
        channel = self.channels.get(specs[0]["actor_id"])
        if channel is not None:
            try:
                channel[1].send_multipart(_encode(Op.DIRECT_CALL, {"tasks": specs}),
                                          zmq.NOBLOCK)
            except zmq.ZMQError:
                pass

    def on_reply(self, frames: List[Any]) -> None:
        """DIRECT_REPLY: a call's inline results (and errors) become ready here."""
        op, body, raw = protocol.decode(frames)
        if op != Op.DIRECT_REPLY:
            raise protocol.ProtocolError(f"expected DIRECT_REPLY, got {op.name}")
        defer = self.transport.defer
        for done, done_raw in protocol.unpack_batch(body, raw):
            for result in done["results"]:
                # Shared results need a pin from the agent, and refs inside a result
                # must be known there first: the agent pushes those.
                if result["kind"] in _DIRECT_KINDS and not result.get("contained"):
                    for callback in self.arrived(result, done_raw) or ():
                        defer(callback)
