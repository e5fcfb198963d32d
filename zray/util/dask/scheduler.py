"""The Dask scheduler that runs each task of a Dask graph as one zray task.

    dask.compute(x, scheduler=zray_dask_get)
        │  the graph: Task, DataNode and Alias nodes (legacy tuples converted)
        ▼
    cull to what the requested keys need, dependencies before dependents
        │
        ├─ DataNode  → zray.put(value)        (an ObjectRef value is used as it is)
        ├─ Alias     → its target's ref       (no task)
        └─ Task      → run_node.remote(node, dependency keys, *dependency refs)
        ▼
    zray.get(the refs of the requested keys), nested as the keys were

Intermediate results stay zray objects: a task's dependencies reach it as
ObjectRefs, so a large numpy chunk lives once in a node's shared memory and
is read there without a copy; the driver fetches only the requested keys.
The driver lets go of an intermediate's ref once every task that reads it
has been submitted (each submitted task holds its own), so the store frees
it as soon as its readers are done.

Owns the translation from a Dask graph to zray tasks.  It uses zray only
through its public API and dask only through its graph types; it must not
reach into zray's client or agent.
"""

from __future__ import annotations

import collections
from typing import Any, Dict, Hashable, Iterable, List, Mapping, Optional

import zray
from zray.object_ref import ObjectRef

from dask._task_spec import Alias, DataNode, GraphNode, convert_legacy_graph
from dask.utils import key_split

Key = Hashable

# Options this scheduler reads from dask.compute's keywords, under zray's and
# Ray's names; other keywords (num_workers, pool, chunksize, ...) belong to
# dask's local schedulers and are accepted and ignored, zray placing tasks
# by their resources instead.
_OWN_OPTIONS = ("remote_args", "persist")


def _run_node(node: GraphNode, dependency_keys: List[Key], *dependency_values: Any) -> Any:
    """The body of every zray task this scheduler submits: one Dask node, given
    the values of its dependencies (zray resolved the refs to values)."""
    return node(dict(zip(dependency_keys, dependency_values)))


_run_node_remote = zray.remote(_run_node)


def zray_dask_get(dsk: Any, keys: Any, *, cache: Optional[Mapping] = None,
                  **kwargs: Any) -> Any:
    """Compute ``keys`` of the Dask graph ``dsk`` on zray, each Dask task a zray task.

    Use it as a Dask scheduler: ``dask.compute(x, scheduler=zray_dask_get)``
    or ``dask.config.set(scheduler=zray_dask_get)``.  ``keys`` is a key or a
    (nested) list of keys; the values come back in the same shape.  zray is
    started with ``zray.init()`` if it is not running.

    Keywords of its own, each also under Ray's ``ray_`` name:

    - ``zray_remote_args``: task options for every task (``{"num_cpus": 2}``);
    - ``zray_persist``: return the ObjectRefs of the keys instead of their
      values (a later graph may give such a ref as a key's whole value).

    ``cache`` maps keys to values already known.  Other keywords of dask's
    own schedulers (``num_workers``, ``pool``, ...) are accepted and ignored.
    """
    options = _own_options(kwargs)
    if not zray.is_initialized():
        zray.init()
    graph = _as_graph(dsk, cache)
    wanted = _flatten(keys)
    refs = _submit_graph(graph, wanted, options.get("remote_args") or {})
    if options.get("persist"):
        return _nest(keys, iter([refs[key] for key in wanted]))
    values = zray.get([refs[key] for key in wanted])
    return _nest(keys, iter(values))


def _own_options(kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """This scheduler's options out of dask.compute's keywords, by their short
    names; an unknown ``zray_``/``ray_`` keyword is an error, not ignored."""
    options: Dict[str, Any] = {}
    for name, value in kwargs.items():
        prefix = "zray_" if name.startswith("zray_") else "ray_" if name.startswith("ray_") \
            else None
        if prefix is None:
            continue
        short = name[len(prefix):]
        if short not in _OWN_OPTIONS:
            known = ", ".join(f"zray_{o}" for o in _OWN_OPTIONS)
            raise TypeError(f"zray_dask_get got an unknown option {name!r} (known: {known})")
        if short in options and options[short] != value:
            raise TypeError(f"zray_dask_get got both zray_{short} and ray_{short}")
        options[short] = value
    remote_args = options.get("remote_args")
    if remote_args is not None and not isinstance(remote_args, Mapping):
        raise TypeError(f"zray_remote_args must be a dict of task options, "
                        f"got {type(remote_args).__name__}")
    return options


def _as_graph(dsk: Any, cache: Optional[Mapping]) -> Dict[Key, GraphNode]:
    """``dsk`` as a dict of Dask graph nodes, whatever form dask handed over
    (a collection or expression, a HighLevelGraph, a dict of legacy tuples)."""
    if not isinstance(dsk, Mapping):
        dsk = dsk.__dask_graph__()
    known = dict(cache or {})
    graph = convert_legacy_graph(dsk, all_keys=set(dsk) | set(known))
    for key, value in known.items():
        graph[key] = DataNode(key, value)
    return graph


def _flatten(keys: Any) -> List[Key]:
    """The keys of a key or a nested list of keys, in order (a tuple is a key)."""
    if not isinstance(keys, list):
        return [keys]
    flat: List[Key] = []
    stack = [iter(keys)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _nest(keys: Any, values: Iterable[Any]) -> Any:
    """``values`` (one per key, in ``_flatten`` order) shaped as ``keys``."""
    if not isinstance(keys, list):
        return next(values)
    return [_nest(item, values) for item in keys]


def _dependencies_first(graph: Mapping[Key, GraphNode], wanted: List[Key]) -> List[Key]:
    """The keys ``wanted`` needs, each after its dependencies: a depth-first
    walk from the requested keys, so a subtree's tasks come out together."""
    ordered: List[Key] = []
    seen = set()
    for root in wanted:
        if root in seen:
            continue
        seen.add(root)
        stack = [(root, iter(_node(graph, root).dependencies))]
        while stack:
            key, dependencies = stack[-1]
            for dependency in dependencies:
                if dependency not in seen:
                    seen.add(dependency)
                    stack.append((dependency, iter(_node(graph, dependency).dependencies)))
                    break
            else:
                stack.pop()
                ordered.append(key)
    return ordered


def _node(graph: Mapping[Key, GraphNode], key: Key) -> GraphNode:
    try:
        return graph[key]
    except KeyError:
        raise KeyError(f"the Dask graph has no key {key!r}") from None


def _submit_graph(graph: Mapping[Key, GraphNode], wanted: List[Key],
                  remote_args: Mapping[str, Any]) -> Dict[Key, ObjectRef]:
    """Submit every node ``wanted`` needs; the refs of the ``wanted`` keys."""
    ordered = _dependencies_first(graph, wanted)
    readers = collections.Counter(d for key in ordered for d in graph[key].dependencies)
    keep = set(wanted)
    submitters = _Submitters(remote_args)
    refs: Dict[Key, ObjectRef] = {}
    for key in ordered:
        node = graph[key]
        dependencies = list(node.dependencies)
        missing = [d for d in dependencies if d not in refs]
        if missing:  # only a cycle leaves a dependency unsubmitted
            raise ValueError(f"the Dask graph has a cycle through {key!r} and {missing[0]!r}")
        if isinstance(node, Alias):
            refs[key] = refs[node.target]
        elif isinstance(node, DataNode):
            value = node.value
            refs[key] = value if isinstance(value, ObjectRef) else zray.put(value)
        else:
            refs[key] = submitters.for_key(key).remote(
                node, dependencies, *[refs[d] for d in dependencies])
        for dependency in dependencies:
            readers[dependency] -= 1
            if not readers[dependency] and dependency not in keep:
                del refs[dependency]  # its readers hold it now
    return refs


class _Submitters:
    """The remote function with the caller's options, one per task name (the
    key's prefix, e.g. ``sum-aggregate``), so the state API and the timeline
    show what each task computes."""

    def __init__(self, remote_args: Mapping[str, Any]) -> None:
        self._remote_args = dict(remote_args)
        try:  # a bad option fails here, before any task is submitted
            _run_node_remote.options(**self._remote_args)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"zray_remote_args: {exc}") from None
        self._by_name: Dict[str, Any] = {}

    def for_key(self, key: Key) -> Any:
        name = key_split(key)
        submitter = self._by_name.get(name)
        if submitter is None:
            options = {"name": name, **self._remote_args}
            submitter = self._by_name[name] = _run_node_remote.options(**options)
        return submitter
