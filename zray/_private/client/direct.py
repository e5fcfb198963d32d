"""The caller's side of the direct paths: calls sent straight to a worker.

::

    call ──▶ DIRECT_CALL to the worker, at once
         └─▶ SUBMIT to the agent (it records the call: refs, retries, events,
             failures), queued in order, with the next message to the agent
    worker ──DIRECT_REPLY──▶ here: inline results and errors, one hop
           ──TASK_DONE──▶ agent: seals the results, pushes those not inline

Actors: the agent offers the path (ACTOR_DIRECT) when the actor lives on
this node and every call this caller made to it is done; the offer names
how many calls the agent had from us, and is taken only if that is every
call we sent its way, so no call can overtake an earlier one.  From then on
every call to that actor goes direct; one with ref arguments waits here
until they are ready (and the calls after it wait behind it), then goes,
and the worker gets them itself.  The agent withdraws the offer when the
worker is gone and answers for the calls that were on their way.

Leases: a worker the agent lends us (LEASE) for one function's plain tasks
takes them one at a time; taken back, we answer RELEASED with how many we
sent on it.

Owns: the DEALERs to workers, which actors and leases use them, the calls
kept for their arguments, and the count of calls sent to each actor through
the agent.  Must not: touch the agent's socket or the object cache's
tables; results go through ``arrived``.
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
                 arrived: Callable[[dict, Sequence[Any]], Optional[list]],
                 has: Callable[[bytes], bool] = lambda oid: True,
                 watch: Callable[[bytes, Callable[[], None]], None] = lambda oid, then: None
                 ) -> None:
        self.transport = transport
        self.agent_address = agent_address
        self.arrived = arrived
        self.has = has        # whether an object is here (ready) ...
        self.watch = watch    # ... and a callback for when it is
        #: actor ID -> its direct calls that wait for their ref arguments here, and
        #: the calls made after them (an actor must not block on an argument that
        #: one of its own later calls may be what makes).
        self.held: Dict[bytes, collections.deque] = {}
        self.channels: Dict[bytes, bytes] = {}    # actor ID -> its worker, while calls go direct
        self.actor_workers: Dict[bytes, bytes] = {}  # ... and until the offer is withdrawn
        self.sent: Dict[bytes, int] = collections.Counter()  # calls sent the agent's way
        self.leases: Dict[bytes, list] = {}  # function ID -> [worker ID, DEALER, sent, busy]
        self.on_lease_worker: Dict[bytes, list] = {}   # task ID -> its lease, until answered
        self.sockets: Dict[bytes, Any] = {}      # worker ID -> its DEALER

    def route(self, spec: dict) -> bool:
        """Mark an actor call direct (True) if its actor's path is open; else count it."""
        aid = spec["actor_id"]
        wid = self.channels.get(aid)
        if wid is not None:
            spec["direct"] = wid
            return True
        self.sent[aid] += 1
        return False

    def waits(self, spec: dict) -> bool:
        """Whether a direct call must wait here for its ref arguments (or for
        calls before it that do); if so it is kept, and sent when they are here."""
        aid = spec["actor_id"]
        queue = self.held.get(aid)
        missing = [oid for oid in spec.get("deps", ()) if not self.has(oid)]
        if queue is None and not missing:
            return False
        if queue is None:
            queue = self.held[aid] = collections.deque()
        queue.append(spec)
        for oid in missing:
            self.watch(oid, lambda: self.release(aid))
        return True

    def release(self, aid: bytes) -> None:
        """Send the kept calls to ``aid`` whose arguments are all here, in order."""
        queue = self.held.get(aid)
        while queue and all(self.has(oid) for oid in queue[0].get("deps", ())):
            spec = queue.popleft()
            if self.channels.get(aid) == spec["direct"]:  # (else the agent answers for it)
                self.transport.outbox.call(spec)
        if not queue:
            self.held.pop(aid, None)

    def on_offer(self, body: dict, raw: Sequence[Any] = ()) -> None:
        """ACTOR_DIRECT: open the path to an actor's worker, or close it."""
        aid, wid = body["actor_id"], body["worker_id"]
        self.close(aid)
        self.held.pop(aid, None)  # the agent answers for those kept: its worker is gone
        gone = self.actor_workers.pop(aid, None)  # withdrawn, or the actor has a new worker
        if gone is not None:
            self.transport.remove_socket(self.sockets.pop(gone))
        endpoint = protocol.direct_endpoint(self.agent_address, wid) if wid and ENABLED else ""
        if not endpoint or self.sent[aid] != body["seen"]:
            return  # withdrawn, or a call we sent is not in the agent's count yet
        self.connect(wid, endpoint)
        self.channels[aid] = self.actor_workers[aid] = wid

    def connect(self, wid: bytes, endpoint: str) -> Any:
        sock = self.transport.add_socket(zmq.DEALER, self.on_reply)
        sock.connect(endpoint)
        self.sockets[wid] = sock
        self.transport.outbox.direct = self.send
        return sock

    def close(self, aid: bytes) -> None:
        """Later calls to the actor go through the agent; answers to those sent
        still come (the socket goes when the offer is withdrawn)."""
        self.channels.pop(aid, None)

    # ------------------------------------------------------------------ leases
    def route_task(self, spec: dict) -> bool:
        """Mark a task direct (True) if a worker is lent to us for its function
        and is not running one of ours: one at a time, so tasks that could run
        side by side on other workers go the agent's way and do."""
        lease = self.leases.get(spec["function_id"])
        if lease is None or lease[3] or not protocol.leasable(spec):
            return False
        spec["direct"] = lease[0]
        lease[2] += 1
        lease[3] = True
        self.on_lease_worker[spec["task_id"]] = lease
        return True

    def on_lease(self, body: dict, raw: Sequence[Any] = ()) -> None:
        """LEASE: a worker lent to us for one function's tasks, or taken back
        (answered with RELEASED: how many tasks went on it; an offer we do not
        take is answered at once, with none)."""
        fid, wid = body["function_id"], body["worker_id"]
        endpoint = protocol.direct_endpoint(self.agent_address, wid) if wid and ENABLED else ""
        lease = self.leases.get(fid)
        if endpoint and lease is None:
            self.leases[fid] = [wid, self.connect(wid, endpoint), 0, False]
            return
        if wid and lease is not None:
            if lease[0] == wid:
                return  # ours already
            lease = None  # a second offer for the same function: declined
        elif not wid:
            lease = self.leases.pop(fid, None)
        released = {"function_id": fid, "worker_id": lease[0] if lease else wid,
                    "sent": lease[2] if lease else 0}
        if released["worker_id"]:
            self.transport.outbox.send(_encode(Op.RELEASED, released))
        if lease is not None and not wid:
            for tid in [t for t, held in self.on_lease_worker.items() if held is lease]:
                del self.on_lease_worker[tid]  # (its worker died: no answer comes)
            self.sockets.pop(lease[0], None)
            self.transport.remove_socket(lease[1], linger=5000)  # its calls still go

    def send(self, specs: List[dict]) -> None:
        """The outbox's hook (with the socket lock held): direct calls to one actor.
        A call that cannot be sent is the agent's to answer (it gets the SUBMIT)."""
        sock = self.sockets.get(specs[0]["direct"])
        if sock is not None:
            try:
                sock.send_multipart(_encode(Op.DIRECT_CALL, {"tasks": specs}), zmq.NOBLOCK)
            except zmq.ZMQError:
                pass

    def on_reply(self, frames: List[Any]) -> None:
        """DIRECT_REPLY: a call's inline results (and errors) become ready here."""
        op, body, raw = protocol.decode(frames)
        if op != Op.DIRECT_REPLY:
            raise protocol.ProtocolError(f"expected DIRECT_REPLY, got {op.name}")
        defer = self.transport.defer
        for done, done_raw in protocol.unpack_batch(body, raw):
            lease = self.on_lease_worker.pop(done["task_id"], None)
            if lease is not None:
                lease[3] = False  # free for our next task
            if done.get("retryable"):
                continue  # the agent may run it again: its answer comes from there
            for result in done["results"]:
                # Shared results need a pin from the agent, and refs inside a result
                # must be known there first: the agent pushes those.
                if result["kind"] in _DIRECT_KINDS and not result.get("contained"):
                    for callback in self.arrived(result, done_raw) or ():
                        defer(callback)
