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
    node agent ──▶ driver / worker                  (Welcome ... Exit, Error)
    node agent ◀──DEALER/ROUTER──▶ head             (Register ... KillActor)
    node agent ──DEALER──▶ peer's transfer ROUTER   (Pull, Chunk)
    head PUB ──▶ node agents' SUB                   (PubNode, PubObject)

This module is the one place that says what a message is, and it holds the
constants both ends of a connection must agree on.  It imports nothing from
the rest of zray but the IDs (:mod:`zray._private.ids`).
"""

from __future__ import annotations

import enum
from typing import Any, Dict, List, Optional, Tuple, TypedDict

from zray._private.ids import object_id

VERSION = 2

INLINE_THRESHOLD = 100 * 1024   # objects at most this big travel inline in messages
HEARTBEAT_INTERVAL = 0.5        # liveness, both ways between the head and each agent ...
HEARTBEAT_LIVENESS = 6          # ... missed intervals before the peer is taken for dead
DEFAULT_MAX_RETRIES = 3         # retries after a task's worker (or node) died, unless told
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

    # node agent <-> node agent (object transfer ROUTER)
    PULL = 70           # send me [offset, offset + length) of an object
    CHUNK = 71          # a piece of an object (or why it cannot be sent)

    # head PUB channel
    PUB_NODE = 80       # a node joined or died
    PUB_OBJECT = 81     # objects sealed on a node, or freed everywhere


_OPS = {int(op): op for op in Op}


class ObjectKind(enum.IntEnum):
    INLINE = 0    # bytes in a message frame
    SHARED = 1    # lives in the node's arena at an offset
    ERROR = 2     # a pickled failure, inline


# ---------------------------------------------------------------------- records
# ``Layout`` is ``[[offset, length], ...]``: where each out-of-band buffer of a
# serialized value starts (see :func:`layout`); the pickle stream is the first.
Layout = List[List[int]]


class Descriptor(TypedDict, total=False):
    """Where one object's bytes are: OBJECT's body, an EXECUTE argument, a result.

    ``kind`` says the shape: INLINE and ERROR name a ``frame``; SHARED gives the
    arena ``offset`` and ``size``.  ``pinned`` is set when the sender pinned the
    shared object for the receiver, who owes an UNPIN once its views are gone.
    """
    object_id: bytes
    kind: int
    layout: Layout
    frame: int
    offset: int
    size: int
    contained: List[bytes]   # refs pickled inside the value (results and seals)
    pinned: bool
    inner: bool              # RESULT: not a result, a ref inside one (sent along)


class TaskSpec(TypedDict, total=False):
    """One task, actor creation or actor call, as submitted; built by :func:`task_spec`."""
    task_id: bytes
    job_id: bytes
    name: str
    function_id: bytes          # b"" for an actor call (the actor holds the code)
    num_returns: int
    resources: Dict[str, float]  # absent: {"CPU": 1}; {}: needs nothing
    max_retries: int            # -1: forever
    max_calls: int              # retire the worker after this many runs of the function
    deps: List[bytes]           # top-level ref arguments, resolved before the task runs
    contained: List[bytes]      # refs pickled inside the arguments, held while it runs
    args: bytes                 # the pickled (args, kwargs), when small
    args_layout: Layout
    args_object: bytes          # ... or the object holding them (also the last dep)
    actor_id: bytes
    method: str                 # an actor call's method
    new_actor: bool             # an actor's creation task
    max_restarts: int
    restart_count: int          # on a creation task run again after the actor died
    max_concurrency: int
    is_async: bool
    class_name: str
    actor_name: str
    namespace: str              # the job's namespace when init named one
    name_namespace: str         # a named actor's name's namespace (the namespace option)
    name_meta: dict             # ... and what a handle found by that name needs
    detached: bool
    retry_exceptions: Any       # True, or pickled exception types: retried when raised
    scheduling_strategy: list   # ["SPREAD"] or ["NODE", node_id, soft]; absent: default
    env_vars: Dict[str, str]    # runtime_env's: set around the call (an actor: for its life)
    concurrency_groups: Dict[str, int]  # an actor's: group name -> calls at once
    concurrency_group: str      # an actor call's group, over its method's own
    generator: str              # "streaming" (items: results 1, 2, ...; result 0: the count)


_TASK_FIELDS = frozenset(TaskSpec.__annotations__)


def task_spec(*, task_id: bytes, name: str, function_id: bytes = b"", num_returns: int = 1,
              resources: Optional[Dict[str, float]] = None,
              max_retries: int = DEFAULT_MAX_RETRIES, args: Optional[dict] = None,
              **extra: Any) -> TaskSpec:
    """The one place a task spec is made.

    ``args`` is what the client's argument encoder returns (``deps``,
    ``contained``, ``args``/``args_layout`` or ``args_object``); ``extra`` are
    the optional fields of :class:`TaskSpec` (actor fields, ``max_calls``),
    left out when false so the common spec stays small.
    """
    spec: TaskSpec = {"task_id": task_id, "name": name, "function_id": function_id,
                      "num_returns": num_returns, "max_retries": max_retries}
    if resources is not None:
        spec["resources"] = resources
    if args:
        spec.update(args)  # type: ignore[typeddict-item]
    for key, value in extra.items():
        if key not in _TASK_FIELDS:
            raise TypeError(f"task_spec got unknown field {key!r}")
        if value:
            spec[key] = value  # type: ignore[literal-required]
    return spec


def returns_of(spec: TaskSpec) -> List[bytes]:
    """The IDs of a task's results, known before it runs."""
    tid = spec["task_id"]
    return [object_id(tid, i) for i in range(spec.get("num_returns", 1))]


# -- client -> node agent
class Hello(TypedDict):
    kind: str        # "driver" or "worker"
    pid: int
    job_id: bytes


class Export(TypedDict):
    function_id: bytes
    name: str
    sys_path: List[str]  # the exporter's import path, so by-name references import
    # raw[0]: the pickled function


class Submit(TypedDict):
    tasks: List[TaskSpec]


class ObjectIds(TypedDict):
    """ADDREF, DECREF, UNPIN: a batch of IDs."""
    object_ids: List[bytes]


class Fetch(TypedDict, total=False):
    object_ids: List[bytes]
    pin: bool        # the caller will read them: pin shared ones, one round trip


#: A PUT entry: ``[object_id, layout, contained]``, its bytes in the frame of
#: the same index.  Kept a list, not a dict: puts are the hottest small message.
PutEntry = Tuple[bytes, Layout, List[bytes]]


class Put(TypedDict):
    objects: List[PutEntry]


class Alloc(TypedDict):
    req: int
    object_id: bytes
    size: int


class Seal(TypedDict, total=False):
    object_id: bytes
    offset: int
    size: int
    layout: Layout
    contained: List[bytes]


class Abort(TypedDict):
    object_id: bytes


class TaskDone(TypedDict, total=False):
    """A finished task (batchable: see :func:`pack_batch`)."""
    task_id: bytes
    results: List[Descriptor]
    error: str           # "Type: message" when it raised; "" otherwise
    run_seconds: float   # how long the function ran (the agent sends quick ones ahead)
    retryable: bool      # it raised an exception its retry_exceptions names: run it again


class Log(TypedDict, total=False):
    job_id: bytes
    name: str
    pid: int
    stderr: bool
    lines: List[str]
    to_node: bytes       # set by a node passing a forwarded task's output to the head


class Cancel(TypedDict):
    task_id: bytes
    force: bool


class Query(TypedDict, total=False):
    req: int
    what: str            # resources, nodes, errors, actor, named_actors, scheduler, store, head
    name: str            # for "actor"
    namespace: str       # for "actor" and "named_actors"
    all_namespaces: bool  # for "named_actors"


class ReserveName(TypedDict, total=False):
    """Answered by NAME_RESERVED: ``{req}`` when the name is now this actor's, or
    ``{req, existing}`` (the entry of the actor holding it) with ``get_if_exists``;
    an ERROR when the name is taken."""
    req: int
    namespace: str
    name: str
    actor_id: bytes
    anchor: bytes        # the creation task's result, which counts the handles
    meta: dict           # what a handle needs: class name, methods
    get_if_exists: bool


class Kill(TypedDict, total=False):
    actor_id: bytes
    no_restart: bool
    reason: str          # why, for the actor's callers (exit_actor: it exited on purpose)


class Pin(TypedDict):
    req: int
    object_id: bytes


# -- node agent -> client
class Welcome(TypedDict):
    node_id: bytes
    arena: str           # the shared-memory segment's name
    arena_size: int
    session_dir: str
    pid: int
    ip: str


class Execute(TypedDict, total=False):
    """A task for a worker (batchable)."""
    task: TaskSpec
    args: List[Descriptor]       # the deps, in order; pinned ones are the worker's to unpin
    gpu_ids: List[int]
    function_frame: int          # the pickled function, the first time this worker runs it
    sys_path: List[str]
    epoch: int                   # sent ahead: dropped if the worker blocked since (taken back)
    result_space: List[int]      # [offset, size] set aside for its one large result


class OffsetReply(TypedDict):
    """ALLOC_REPLY and PIN_REPLY."""
    req: int
    offset: int


class QueryReply(TypedDict, total=False):
    """QUERY's answer: ``req`` and the fields of the question asked."""
    req: int
    total: Dict[str, float]      # resources: the cluster's
    available: Dict[str, float]  # resources
    nodes: List[dict]            # nodes: the head's node table
    errors: List[str]            # errors: this job's unreported task errors
    used: int                    # store: bytes in the arena
    capacity: int                # store
    objects: int                 # store: objects the node knows
    spilled: int                 # store: bytes currently on disk


class Error(TypedDict, total=False):
    req: int
    error_type: str      # a name from zray.exceptions, or ValueError / TypeError
    message: str


class Warn(TypedDict):
    message: str


class Interrupt(TypedDict):
    task_id: bytes


# -- node agent <-> head
class NodeHas(TypedDict, total=False):
    """What a restarted head learns back from each node (empty when a node first joins)."""
    actors: List[list]       # [actor_id, name, namespace, anchor, meta] of its live actors
    holds: List[bytes]       # objects other nodes know of whose bytes are here


class NodeInfo(NodeHas):
    """REGISTER."""
    node_id: bytes
    ip: str
    address: str
    resources: Dict[str, float]
    store_capacity: int
    pid: int
    transfer_address: str    # "" on a node without peers
    hostname: str


class Heartbeat(TypedDict):
    node_id: bytes
    available: Dict[str, float]
    store_used: int
    queued: int
    running: int
    workers: int
    actors: int


class HeartbeatAck(TypedDict, total=False):
    nodes: List[dict]        # the head's node table (see head_records.NodeEntry.as_dict)
    seq: int
    unknown: bool            # the head does not know the sender: register again


class Registered(TypedDict):
    nodes: List[dict]
    seq: int
    pub_address: str


class HeadQuery(ReserveName, total=False):
    """Also the cluster's actor names: ``claim_name`` (ReserveName's fields and the
    claiming ``node_id``), ``release_name``, ``actor`` and ``named_actors``."""
    what: str                # nodes, status, snapshot, claim_name, release_name, actor, ...
    all_namespaces: bool
    node_id: bytes


class HeadReply(TypedDict, total=False):
    req: int
    nodes: List[dict]
    error: str
    seq: int
    directory: Dict[bytes, List[bytes]]   # snapshot: object -> nodes holding it
    unplaced: List[str]
    forwarded: int
    objects_across_nodes: int
    head_pid: int
    entry: dict              # actor / claim_name: {namespace, name, actor_id, anchor, meta}
    existing: bool           # claim_name: the entry is another actor's (get_if_exists)
    actors: List[dict]       # named_actors: [{namespace, name}]
    rows: List[dict]         # state: the rows asked for (after filters and limit)
    total: int               # state: how many matched before the limit
    summary: dict            # state: summary_tasks, summary_actors, summary_objects


class Events(TypedDict, total=False):
    """Task events, batched: raw[0] packs ``count`` of them (see agent.recorder)."""
    node_id: bytes
    count: int
    dropped: int             # events this node could not keep since its last batch
    collect: int             # answers that COLLECT; then ``state`` is set
    state: dict              # the node's workers, actors, drivers and largest objects


class Collect(TypedDict):
    collect: int


class JobEnded(TypedDict):
    job_id: bytes
    reason: str


class StateQuery(TypedDict, total=False):
    """QUERY / HEAD_QUERY ``what="state"``: rows of the cluster's state API."""
    kind: str                # tasks, actors, objects, nodes, workers, jobs (or summary_...)
    job: str                 # hex: only this job's (tasks)
    filters: List[list]      # [key, "=" or "!=", value]
    limit: int
    detail: bool


class Forward(TypedDict, total=False):
    task: TaskSpec
    origin: bytes                        # the node that owns it; its RESULT goes there
    inline: Dict[bytes, List[Any]]       # small arguments: object -> [kind, layout, frame]
    locations: Dict[bytes, List[bytes]]  # large arguments: object -> nodes holding it
    function_frame: int
    sys_path: List[str]
    exclude_node: bytes                  # a spilled task: not back to its sender


class Result(TypedDict, total=False):
    task_id: bytes
    origin: bytes
    node_id: bytes           # where it ran (and where its shared results stay)
    results: List[Descriptor]  # shared ones carry no offset: they stay on node_id
    error: str
    partial: bool            # a generator's items: the task goes on


class TaskFailed(TypedDict):
    task_id: bytes
    error_type: str
    message: str


class TaskUnplaceable(TypedDict):
    task_id: bytes
    message: str


class ObjectsFreed(TypedDict):
    node_id: bytes
    object_ids: List[bytes]


class KillActor(TypedDict):
    actor_id: bytes
    no_restart: bool


class PullRequest(TypedDict):
    object_id: bytes
    offset: int
    length: int


class Chunk(TypedDict, total=False):
    object_id: bytes
    kind: int
    layout: Layout
    size: int                # the whole object's
    offset: int              # of this chunk
    error: str               # the holder cannot send it
    # raw[0]: the bytes


class PubNode(TypedDict):
    seq: int
    event: str               # "joined" or "died"
    node_id: bytes


class PubObject(TypedDict, total=False):
    seq: int
    node_id: bytes
    sealed: List[bytes]
    freed: List[bytes]


#: The body declared for each op (BLOCKED, UNBLOCKED, BYE and EXIT carry nothing;
#: NAME_RESERVED is described with ReserveName).
BODIES: Dict[Op, Any] = {
    Op.HELLO: Hello, Op.EXPORT: Export, Op.SUBMIT: Submit, Op.ADDREF: ObjectIds,
    Op.DECREF: ObjectIds, Op.FETCH: Fetch, Op.PUT: Put, Op.ALLOC: Alloc, Op.SEAL: Seal,
    Op.TASK_DONE: TaskDone, Op.YIELDED: TaskDone, Op.LOG: Log, Op.CANCEL: Cancel,
    Op.QUERY: Query, Op.ABORT: Abort, Op.KILL: Kill, Op.PIN: Pin, Op.UNPIN: ObjectIds,
    Op.RESERVE_NAME: ReserveName, Op.WELCOME: Welcome, Op.OBJECT: Descriptor,
    Op.EXECUTE: Execute, Op.ALLOC_REPLY: OffsetReply, Op.PIN_REPLY: OffsetReply,
    Op.QUERY_REPLY: QueryReply, Op.WARN: Warn, Op.INTERRUPT: Interrupt, Op.ERROR: Error,
    Op.REGISTER: NodeInfo,
    Op.REGISTERED: Registered, Op.HEARTBEAT: Heartbeat, Op.HEARTBEAT_ACK: HeartbeatAck,
    Op.HEAD_QUERY: HeadQuery, Op.HEAD_REPLY: HeadReply, Op.FORWARD: Forward,
    Op.RESULT: Result, Op.TASK_FAILED: TaskFailed, Op.TASK_UNPLACEABLE: TaskUnplaceable,
    Op.OBJECTS_FREED: ObjectsFreed, Op.KILL_ACTOR: KillActor, Op.PULL: PullRequest,
    Op.CHUNK: Chunk, Op.PUB_NODE: PubNode, Op.PUB_OBJECT: PubObject, Op.EVENTS: Events,
    Op.COLLECT: Collect, Op.JOB_ENDED: JobEnded,
}


# Framing lives in its own module; these names are the protocol's to everyone else.
from zray._private.framing import (  # noqa: E402
    ProtocolError, decode, encode, error_body, pack_batch, unpack_batch,
)

__all__ = ["ProtocolError", "decode", "encode", "error_body", "pack_batch", "unpack_batch"]
