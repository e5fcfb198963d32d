"""Remote functions: ``@zray.remote``, ``.remote()``, ``.options()``.

Options are checked once, against one table, when the function is decorated
and when ``.options()`` is called, so a bad option fails on the caller's
line.  The function is pickled on its first call and exported once per
cluster; each call then sends only a small task spec, built with
``protocol.task_spec`` and queued with the client's ``submit``.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any, Callable, Dict, List, Optional, Sequence

from zray._private import ids, protocol, scheduling, state


class Option:
    __slots__ = ("name", "check", "default", "doc")

    def __init__(self, name: str, check: Callable[[Any], bool], default: Any, doc: str) -> None:
        self.name = name
        self.check = check
        self.default = default
        self.doc = doc


def int_at_least(lo: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= lo


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0


def _is_resources(v: Any) -> bool:
    return v is None or isinstance(v, dict)


TASK_OPTIONS: Dict[str, Option] = {o.name: o for o in [
    Option("num_returns", int_at_least(0), 1, "a non-negative int"),
    Option("num_cpus", _is_number, 1, "a non-negative number"),
    Option("num_gpus", _is_number, 0, "a non-negative number"),
    Option("resources", _is_resources, None, "a dict of resource name to amount"),
    Option("max_calls", int_at_least(0), 0, "a non-negative int (0: no limit)"),
    Option("max_retries", int_at_least(-1), protocol.DEFAULT_MAX_RETRIES,
           "an int >= -1 (-1: retry forever)"),
    Option("name", lambda v: v is None or isinstance(v, str), None, "a string"),
]}
ALIASES = {"num_return_vals": "num_returns"}


def validate_options(options: Dict[str, Any], table: Dict[str, Option], where: str) -> Dict[str, Any]:
    """Check options against ``table``; raise naming the first bad one."""
    out: Dict[str, Any] = {}
    for key, value in options.items():
        name = ALIASES.get(key, key)
        option = table.get(name)
        if option is None:
            known = ", ".join(sorted(table))
            raise ValueError(f"{where}: unknown option {key!r}; valid options are: {known}")
        if not option.check(value):
            raise ValueError(f"{where}: option {key!r} must be {option.doc}, got {value!r}")
        out[name] = value
    if "num_cpus" in out or "num_gpus" in out or "resources" in out:
        scheduling.validate_resource_request(
            out.get("num_cpus"), out.get("num_gpus"), out.get("resources"), where=where)
    return out


def resource_demand(options: Dict[str, Any]) -> Dict[str, float]:
    demand = {"CPU": float(options.get("num_cpus", 1))}
    if options.get("num_gpus"):
        demand["GPU"] = float(options["num_gpus"])
    for name, amount in (options.get("resources") or {}).items():
        if amount:
            demand[name] = float(amount)
    return {k: v for k, v in demand.items() if v}


class _Call:
    """Everything fixed about calls with one set of options, computed once."""

    __slots__ = ("num_returns", "demand", "max_retries", "extra", "name")

    def __init__(self, options: Dict[str, Any], default_name: str) -> None:
        merged = {name: opt.default for name, opt in TASK_OPTIONS.items()}
        merged.update(options)
        self.num_returns = merged["num_returns"]
        demand = resource_demand(merged)
        # The spec leaves the default demand out (see protocol.TaskSpec.resources).
        self.demand: Optional[Dict[str, float]] = None if demand == {"CPU": 1.0} else demand
        self.max_retries = merged["max_retries"]
        # Optional spec fields, only when set: the builder skips nothing faster.
        self.extra = {"max_calls": merged["max_calls"]} if merged["max_calls"] else {}
        self.name = merged["name"] or default_name


class RemoteFunction:
    def __init__(self, function: Callable, options: Dict[str, Any],
                 arg_types: Optional[Sequence[type]] = None,
                 return_types: Optional[Sequence[type]] = None) -> None:
        if not callable(function):
            raise TypeError(f"@zray.remote needs a function or class, got {type(function).__name__}")
        self._function = function
        self._name = getattr(function, "__qualname__", getattr(function, "__name__", "task"))
        self._arg_types = list(arg_types) if arg_types is not None else None
        if return_types is not None and "num_returns" not in options:
            options = dict(options, num_returns=len(return_types))
        self._options = validate_options(options, TASK_OPTIONS, f"@zray.remote on {self._name}")
        self._call = _Call(self._options, self._name)
        self._blob: Optional[bytes] = None
        self._fid: Optional[bytes] = None
        functools.update_wrapper(self, function)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"Remote function {self._name} cannot be called directly. "
                        f"Instead of '{self._name}()', call '{self._name}.remote()'.")

    def __repr__(self) -> str:
        return f"<zray remote function {self._name}>"

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        return self._submit(args, kwargs, self._call)

    def options(self, **options: Any) -> "_BoundOptions":
        checked = validate_options(options, TASK_OPTIONS, f"{self._name}.options()")
        return _BoundOptions(self, _Call({**self._options, **checked}, self._name))

    def _export(self, client: Any) -> bytes:
        if self._blob is None:
            import cloudpickle

            try:
                self._blob = cloudpickle.dumps(self._function, protocol=5)
            except Exception as exc:
                from zray.exceptions import SerializationError
                raise SerializationError(
                    f"could not pickle remote function {self._name}: "
                    f"{type(exc).__name__}: {exc}") from exc
            self._fid = hashlib.sha1(self._blob).digest()[:16]
        client.export_function(self._fid, self._blob, self._name)
        return self._fid

    def _check_types(self, args: Sequence[Any]) -> None:
        from zray.object_ref import ObjectRef
        types = self._arg_types
        if len(args) != len(types):
            raise TypeError(f"{self._name} takes {len(types)} arguments, got {len(args)}")
        for i, (value, expected) in enumerate(zip(args, types)):
            if not isinstance(value, (expected, ObjectRef)):
                raise TypeError(f"argument {i} of {self._name} must be {expected.__name__}, "
                                f"got {type(value).__name__}")

    def _submit(self, args: Sequence[Any], kwargs: Dict[str, Any], call: _Call) -> Any:
        client = state.client
        if client is None:
            from zray import _auto_init
            client = _auto_init()
        if self._arg_types is not None:
            self._check_types(args)
        fid = self._export(client)
        args_part, keep = client.encode_args(args, kwargs, call.name)
        spec = protocol.task_spec(
            task_id=ids.new_id(), job_id=client.job_id, name=call.name, function_id=fid,
            num_returns=call.num_returns, resources=call.demand, max_retries=call.max_retries,
            args=args_part, **call.extra)
        refs = client.submit(spec)
        del keep
        if call.num_returns == 1:
            return refs[0]
        if call.num_returns == 0:
            return None
        return refs


class _BoundOptions:
    def __init__(self, function: RemoteFunction, call: _Call) -> None:
        self._function = function
        self._callopts = call

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        return self._function._submit(args, kwargs, self._callopts)


def make_remote(target: Any, options: Dict[str, Any], arg_types: Optional[List[type]] = None,
                return_types: Optional[List[type]] = None) -> Any:
    if isinstance(target, type):
        from zray import actor
        return actor.make_actor_class(target, options)
    return RemoteFunction(target, options, arg_types, return_types)
