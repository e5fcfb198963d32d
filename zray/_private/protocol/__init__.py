"""Every message zray processes exchange, and how it is framed.

A message is a list of ZeroMQ frames::

    [header, *raw]

``header`` is msgpack of ``[VERSION, op, body]``: ``op`` an :class:`Op`, ``body``
a dict of plain values declared below as one ``TypedDict`` per op (its fields
are the keys on the wire).  Bulk bytes (object data, pickled functions, large
arguments) never go through msgpack: they follow the header as frames of their
own, named in a body by their index into ``raw`` (fields called ``frame``).  A
ROUTER peer sees the sender's identity frame first.

Requests that expect an answer carry ``req``, a number the reply repeats;
every request gets its reply or an :class:`Error`, never silence.

Who talks to whom::

    driver / worker ──DEALER──▶ node agent ROUTER   (Hello ... Unpin)
    driver / worker ──DEALER──▶ worker ROUTER       (DirectCall, DirectReply: same node)
    node agent ──▶ driver / worker                  (Welcome ... Exit, Error)
    node agent ◀──DEALER/ROUTER──▶ head             (Register ... KillActor)
    node agent ──DEALER──▶ peer's transfer ROUTER   (Pull, Chunk)
    head PUB ──▶ node agents' SUB                   (PubNode, PubObject)

This package is the one place that says what a message is, and it holds the
constants both ends of a connection must agree on: the op codes and constants
here, each op's record in a module by who talks (``local``: client and node
agent, with the task spec and object descriptor; ``cluster``: node agent and
head, node and node, the PUB channel; ``placement``: placement groups), all read
as ``protocol.<Name>``.  It imports nothing from
the rest of zray but the IDs (:mod:`zray._private.ids`).
"""

from __future__ import annotations

import enum
from typing import Any, Dict

VERSION = 2

INLINE_THRESHOLD = 100 * 1024   # objects at most this big travel inline in messages
HEARTBEAT_INTERVAL = 0.5        # liveness, both ways between the head and each agent ...
HEARTBEAT_LIVENESS = 6          # ... missed intervals before the peer is taken for dead
# DEFAULT_MAX_RETRIES (retries after a worker or node died, unless told) is in local.py
MAX_RETURNS = 10_000            # results one task may declare (num_returns)
CHUNK_BYTES = 8 * 1024 * 1024   # object transfer between nodes: the piece of one PULL ...
CHUNK_WINDOW = 4                # ... and how many are in flight per object pulled
TOPIC_NODE = b"node"            # the head's PUB topics (the frame before the header)
TOPIC_OBJECT = b"obj"


class Op(enum.IntEnum):
    # client (driver or worker) -> node agent
    HELLO = 1
    EXPORT = 2          # a pickled function, sent once before its first task
    SUBMIT = 3          # a batch of task specs
    ADDREF = 4
    DECREF = 5
    FETCH = 6           # ask for objects; answered with OBJECT as each is ready
    PUT = 7             # inline objects, a frame each
    ALLOC = 8           # reserve arena space for a large object
    SEAL = 9            # a large object written into its reserved space
    BLOCKED = 10        # worker waits in get/wait: lend its CPU
    UNBLOCKED = 11
    TASK_DONE = 12
    LOG = 13            # lines a task printed (also node -> head -> node, to its driver)
    CANCEL = 14
    QUERY = 15          # read-only questions about the node or cluster
    BYE = 16
    ABORT = 17          # give back an ALLOC that will never be sealed
    KILL = 18           # end an actor
    PIN = 19            # map a shared object: answered with its current offset
    UNPIN = 20          # the last view of a pinned object is gone
    RESERVE_NAME = 21   # claim a name for an actor about to be created
    YIELDED = 22        # a generator task's next item (a TaskDone's fields; the task goes on)
    RELEASED = 23       # a worker lease given back: how many tasks were sent on it

    # client <-> an actor's worker on the same node (the direct path)
    DIRECT_CALL = 24    # actor calls, sent straight to the actor's worker (also SUBMITted)
    DIRECT_REPLY = 25   # a direct call's inline results (a TaskDone), straight to its caller

    # node agent -> client
    WELCOME = 40
    OBJECT = 41
    EXECUTE = 42
    ALLOC_REPLY = 43
    QUERY_REPLY = 44
    WARN = 45
    INTERRUPT = 46      # cancel the running task (KeyboardInterrupt in it)
    EXIT = 47           # retire this worker
    ERROR = 48          # a request could not be served
    PIN_REPLY = 49
    NAME_RESERVED = 50
    ACTOR_DIRECT = 51   # a caller may now send an actor's calls straight to its worker
    LEASE = 52          # a worker lent to a caller for tasks of one function (or taken back)

    # node agent <-> head
    REGISTER = 60
    REGISTERED = 61
    HEARTBEAT = 62
    HEARTBEAT_ACK = 63
    HEAD_QUERY = 64
    HEAD_REPLY = 65
    FORWARD = 66        # a task the sender's node cannot run: place it (agent -> head -> agent)
    RESULT = 67         # the outcome of a forwarded task, back to its origin node
    OBJECTS_FREED = 68  # exported objects freed on the sender's node
    KILL_ACTOR = 69     # kill an actor that lives on another node
    TASK_FAILED = 72    # the head could not run a forwarded task (head -> origin node)
    TASK_UNPLACEABLE = 73  # no node can run a forwarded task yet: it waits at the head
    EVENTS = 74         # task events, and the node's state when collected (agent -> head)
    COLLECT = 75        # send your events and state now, for a state query (head -> agent)
    JOB_ENDED = 76      # a driver left or died: end its job's work everywhere (agent <-> head)
    OBJECT_COPIES = 77  # copies pulled to the sender's node, and copies it dropped (agent -> head)
    REBUILD = 78        # make a lost object again (reader's node -> head -> owner's node)
    REBUILT = 79        # where it is now, or why it cannot be (owner's node -> head -> reader's)

    # node agent <-> node agent (object transfer ROUTER)
    PULL = 70           # send me [offset, offset + length) of an object
    CHUNK = 71          # a piece of an object (or why it cannot be sent)

    # head PUB channel
    PUB_NODE = 80       # a node joined or died
    PUB_OBJECT = 81     # objects sealed on a node, or freed everywhere

    # placement groups (records in placement.py)
    PG_REQUEST = 90     # create, remove, list, look up or wait for groups (client -> agent -> head)
    PG_REPLY = 91       # its answer (head -> agent -> client)
    BUNDLES_PREPARE = 92    # take bundles out of the free pool if they fit (head -> agent)
    BUNDLES_PREPARED = 93   # whether they did (agent -> head)
    BUNDLES_COMMIT = 94     # prepared bundles become the group's resources (head -> agent)
    BUNDLES_RELEASE = 95    # give bundles back (head -> agent)

    # job submission: a client with the cluster token <-> head (see jobs.py)
    JOB_SUBMIT = 100    # run an entrypoint on the head's machine (raw[0]: its working_dir)
    JOB_INFO = 101
    JOB_LOGS = 102      # a job's output from an offset
    JOB_STOP = 103
    JOB_LIST = 104
    JOB_DELETE = 105
    JOB_REPLY = 106


_OPS = {int(op): op for op in Op}



from zray._private.protocol.local import *  # noqa: E402,F401,F403
from zray._private.protocol.cluster import *  # noqa: E402,F401,F403
from zray._private.protocol.placement import *  # noqa: E402,F401,F403
from zray._private.protocol.runtime_env import *  # noqa: E402,F401,F403
from zray._private.protocol.jobs import *  # noqa: E402,F401,F403


#: The body declared for each op (BLOCKED, UNBLOCKED, BYE and EXIT carry nothing;
#: NAME_RESERVED is described with ReserveName).
BODIES: Dict[Op, Any] = {
    Op.HELLO: Hello, Op.EXPORT: Export, Op.SUBMIT: Submit, Op.ADDREF: ObjectIds,
    Op.DECREF: ObjectIds, Op.FETCH: Fetch, Op.PUT: Put, Op.ALLOC: Alloc, Op.SEAL: Seal,
    Op.TASK_DONE: TaskDone, Op.YIELDED: TaskDone, Op.LOG: Log, Op.CANCEL: Cancel,
    Op.QUERY: Query, Op.ABORT: Abort, Op.KILL: Kill, Op.PIN: Pin, Op.UNPIN: ObjectIds,
    Op.RESERVE_NAME: ReserveName, Op.DIRECT_CALL: Submit, Op.DIRECT_REPLY: TaskDone,
    Op.ACTOR_DIRECT: ActorDirect, Op.LEASE: Lease, Op.RELEASED: Released, Op.WELCOME: Welcome, Op.OBJECT: Descriptor,
    Op.EXECUTE: Execute, Op.ALLOC_REPLY: OffsetReply, Op.PIN_REPLY: OffsetReply,
    Op.QUERY_REPLY: QueryReply, Op.WARN: Warn, Op.INTERRUPT: Interrupt, Op.ERROR: Error,
    Op.REGISTER: NodeInfo,
    Op.REGISTERED: Registered, Op.HEARTBEAT: Heartbeat, Op.HEARTBEAT_ACK: HeartbeatAck,
    Op.HEAD_QUERY: HeadQuery, Op.HEAD_REPLY: HeadReply, Op.FORWARD: Forward,
    Op.RESULT: Result, Op.TASK_FAILED: TaskFailed, Op.TASK_UNPLACEABLE: TaskUnplaceable,
    Op.OBJECTS_FREED: ObjectsFreed, Op.KILL_ACTOR: KillActor, Op.PULL: PullRequest,
    Op.CHUNK: Chunk, Op.PUB_NODE: PubNode, Op.PUB_OBJECT: PubObject, Op.EVENTS: Events,
    Op.COLLECT: Collect, Op.JOB_ENDED: JobEnded, Op.OBJECT_COPIES: ObjectCopies,
    Op.REBUILD: Rebuild, Op.REBUILT: Rebuilt,
    Op.PG_REQUEST: PgRequest, Op.PG_REPLY: PgReply, Op.BUNDLES_PREPARE: BundlesPrepare,
    Op.BUNDLES_PREPARED: BundlesPrepared, Op.BUNDLES_COMMIT: BundlesCommit,
    Op.BUNDLES_RELEASE: BundlesRelease,
    Op.JOB_SUBMIT: JobSubmit, Op.JOB_INFO: JobRef, Op.JOB_LOGS: JobLogs, Op.JOB_STOP: JobRef,
    Op.JOB_LIST: JobList, Op.JOB_DELETE: JobRef, Op.JOB_REPLY: JobReply,
}


# Framing lives in its own module; these names are the protocol's to everyone else.
from zray._private.framing import (  # noqa: E402
    ProtocolError, decode, encode, error_body, pack_batch, unpack_batch,
)

__all__ = ["ProtocolError", "decode", "encode", "error_body", "pack_batch", "unpack_batch"]
