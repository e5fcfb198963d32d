"""The options of remote functions, actors and actor methods: one table each.

Each option is declared once (:class:`Option`: its name, the types it
takes, which values are valid, its default), with Ray 2.x's names and
defaults.  The decorator and every ``.options()`` check what they are given
against the table of their kind of target, so a bad option fails on the
caller's line and names the option: a value of the wrong type raises
TypeError, a value out of range ValueError, an unknown keyword ValueError
listing the valid ones.

What zray does with the options Ray has and a single process cannot see:
``memory`` is a schedulable amount (the nodes' ``memory`` resource);
``accelerator_type`` is demanded as Ray does, a sliver of the resource
``accelerator_type:<name>``, so it runs only where a node declares that;
``runtime_env`` is checked here and built on the nodes (see
:mod:`zray._private.runtime_env`): ``env_vars`` around the call (for an actor,
for its life), ``working_dir``, ``py_modules`` and ``pip`` in workers kept
per environment; ``concurrency_groups``
give each group of a threaded or async actor its own threads or limit.
A generator function's ``num_returns`` defaults to ``"streaming"``, as in Ray.

The rest turns checked options into what a task spec carries: the resource
demand (:func:`resource_demand`), the scheduling strategy's wire form
(:func:`strategy_wire`), ``retry_exceptions`` (:func:`retry_exceptions_wire`),
``concurrency_groups`` (:func:`run_settings`) and the checked ``runtime_env``
(:func:`runtime_env_of`).  Pure: nothing here talks to the cluster.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from zray._private import protocol, scheduling

_NONE = type(None)
_NUMBER = (int, float)


class Option:
    """One option: ``types`` it may have (None: any), ``valid`` values, its default."""

    __slots__ = ("name", "types", "valid", "default", "doc")

    def __init__(self, name: str, types: Optional[Tuple[type, ...]],
                 valid: Optional[Callable[[Any], bool]], default: Any, doc: str) -> None:
        self.name = name
        self.types = types
        self.valid = valid
        self.default = default
        self.doc = doc

    def check(self, value: Any, key: str, where: str) -> None:
        types = self.types
        if types is not None and (not isinstance(value, types)
                                  or (isinstance(value, bool) and bool not in types)):
            raise TypeError(f"{where}: option {key!r} must be {self.doc}, got "
                            f"{type(value).__name__} {value!r}")
        if self.valid is not None and not self.valid(value):
            raise ValueError(f"{where}: option {key!r} must be {self.doc}, got {value!r}")


def _at_least(lo: int) -> Callable[[Any], bool]:
    return lambda v: v >= lo


def _not_negative(v: Any) -> bool:
    return v is None or v >= 0


def _non_empty(v: Any) -> bool:
    return v is None or v != ""


def _num_returns(v: Any) -> bool:
    return v in GENERATOR_KINDS if isinstance(v, str) else 0 <= v <= protocol.MAX_RETURNS


GENERATOR_KINDS = ("streaming", "dynamic")


def _retry_exceptions(v: Any) -> bool:
    if isinstance(v, bool):
        return True
    return all(isinstance(t, type) and issubclass(t, BaseException) for t in v)


def _is_strategy(v: Any) -> bool:
    if v is None or v in ("DEFAULT", "SPREAD"):
        return True
    return not isinstance(v, str) and callable(getattr(v, "to_wire", None))


def _concurrency_groups(v: Any) -> bool:
    return v is None or all(isinstance(k, str) and k and isinstance(n, int)
                            and not isinstance(n, bool) and n >= 1 for k, n in v.items())


def _runtime_env(v: Any) -> bool:
    from zray._private.runtime_env import resolve

    try:
        resolve.check(v, "option 'runtime_env'")
    except TypeError as exc:  # a bad value inside the dict: a ValueError, naming the key
        raise ValueError(str(exc)) from None
    return True


def _pending_calls(v: int) -> bool:
    return v == -1 or v >= 1


def _table(*options: Option) -> Dict[str, Option]:
    return {o.name: o for o in options}


# Options tasks and actors share.
_NUM_CPUS = Option("num_cpus", (int, float, _NONE), _not_negative, None, "a non-negative number")
_NUM_GPUS = Option("num_gpus", (int, float, _NONE), _not_negative, None, "a non-negative number")
_RESOURCES = Option("resources", (dict, _NONE), None, None,
                    "a dict of resource name to amount")
_MEMORY = Option("memory", (int, float, _NONE), _not_negative, None,
                 "a non-negative number of bytes")
_ACCELERATOR = Option("accelerator_type", (str, _NONE), _non_empty, None,
                      "an accelerator type's name")
_RUNTIME_ENV = Option("runtime_env", (dict, _NONE), _runtime_env, None,
                      "a dict (env_vars, working_dir, py_modules, pip, excludes, config)")
_STRATEGY = Option("scheduling_strategy", None, _is_strategy, None,
                   "'DEFAULT', 'SPREAD' or a scheduling strategy object")
_NAME = Option("name", (str, _NONE), None, None, "a string")
# Ray's older way to name a placement group: made into a scheduling_strategy.
_PLACEMENT = (
    Option("placement_group", None, lambda v: v is None or v == "default"
           or type(v).__name__ == "PlacementGroup", None, "a PlacementGroup or None"),
    Option("placement_group_bundle_index", (int,), _at_least(-1), -1, "an int >= -1"),
    Option("placement_group_capture_child_tasks", (bool, _NONE), None, None, "a bool"))
_NUM_RETURNS = Option("num_returns", (int, str), _num_returns, 1,
                      f"an int from 0 to {protocol.MAX_RETURNS:,}, 'streaming' or 'dynamic'")
_RETRY_EXCEPTIONS = Option("retry_exceptions", (bool, list, tuple), _retry_exceptions, False,
                           "a bool or a list of exception types")

TASK_OPTIONS: Dict[str, Option] = _table(
    _NUM_RETURNS, _NUM_CPUS, _NUM_GPUS, _RESOURCES, _MEMORY, _ACCELERATOR,
    Option("max_calls", (int,), _at_least(0), 0, "a non-negative int (0: no limit)"),
    Option("max_retries", (int,), _at_least(-1), protocol.DEFAULT_MAX_RETRIES,
           "an int >= -1 (-1: retry forever)"),
    _RETRY_EXCEPTIONS, _RUNTIME_ENV, _STRATEGY, _NAME, *_PLACEMENT,
)

ACTOR_OPTIONS: Dict[str, Option] = _table(
    _NUM_CPUS, _NUM_GPUS, _RESOURCES, _MEMORY, _ACCELERATOR,
    Option("max_restarts", (int,), _at_least(-1), 0, "an int >= -1 (-1: restart forever)"),
    Option("max_task_retries", (int,), _at_least(-1), 0, "an int >= -1 (-1: retry forever)"),
    Option("max_pending_calls", (int,), _pending_calls, -1, "-1 (no limit) or an int >= 1"),
    Option("max_concurrency", (int, _NONE), lambda v: v is None or v >= 1, None,
           "an int >= 1"),
    Option("lifetime", (str, _NONE), lambda v: v in (None, "detached", "non_detached"), None,
           "None, 'detached' or 'non_detached'"),
    Option("name", (str, _NONE), _non_empty, None, "a non-empty string"),
    Option("namespace", (str, _NONE), _non_empty, None, "a non-empty string"),
    Option("get_if_exists", (bool,), None, False, "a bool"),
    Option("concurrency_groups", (dict, _NONE), _concurrency_groups, None,
           "a dict of group name to its number of threads (>= 1)"),
    _RUNTIME_ENV, _STRATEGY, *_PLACEMENT,
)

METHOD_OPTIONS: Dict[str, Option] = _table(
    _NUM_RETURNS,
    Option("max_task_retries", (int, _NONE), lambda v: v is None or v >= -1, None,
           "an int >= -1 (-1: retry forever)"),
    Option("retry_exceptions", (bool, list, tuple, _NONE),
           lambda v: v is None or _retry_exceptions(v), None,
           "a bool or a list of exception types"),
    Option("concurrency_group", (str, _NONE), _non_empty, None, "a group's name"),
    _NAME,
)

#: Every keyword ``@zray.remote(...)`` knows, before it sees what it decorates.
ALL_NAMES = frozenset(TASK_OPTIONS) | frozenset(ACTOR_OPTIONS)

ALIASES = {"num_return_vals": "num_returns"}


def validate_options(options: Mapping[str, Any], table: Dict[str, Option],
                     where: str) -> Dict[str, Any]:
    """Check ``options`` against ``table``; raise naming the first bad one."""
    out: Dict[str, Any] = {}
    for key, value in options.items():
        name = ALIASES.get(key, key)
        option = table.get(name)
        if option is None:
            known = ", ".join(sorted(table))
            raise ValueError(f"{where}: unknown option {key!r}; valid options are: {known}")
        option.check(value, key, where)
        out[name] = value
    if "num_cpus" in out or "num_gpus" in out or "resources" in out:
        scheduling.validate_resource_request(
            out.get("num_cpus"), out.get("num_gpus"), out.get("resources"), where=where)
        if "memory" in (out.get("resources") or {}):
            raise ValueError(f"{where}: use the memory option instead of resources['memory']")
    if "placement_group" in out:
        from zray.util.placement_group import legacy_strategy

        legacy_strategy(out, where)
    return out


def check_names(options: Mapping[str, Any], where: str) -> None:
    """Raise for a keyword no table knows (before the target is known)."""
    for key in options:
        if ALIASES.get(key, key) not in ALL_NAMES:
            known = ", ".join(sorted(ALL_NAMES))
            raise ValueError(f"{where}: unknown option {key!r}; valid options are: {known}")


def defaults(table: Dict[str, Option], options: Mapping[str, Any]) -> Dict[str, Any]:
    """``options`` over the table's defaults."""
    merged = {name: option.default for name, option in table.items()}
    merged.update(options)
    return merged


def resource_demand(options: Mapping[str, Any], default_cpus: float = 1.0) -> Dict[str, float]:
    """What a task or actor needs from a node, from checked options.

    ``memory`` is a schedulable amount of bytes (the resource ``memory``);
    ``accelerator_type`` asks a sliver of the resource nodes with that
    accelerator declare (``accelerator_type:<name>``), as Ray does, so such a
    task runs only on a node that declares it.
    """
    cpus = options.get("num_cpus")
    demand = {"CPU": float(default_cpus if cpus is None else cpus)}
    if options.get("num_gpus"):
        demand["GPU"] = float(options["num_gpus"])
    for name, amount in (options.get("resources") or {}).items():
        if amount:
            demand[name] = float(amount)
    if options.get("memory"):
        demand["memory"] = float(int(options["memory"]))
    if options.get("accelerator_type"):
        demand[f"accelerator_type:{options['accelerator_type']}"] = 0.001
    return {k: v for k, v in demand.items() if v}


def strategy_wire(strategy: Any) -> Optional[list]:
    """The spec's ``scheduling_strategy``: None for the default placement."""
    if strategy is None or strategy == "DEFAULT":
        return None
    if strategy == "SPREAD":
        return ["SPREAD"]
    return list(strategy.to_wire())


def retry_exceptions_wire(value: Any) -> Any:
    """The spec's ``retry_exceptions``: True, the pickled exception types, or None."""
    if not value:
        return None
    if value is True:
        return True
    import cloudpickle

    return cloudpickle.dumps(tuple(value), protocol=5)


def runtime_env_of(options: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
    """The checked ``runtime_env`` of checked options; None when none is set (the
    job's, if any, still applies: ``runtime_env.resolve.attach``)."""
    env = options.get("runtime_env")
    if not env or all(k in ("env_vars", "config") for k in env):
        return None  # env_vars alone travel in the spec's own field (run_settings)
    return env  # checked with the options; prepared (and cached) by its identity


def run_settings(options: Mapping[str, Any]) -> Dict[str, Any]:
    """The spec fields ``runtime_env``'s ``env_vars`` and an actor's
    ``concurrency_groups`` become, only those that are set (the rest of a
    ``runtime_env`` goes on the spec at submission: :func:`runtime_env_of`)."""
    fields: Dict[str, Any] = {}
    env_vars = dict((options.get("runtime_env") or {}).get("env_vars") or {})
    if env_vars:
        fields["env_vars"] = env_vars
    groups = options.get("concurrency_groups") or {}
    if groups:
        fields["concurrency_groups"] = dict(groups)
    return fields


def apply_env(env_vars: Dict[str, str]) -> Dict[str, Optional[str]]:
    """Set the env vars; returns what to restore."""
    import os

    before = {key: os.environ.get(key) for key in env_vars}
    os.environ.update(env_vars)
    return before


def restore_env(before: Dict[str, Optional[str]]) -> None:
    import os

    for key, value in before.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
