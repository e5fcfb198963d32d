"""The records of client (driver or worker) <-> node agent messages, and the
task spec and object descriptor every part shares (see the package's docstring)."""

from __future__ import annotations

import enum
from typing import Any, Dict, List, Optional, Tuple, TypedDict

from zray._private.ids import object_id
from zray._private.protocol.runtime_env import RuntimeEnvSpec

DEFAULT_MAX_RETRIES = 3         # retries after a task's worker (or node) died, unless told

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
    runtime_env: RuntimeEnvSpec  # working_dir, py_modules, pip: built per node, by key
    direct: bytes               # an actor call also sent straight to this worker (its ID)


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
    direct: bool         # the call came straight from its caller (see ActorDirect)


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


class Interrupt(TypedDict, total=False):
    task_id: bytes
    force: bool          # if it is running, end the worker (zray.cancel(force=True))


class ActorDirect(TypedDict):
    """The direct path to a local actor, offered to one caller (or withdrawn).

    Offered when every call the caller made to the actor is done: ``seen``
    counts the calls the agent had from it, and the caller takes the offer
    only if that is all it sent, so no call it sent the agent's way can be
    overtaken.  ``worker_id`` names the worker (see :func:`direct_endpoint`);
    empty, the offer is withdrawn (the worker is gone): calls go through the
    agent again, which answers for those sent direct.
    """
    actor_id: bytes
    worker_id: bytes
    seen: int


class Lease(TypedDict):
    """A worker lent to one caller for its tasks of one function: it sends
    them straight to the worker (see :func:`leasable`).  An empty
    ``worker_id`` takes the lease back; the caller answers RELEASED."""
    function_id: bytes
    worker_id: bytes


class Released(TypedDict):
    """A lease given back, after ``sent`` tasks went on it (their SUBMITs came first)."""
    function_id: bytes
    worker_id: bytes
    sent: int


#: Fields a task sent on a lease must not have: a lease is for plain tasks of
#: one function whose arguments are all in the spec.
_NOT_LEASABLE = ("deps", "contained", "args_object", "resources", "scheduling_strategy",
                 "runtime_env", "generator", "max_calls", "actor_id", "env_vars")


def leasable(spec: TaskSpec) -> bool:
    """Whether a task may run on a leased worker (both ends ask this)."""
    return spec.get("num_returns", 1) == 1 and not any(k in spec for k in _NOT_LEASABLE)


def direct_endpoint(agent_address: str, worker_id: bytes) -> str:
    """Where an actor's worker takes direct calls: next to its agent's socket
    (same node, ipc only); "" when the agent is not on ipc."""
    if not agent_address.startswith("ipc://"):
        return ""
    return f"{agent_address.rsplit('/', 1)[0]}/zray_w_{worker_id.hex()}.sock"
