"""The connection a driver or worker has to its node agent.

::

    submit/put/refs/done ──▶ outbox (coalesced) ──┐
    requests, FETCH, BLOCKED, LOG ... ────────────┼──▶ DEALER/ipc ──▶ node agent
                                                  │    (transport)
    get/wait/request: the waiting thread ─────────┴── reads the socket itself
    (the "leader"); other waiters follow on a condition; OBJECT goes to the
    object cache, replies to their request, EXECUTE/EXIT/INTERRUPT to the
    handlers a worker registered, by whoever leads.

Any thread sends on the DEALER itself, under one lock: a one-at-a-time
``get(f.remote())`` pays no hand-off to another thread on either side.
Submissions, inline puts and finished tasks queue in the outbox; a lone one
is sent at once, a burst is coalesced (a batch is sent at 64 items, or by
the I/O thread about a millisecond after the burst ends).  Ref releases
(DECREF, UNPIN) wait longer still: they cannot hurt by arriving late.  The
I/O thread sends what producers left behind, reads while futures wait and
nobody else does, and watches the agent's liveness.

Objects that arrive are kept as descriptors (not values) in the object cache
while this process holds a ref to them, so repeated gets, waits and pushed
task results cost no round trip.  Reads of shared objects keep a pin at the
agent while views live; a get's FETCH asks the agent to pin what it sends
(one round trip, not two), EXECUTE arguments come pinned too, and a pin
whose UNPIN has not been sent yet is taken over by the next read of the
same object.

Reference counting: ``add_local_ref`` / ``remove_local_ref`` count ObjectRefs
alive in this process; the agent hears only the 0→1 and 1→0 transitions.

Modules:

* ``transport``  the DEALER, its lock, leader/follower reading, the I/O
  thread, liveness, request/reply matching, handlers by op;
* ``outbox``     what is coalesced and in which order it is sent (no sockets);
* ``objects``    refs, descriptors, waiters, pins, and reading values;
* ``arguments``  a task's arguments: the submitter's encoding, the worker's decoding;
* ``connection`` the ``Client`` facade and its public verbs.
"""

from zray._private.client.arguments import ArgDep, decode_args, encode_args
from zray._private.client.connection import Client
from zray._private.client.objects import Descriptor
from zray._private.client.transport import ConnectionLost

__all__ = ["Client", "ConnectionLost", "Descriptor", "ArgDep", "encode_args", "decode_args"]
