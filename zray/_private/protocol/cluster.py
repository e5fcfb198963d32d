"""The records of node agent <-> head, node <-> node (transfer) and PUB messages
(see the package's docstring)."""

from __future__ import annotations

from typing import Any, Dict, List, TypedDict

from zray._private.protocol.local import Descriptor, Layout, ReserveName, TaskSpec

# -- node agent <-> head
class NodeHas(TypedDict, total=False):
    """What a restarted head learns back from each node (empty when a node first joins)."""
    actors: List[list]       # [actor_id, name, namespace, anchor, meta] of its live actors
    holds: List[bytes]       # objects other nodes know of whose bytes are here
    lineage: List[bytes]     # objects made elsewhere that this node can make again


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


class ObjectCopies(TypedDict, total=False):
    """Copies pulled to a node that is not their owner's, and copies it let go of:
    the head's directory lists every copy (a pull may take any)."""
    node_id: bytes
    copied: List[bytes]
    dropped: List[bytes]


class Rebuild(TypedDict):
    """No copy of an object can be had on the reader's node: its owner's node (the
    one a forwarded task's RESULT went back to, which keeps the task's lineage) is
    asked to make it again.  The head knows the owner and passes the message on."""
    object_id: bytes
    node_id: bytes              # the reader's node
    unreachable: List[bytes]    # nodes the reader could not have it from


class Rebuilt(TypedDict):
    """The owner's answer (or the head's, when no alive node owns the object), to
    ``node_id``: the nodes that hold it now, or, if none, the error its readers get."""
    object_id: bytes
    node_id: bytes              # the reader's node, the one that asked
    holders: List[bytes]
    error_type: str             # ObjectLostError, OwnerDiedError ... ("" with holders)
    message: str


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
