"""Every message checked before a handler sees it, against protocol.py's declarations.

::

    frames ──protocol.decode──▶ (op, body, raw) ──check──▶ the op's handler
                                                   │
                                                   └─▶ ProtocolError, e.g.
                                  "SUBMIT: tasks[3].function_id: expected bytes, got int"

The node agent checks what its clients and the head send it; the head checks
what agents (and anyone else holding the cluster token) send it.  A message
that fails is refused whole: its handler never runs, so nothing is half done
and no resource is taken for it.

The check tables are built once, at import, from the TypedDicts of
``protocol.BODIES``: each field's declared type (bytes, str, int, float,
bool, list, dict), nested records (a TaskSpec in SUBMIT, a Descriptor in
TASK_DONE), lists and maps of them, and batches (``protocol.pack_batch``).
What an annotation cannot say is kept in the small tables below, by field
name: the size of IDs, the bounds of numbers, which fields name a frame, the
fields handlers need although their record is ``total=False``, and a few
shapes declared nowhere else (a scheduling strategy, a node table row).

Unknown fields pass (a newer peer may send more); ops with no declared body
are not checked.  Owns: the check tables.  Must not: look at state (whether a
task or a node is known): handlers answer unknown IDs themselves.
"""

from __future__ import annotations

import typing
from math import isfinite
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, TypedDict

from zray._private import ids, protocol
from zray._private.protocol import ObjectKind, Op, ProtocolError

MAX_ITEMS = 1_000_000       # entries of one list or map
MAX_FRAMES = 1_000_000      # frames of one message
MAX_RETURNS = protocol.MAX_RETURNS
MAX_BYTES = 1 << 48         # sizes and offsets of objects
MAX_COUNT = 1 << 62         # counters: requests, sequence numbers, pids
MAX_EVENTS = 100_000_000    # task events in one EVENTS batch

_ID = frozenset({ids.ID_SIZE})
_OBJECT = frozenset({ids.OBJECT_ID_SIZE})
_ID_OR_EMPTY = frozenset({0, ids.ID_SIZE})

#: The size of the IDs a bytes field, or a list of bytes, holds.
ID_SIZES: Dict[str, frozenset] = {
    "task_id": _ID, "node_id": _ID, "actor_id": _ID, "origin": _ID, "exclude_node": _ID,
    "to_node": _ID, "job_id": _ID_OR_EMPTY, "function_id": _ID_OR_EMPTY, "holders": _ID,
    "object_id": _OBJECT, "object_ids": _OBJECT, "anchor": _OBJECT, "args_object": _OBJECT,
    "deps": _OBJECT, "contained": _OBJECT, "sealed": _OBJECT, "freed": _OBJECT,
    "holds": _OBJECT, "pg_id": _ID, "bundle_nodes": _ID_OR_EMPTY, "worker_id": _ID_OR_EMPTY,
    "lineage": _OBJECT, "unreachable": _ID,
}
#: Maps keyed by object IDs, and the size of the node IDs listed in their values.
KEY_SIZES: Dict[str, frozenset] = {"inline": _OBJECT, "locations": _OBJECT,
                                   "directory": _OBJECT}
VALUE_ID_SIZES: Dict[str, frozenset] = {"locations": _ID, "directory": _ID}

_SIZE = (0, MAX_BYTES)
_COUNT = (0, MAX_COUNT)
#: Bounds of int fields.
BOUNDS: Dict[str, Tuple[int, int]] = {
    "num_returns": (0, MAX_RETURNS), "max_retries": (-1, MAX_COUNT),
    "max_restarts": (-1, MAX_COUNT), "max_calls": _COUNT, "restart_count": _COUNT,
    "max_concurrency": _COUNT, "size": _SIZE, "offset": _SIZE, "length": _SIZE,
    "arena_size": _SIZE, "store_capacity": _SIZE, "store_used": _SIZE,
    "kind": (min(ObjectKind), max(ObjectKind)), "count": (0, MAX_EVENTS), "dropped": _COUNT,
    "collect": _COUNT, "req": _COUNT, "seq": _COUNT, "epoch": _COUNT, "pid": _COUNT,
    "queued": _COUNT, "running": _COUNT, "workers": _COUNT, "actors": _COUNT,
    "frame": (0, MAX_FRAMES), "function_frame": (0, MAX_FRAMES),
    "attempt": _COUNT, "index": (0, MAX_ITEMS), "indexes": (0, MAX_ITEMS), "seen": _COUNT,
}
#: Int fields that name one of the message's raw frames.
FRAME_FIELDS = frozenset({"frame", "function_frame"})
#: Resource amounts: finite numbers; these are never negative (an "available" may be,
#: briefly, when a worker takes its CPU back).
AMOUNTS = frozenset({"resources", "available", "total"})
NON_NEGATIVE = frozenset({"resources", "total"})
#: Lists allowed more than MAX_ITEMS entries (one write of a task's output).
LIST_LIMITS: Dict[str, int] = {"lines": 1 << 40}

#: Fields handlers need from records declared ``total=False``.
REQUIRED: Dict[Any, Tuple[str, ...]] = {
    protocol.RuntimeEnvSpec: ("key",),
    protocol.TaskSpec: ("task_id", "function_id"),
    protocol.Descriptor: ("object_id", "kind", "layout"),
    protocol.Fetch: ("object_ids",),
    protocol.Seal: ("object_id", "offset", "size", "layout"),
    protocol.TaskDone: ("task_id", "results"),
    protocol.Log: ("lines",),
    protocol.Query: ("what",),
    protocol.ReserveName: ("req", "name", "actor_id", "anchor"),
    protocol.Kill: ("actor_id",),
    protocol.Execute: ("task",),
    protocol.Error: ("req",),
    protocol.QueryReply: ("req",),
    protocol.Events: ("node_id",),
    protocol.Forward: ("task", "origin"),
    protocol.Result: ("task_id",),
    protocol.Chunk: ("object_id",),
}
#: HEAD_QUERY's fields by what it asks.
NEEDED_BY_WHAT = {"claim_name": ("name", "actor_id", "anchor"),
                  "release_name": ("name", "actor_id"), "actor": ("name",)}
#: Ops whose body may be a batch of several (``protocol.pack_batch``).
BATCHED = frozenset({Op.TASK_DONE, Op.EXECUTE, Op.OBJECT})
#: How many raw frames an op may carry; every other op carries none.
FRAMES: Dict[Op, Tuple[int, int]] = {
    Op.EXPORT: (1, 1), Op.EVENTS: (0, 1), Op.CHUNK: (0, 1), Op.PUT: (0, MAX_ITEMS),
    Op.JOB_SUBMIT: (0, 1), Op.JOB_REPLY: (0, 1),   # a working_dir archive; log bytes
    **{op: (0, MAX_FRAMES) for op in (Op.TASK_DONE, Op.YIELDED, Op.OBJECT, Op.EXECUTE,
                                      Op.FORWARD, Op.RESULT)}}


# ---------------------------------------------------------------------- shapes not declared in protocol
class NodeRow(TypedDict, total=False):
    """A row of the head's node table (``head_records.NodeEntry.as_dict``), as agents read it."""
    node_id: str             # hex
    alive: bool
    resources: Dict[str, float]
    available: Dict[str, float]
    queued: int


class DriverRow(TypedDict, total=False):
    job_id: str              # hex
    pid: int


class ObjectRow(TypedDict, total=False):
    size: int


class NodeState(TypedDict, total=False):
    """EVENTS' ``state``: a node's rows for the state API (``agent.recorder``)."""
    workers: List[dict]
    actors: List[dict]
    drivers: List[DriverRow]
    objects: List[ObjectRow]
    object_totals: dict
    store: dict
    recording: dict


#: FORWARD's small arguments: ``{object_id: [kind, layout, frame]}``.
InlineArg = Tuple[int, protocol.Layout, int]

REQUIRED.update({NodeRow: ("node_id",), DriverRow: ("job_id",)})
#: Fields checked as declared here: what protocol says of them is looser.
PRECISE: Dict[str, Any] = {"nodes": List[NodeRow], "state": NodeState,
                           "inline": Dict[bytes, InlineArg]}
#: Names of a tuple's positions: each is checked as a field of that name.
TUPLE_FIELDS: Dict[Any, Tuple[str, ...]] = {
    protocol.PutEntry: ("object_id", "layout", "contained"),
    InlineArg: ("kind", "layout", "frame")}

#: Extra fields some ops carry besides their record's (see protocol.StateQuery).
EXTRA_FIELDS: Dict[Op, Any] = {Op.QUERY: protocol.StateQuery,
                               Op.HEAD_QUERY: protocol.StateQuery}


# ---------------------------------------------------------------------- refusals
class Refused(Exception):
    """A value unlike its declaration; ``path`` (innermost first) grows as it propagates."""

    def __init__(self, message: str, *path: Any) -> None:
        super().__init__(message)
        self.message = message
        self.path: List[Any] = list(path)

    def __str__(self) -> str:
        where = ""
        for step in reversed(self.path):
            where += f"[{step}]" if type(step) is int else (f".{step}" if where else str(step))
        return f"{where}: {self.message}" if where else self.message


_TYPE_NAMES = {dict: "a map", list: "a list", type(None): "nil", bytes: "bytes", str: "str",
               int: "int", float: "float", bool: "bool"}


def _got(value: Any) -> str:
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def _type_ok(value: Any, want: Any) -> bool:
    """The slow path of a type check: an int where a float is declared is fine."""
    return want is float and type(value) is int


Check = Callable[[Any, int], None]   # (value, how many raw frames came with it)
#: (type, sizes of an ID or None, (low, high) of an int or None, a deeper check or None)
Rule = Tuple[Any, Optional[frozenset], Optional[Tuple[int, int]], Optional[Check]]


def record_check(rules: Dict[str, Rule], required: Tuple[str, ...],
                 post: Optional[Check]) -> Check:
    """The check of one record: a map holding the ``required`` keys, whose known
    fields follow their ``rules``; then ``post``, for what involves several fields.
    (A closure, not an object with ``__call__``: a call costs half as much.)"""
    get = rules.get

    def check(value: Any, nraw: int) -> None:
        if type(value) is not dict:
            raise Refused(f"expected a map, got {_got(value)}")
        for key in required:
            if key not in value:
                raise Refused("missing", key)
        key = None
        try:
            for key, item in value.items():
                rule = get(key)
                if rule is None:
                    continue
                want, sizes, bounds, deep = rule
                if (type(item) is not want and not _type_ok(item, want)) \
                        or (sizes is not None and len(item) not in sizes) \
                        or (bounds is not None and not bounds[0] <= item <= bounds[1]):
                    raise refusal(rule, item)
                if deep is not None:
                    deep(item, nraw)
        except Refused as exc:
            exc.path.append(key)
            raise
        if post is not None:
            post(value, nraw)
    return check


def refusal(rule: Rule, value: Any, *path: Any) -> Refused:
    """Why ``value`` fails the plain part (type, size, bounds) of ``rule``."""
    want, sizes, bounds, _ = rule
    if type(value) is not want and not _type_ok(value, want):
        return Refused(f"expected {_TYPE_NAMES.get(want, want)}, got {_got(value)}", *path)
    if sizes is not None and len(value) not in sizes:
        return Refused(f"expected {' or '.join(map(str, sorted(sizes)))} bytes, "
                       f"got {len(value)}", *path)
    return Refused(f"{value!r:.40} is outside [{bounds[0]}, {bounds[1]}]", *path)


# ---------------------------------------------------------------------- building the tables
_records: Dict[tuple, Check] = {}
UNCHECKED: List[str] = []   # annotations no rule is built for (a test keeps this empty)


def record_of(*declarations: Any) -> Check:
    """The check of a TypedDict (with the fields of any more), built once."""
    check = _records.get(declarations)
    if check is not None:
        return check
    main = declarations[0]
    rules: Dict[str, Rule] = {}
    required = tuple(sorted(main.__required_keys__)) + REQUIRED.get(main, ())
    check = _records[declarations] = record_check(rules, required, POST_CHECKS.get(main))
    hints: Dict[str, Any] = {}
    for declaration in reversed(declarations):
        hints.update(typing.get_type_hints(declaration))
    for name, hint in hints.items():  # filled once cached: a record may hold its own kind
        rule = rule_for(name, PRECISE.get(name, hint), main.__name__)
        if rule is not None:
            rules[name] = rule
    return check


def rule_for(name: str, hint: Any, owner: str = "") -> Optional[Rule]:
    """The rule of a field called ``name`` declared as ``hint`` (None: anything goes)."""
    origin = typing.get_origin(hint) or hint
    args = typing.get_args(hint)
    if hint is Any:
        return None
    if typing.is_typeddict(hint):
        return (dict, None, None, record_of(hint))
    if hint == protocol.Layout:
        return (list, None, None, check_layout)
    if name in SHAPES:
        return (origin, None, None, SHAPES[name])
    if origin is list:
        return (list, None, None, list_of(name, args[0] if args else Any))
    if origin is tuple and args:
        names = TUPLE_FIELDS.get(hint, ("",) * len(args))
        return (list, None, None, tuple_of([element_check(n, a) for n, a in zip(names, args)]))
    if origin is dict:
        return (dict, None, None, map_of(name, *(args or (Any, Any))))
    if hint in (bytes, str, int, float, bool):
        sizes = ID_SIZES.get(name) if hint is bytes else None
        bounds = BOUNDS.get(name) if hint is int else None
        return (hint, sizes, bounds, frame_index if name in FRAME_FIELDS else None)
    UNCHECKED.append(f"{owner}.{name}: {hint!r}")
    return None


def element_check(name: str, hint: Any) -> Check:
    """The check of one element of a list (or one key or value of a map) called ``name``."""
    if typing.is_typeddict(hint):
        return record_of(hint)
    rule = rule_for(name, hint)
    return _anything if rule is None else check_of(rule)


def check_of(rule: Rule) -> Check:
    want, sizes, bounds, deep = rule

    def check(value: Any, nraw: int) -> None:
        if (type(value) is not want and not _type_ok(value, want)) \
                or (sizes is not None and len(value) not in sizes) \
                or (bounds is not None and not bounds[0] <= value <= bounds[1]):
            raise refusal(rule, value)
        if deep is not None:
            deep(value, nraw)
    return check


def _anything(value: Any, nraw: int) -> None:
    pass


def list_of(name: str, hint: Any) -> Check:
    """The check of a list field called ``name`` whose elements are ``hint``s."""
    limit = LIST_LIMITS.get(name, MAX_ITEMS)
    if typing.is_typeddict(hint):
        each = record_of(hint)
    else:
        rule = rule_for(name, hint)
        if rule is not None and rule[3] is None:
            return plain_list(rule, limit)  # IDs, strings, numbers: checked in one loop
        each = _anything if rule is None else check_of(rule)

    def check(value: list, nraw: int) -> None:
        if len(value) > limit:
            raise Refused(f"{len(value)} entries, more than {limit}")
        for i, item in enumerate(value):
            try:
                each(item, nraw)
            except Refused as exc:
                exc.path.append(i)
                raise
    return check


def plain_list(rule: Rule, limit: int = MAX_ITEMS) -> Check:
    want, sizes, bounds, _ = rule

    def check(value: list, nraw: int) -> None:
        if len(value) > limit:
            raise Refused(f"{len(value)} entries, more than {limit}")
        for i, item in enumerate(value):
            if (type(item) is not want and not _type_ok(item, want)) \
                    or (sizes is not None and len(item) not in sizes) \
                    or (bounds is not None and not bounds[0] <= item <= bounds[1]):
                raise refusal(rule, item, i)
    return check


def tuple_of(checks: List[Check]) -> Check:
    def check(value: list, nraw: int) -> None:
        if len(value) != len(checks):
            raise Refused(f"expected {len(checks)} entries, got {len(value)}")
        for i, (each, item) in enumerate(zip(checks, value)):
            try:
                each(item, nraw)
            except Refused as exc:
                exc.path.append(i)
                raise
    return check


def map_of(name: str, key_hint: Any, value_hint: Any) -> Check:
    if name in AMOUNTS and value_hint is float:
        return amounts(name in NON_NEGATIVE)
    key_sizes = KEY_SIZES.get(name)
    key_check = check_of((bytes, key_sizes, None, None)) if key_sizes else \
        element_check(name, key_hint)
    value_check = element_check("", value_hint)
    if name in VALUE_ID_SIZES:  # lists of node IDs
        value_check = check_of((list, None, None, plain_list((bytes, VALUE_ID_SIZES[name],
                                                              None, None))))

    def check(value: dict, nraw: int) -> None:
        if len(value) > MAX_ITEMS:
            raise Refused(f"{len(value)} entries, more than {MAX_ITEMS}")
        for key, item in value.items():
            try:
                key_check(key, nraw)
                value_check(item, nraw)
            except Refused as exc:
                exc.path.append(key.hex() if type(key) is bytes else key)
                raise
    return check


def amounts(non_negative: bool) -> Check:
    """Resource amounts: ``{name: number}``, finite (and never negative, if so declared)."""
    def check(value: dict, nraw: int) -> None:
        if len(value) > MAX_ITEMS:
            raise Refused(f"{len(value)} entries, more than {MAX_ITEMS}")
        for key, amount in value.items():
            if type(key) is not str:
                raise Refused(f"a resource's name must be str, got {_got(key)}")
            kind = type(amount)
            if not (kind is int or (kind is float and isfinite(amount))) \
                    or (non_negative and amount < 0):
                raise Refused(f"expected a finite{' non-negative' if non_negative else ''} "
                              f"number, got {amount!r:.40}", key)
    return check


# ---------------------------------------------------------------------- hand-made checks
def frame_index(value: int, nraw: int) -> None:
    if value >= nraw:
        raise Refused(f"names frame {value}, but {nraw} came with the message")


def check_layout(value: list, nraw: int) -> None:
    """``[[offset, length], ...]`` of non-negative ints (see protocol.Layout)."""
    if len(value) > MAX_ITEMS:
        raise Refused(f"{len(value)} entries, more than {MAX_ITEMS}")
    try:
        for offset, length in value:
            if type(offset) is not int or type(length) is not int or (offset | length) < 0:
                raise ValueError
    except (TypeError, ValueError):  # not pairs, or not of ints
        bad = next(i for i, part in enumerate(value) if type(part) is not list
                   or len(part) != 2 or type(part[0]) is not int or type(part[1]) is not int
                   or (part[0] | part[1]) < 0)
        raise Refused(f"expected [offset, length], got {value[bad]!r:.40}", bad) from None


def check_strategy(value: list, nraw: int) -> None:
    """``["SPREAD"]``, ``["DEFAULT"]``, ``["NODE", node_id, soft]`` or
    ``["PG", pg_id, bundle_index, capture_child_tasks]``."""
    kind = value[0] if value else None
    if kind in ("SPREAD", "DEFAULT") and len(value) == 1:
        return
    if kind == "PG" and len(value) == 4 and type(value[1]) is bytes \
            and len(value[1]) == ids.ID_SIZE and type(value[2]) is int \
            and -1 <= value[2] <= MAX_ITEMS and type(value[3]) is bool:
        return
    if kind == "NODE" and len(value) == 3 and type(value[1]) is bytes \
            and len(value[1]) <= 64 and type(value[2]) is bool:
        return
    raise Refused(f'expected ["SPREAD"], ["NODE", node_id, soft] or ["PG", pg_id, index, '
                  f'capture], got {value!r:.60}')


def check_filters(value: list, nraw: int) -> None:
    """A state query's filters: ``[[key, predicate, value], ...]``."""
    if len(value) > 1000:
        raise Refused(f"{len(value)} filters, more than 1000")
    for i, flt in enumerate(value):
        if type(flt) is not list or len(flt) != 3 or type(flt[0]) is not str \
                or type(flt[1]) is not str:
            raise Refused(f"expected [key, predicate, value], got {flt!r:.40}", i)


#: Fields whose annotation is looser than what handlers read, checked by hand.
SHAPES: Dict[str, Check] = {"scheduling_strategy": check_strategy, "filters": check_filters}


def _spec_facts(spec: dict, nraw: int) -> None:
    if "actor_id" not in spec and spec.get("new_actor"):
        raise Refused("missing (an actor's creation task needs one)", "actor_id")
    packages = spec.get("runtime_env", {}).get("packages", ())
    if len(packages) > len(spec.get("deps", ())):
        raise Refused(f"{len(packages)} packages but fewer deps to carry them", "runtime_env")


def _runtime_env_facts(env: dict, nraw: int) -> None:
    """Its key and packages' digests are hex hashes: they name folders on the nodes."""
    if not protocol.is_hex_hash(env["key"], (32, 64)):
        raise Refused(f"expected a hex hash, got {env['key']!r:.40}", "key")
    for i, package in enumerate(env.get("packages", ())):
        if package["kind"] not in protocol.RUNTIME_ENV_KINDS or \
                not protocol.is_hex_hash(package["digest"], (64,)):
            raise Refused(f"expected a known kind and a sha256, got {package!r:.80}", i,
                          "packages")


def _descriptor_facts(desc: dict, nraw: int) -> None:
    """A descriptor says where its bytes are: a frame (inline, error) or the store (shared)."""
    if desc["kind"] == ObjectKind.SHARED:
        if "size" not in desc:
            raise Refused("missing (a shared object's)", "size")
    elif "frame" not in desc:
        raise Refused("missing (an inline object's)", "frame")


def _node_row_facts(row: dict, nraw: int) -> None:
    node_id = row["node_id"]
    try:
        ok = len(bytes.fromhex(node_id)) == ids.ID_SIZE
    except ValueError:
        ok = False
    if not ok:
        raise Refused(f"expected {ids.ID_SIZE} bytes in hex, got {node_id!r:.40}", "node_id")


POST_CHECKS: Dict[Any, Check] = {protocol.TaskSpec: _spec_facts,
                                 protocol.RuntimeEnvSpec: _runtime_env_facts,
                                 protocol.Descriptor: _descriptor_facts,
                                 NodeRow: _node_row_facts}


def _results_in_store(body: dict, nraw: int) -> None:
    """A worker's shared result is in this node's store: it says where."""
    for i, result in enumerate(body["results"]):
        if result["kind"] == ObjectKind.SHARED and "offset" not in result:
            raise Refused("missing (a shared result's)", "offset", i, "results")


def _put_frames(body: dict, nraw: int) -> None:
    if len(body["objects"]) != nraw:
        raise Refused(f"{len(body['objects'])} objects came with {nraw} frames")


def _asked_fields(body: dict, nraw: int) -> None:
    for name in NEEDED_BY_WHAT.get(body.get("what"), ()):
        if name not in body:
            raise Refused(f"missing (what={body['what']} needs it)", name)


#: Checks of a whole message, after its record's.
OP_POST_CHECKS: Dict[Op, Check] = {Op.TASK_DONE: _results_in_store,
                                   Op.YIELDED: _results_in_store, Op.PUT: _put_frames,
                                   Op.HEAD_QUERY: _asked_fields}


class OpCheck:
    """The check of one op's messages: frame count, body (or each body of a batch)."""

    __slots__ = ("record", "frames", "batched", "post")

    def __init__(self, op: Op, declaration: Any) -> None:
        extra = EXTRA_FIELDS.get(op)
        self.record = record_of(declaration, extra) if extra else record_of(declaration)
        self.frames = FRAMES.get(op, (0, 0))
        self.batched = op in BATCHED
        self.post = OP_POST_CHECKS.get(op)

    def __call__(self, body: dict, raw: Sequence[Any]) -> None:
        if self.batched and "batch" in body:
            try:
                items = protocol.unpack_batch(body, raw)
            except ProtocolError as exc:
                raise Refused(str(exc), "batch") from None
            if len(items) > MAX_ITEMS:
                raise Refused(f"{len(items)} entries, more than {MAX_ITEMS}", "batch")
            for i, (one, frames) in enumerate(items):
                try:
                    self.one(one, len(frames))
                except Refused as exc:
                    exc.path += [i, "batch"]
                    raise
            return
        self.one(body, len(raw))

    def one(self, body: dict, nraw: int) -> None:
        low, high = self.frames
        if not low <= nraw <= high:
            raise Refused(f"came with {nraw} frames; it takes "
                          f"{low if low == high else f'{low} to {high}'}")
        self.record(body, nraw)
        if self.post is not None:
            self.post(body, nraw)


CHECKS: Dict[Op, OpCheck] = {op: OpCheck(op, declaration)
                             for op, declaration in protocol.BODIES.items()}


# ---------------------------------------------------------------------- the API
def check(op: Op, body: dict, raw: Sequence[Any]) -> None:
    """Raise ProtocolError (naming the op and the field) unless ``body`` and ``raw``
    are what ``op`` declares."""
    checker = CHECKS.get(op)
    if checker is None:
        return
    try:
        checker(body, raw)
    except Refused as exc:
        raise ProtocolError(f"{op.name}: {exc}") from None
    except Exception as exc:  # a shape no rule foresaw: refused, never the reader's crash
        raise ProtocolError(f"{op.name}: unreadable ({type(exc).__name__}: {exc})") from None


def unserved(op: Op, who: str) -> Any:
    """Raise the ProtocolError of an op that ``who`` does not serve."""
    raise ProtocolError(f"{who} does not serve {op.name}")


def req_of(body: Any) -> int:
    """The request number to answer a message with (0 when it has none worth the name)."""
    req = body.get("req") if type(body) is dict else None
    return req if type(req) is int and 0 <= req <= MAX_COUNT else 0
