"""Remote functions: ``@zray.remote``, ``.remote()``, ``.options()``.

Options are checked once, against one table (``zray._private.options``),
when the function is decorated and when ``.options()`` is called, so a bad
option fails on the caller's line; everything fixed about calls with one
set of options is computed then too (:class:`_Call`).  Each ``.remote()``
binds its arguments to the function's signature (a TypeError in the caller
when they do not fit), pickles the function on the first call and exports it
once per cluster, then sends only a small task spec, built with
``protocol.task_spec`` and queued with the client's ``submit``.

``async def`` functions run on an event loop in their worker.  A function
that yields returns an :class:`~zray.object_ref.ObjectRefGenerator`
(``num_returns="streaming"``, the default for generators) or, with
``num_returns="dynamic"``, one ref whose value holds the refs.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
from typing import Any, Callable, Dict, List, Optional, Sequence

from zray._private import ids, protocol, signature, state
from zray._private.runtime_env import resolve as runtime_env
from zray.object_ref import ObjectRefGenerator
from zray.util.placement_group import captured_call
from zray._private.options import (  # noqa: F401  (the option table, public here)
    ACTOR_OPTIONS, ALIASES, TASK_OPTIONS, Option, run_settings, runtime_env_of, check_names,
    defaults,
    resource_demand, retry_exceptions_wire, strategy_wire, validate_options,
)

_NO_BINDER: Any = False   # the signature could not be read: arguments are not checked


class _Call:
    """Everything fixed about calls with one set of options, computed once."""

    __slots__ = ("num_returns", "demand", "max_retries", "extra", "name", "streaming",
                 "runtime_env")

    def __init__(self, options: Dict[str, Any], default_name: str,
                 is_generator: bool = False) -> None:
        merged = defaults(TASK_OPTIONS, options)
        num_returns = merged["num_returns"]
        if is_generator and "num_returns" not in options:
            num_returns = "streaming"  # Ray's default for a function that yields
        generator = num_returns if isinstance(num_returns, str) else None
        self.num_returns = 1 if generator else num_returns
        self.streaming = generator == "streaming"
        demand = resource_demand(merged)
        if hasattr(merged["scheduling_strategy"], "demand_in_group"):  # a placement group's
            demand = merged["scheduling_strategy"].demand_in_group(demand, default_name)
        # The spec leaves the default demand out (see protocol.TaskSpec.resources).
        self.demand: Optional[Dict[str, float]] = None if demand == {"CPU": 1.0} else demand
        self.max_retries = merged["max_retries"]
        max_calls = merged["max_calls"]
        if "max_calls" not in options and merged["num_gpus"]:
            max_calls = 1  # Ray's default: a GPU task's worker gives its GPU memory back
        # Optional spec fields, only when set: the builder skips nothing faster.
        extra: Dict[str, Any] = {}
        if max_calls:
            extra["max_calls"] = max_calls
        retry = retry_exceptions_wire(merged["retry_exceptions"])
        if retry is not None:
            extra["retry_exceptions"] = retry
        strategy = strategy_wire(merged["scheduling_strategy"])
        if strategy is not None:
            extra["scheduling_strategy"] = strategy
        extra.update(run_settings(merged))
        self.runtime_env = runtime_env_of(merged)  # put on each spec with the job's
        if generator:
            extra["generator"] = generator
        self.extra = extra
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
        self._is_generator = inspect.isgeneratorfunction(function) or \
            inspect.isasyncgenfunction(function)
        self._call = _Call(self._options, self._name, self._is_generator)
        self._blob: Optional[bytes] = None
        self._fid: Optional[bytes] = None
        self._binder: Any = None
        functools.update_wrapper(self, function)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"Remote function {self._name} cannot be called directly. "
                        f"Instead of '{self._name}()', call '{self._name}.remote()'.")

    def __repr__(self) -> str:
        return f"<zray remote function {self._name}>"

    def __getstate__(self) -> Dict[str, Any]:
        state_ = dict(self.__dict__)
        state_["_binder"] = None  # rebuilt where it is used
        return state_

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        return self._submit(args, kwargs, self._call)

    def options(self, **options: Any) -> "_BoundOptions":
        checked = validate_options(options, TASK_OPTIONS, f"{self._name}.options()")
        return _BoundOptions(self, _Call({**self._options, **checked}, self._name,
                                         self._is_generator))

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

    def _check_args(self, args: Sequence[Any], kwargs: Dict[str, Any]) -> None:
        binder = self._binder
        if binder is None:
            binder = self._binder = signature.of_callable(self._function, self._name) \
                or _NO_BINDER
        if binder is not _NO_BINDER:
            binder.check(args, kwargs)
        if self._arg_types is not None:
            self._check_types(args)

    def _submit(self, args: Sequence[Any], kwargs: Dict[str, Any], call: _Call) -> Any:
        client = state.client
        if client is None:
            from zray import _auto_init
            client = _auto_init()
        self._check_args(args, kwargs)
        if state.worker is not None and "scheduling_strategy" not in call.extra:
            call = captured_call(call)  # a parent in a placement group may capture it
        fid = self._export(client)
        args_part, keep = client.encode_args(args, kwargs, call.name)
        extra = call.extra
        namespace = client.spec_namespace()  # None: the job's anonymous one
        if namespace:
            extra = dict(extra, namespace=namespace)
        spec = protocol.task_spec(
            task_id=ids.new_id(), job_id=client.job_id, name=call.name, function_id=fid,
            num_returns=call.num_returns, resources=call.demand, max_retries=call.max_retries,
            args=args_part, **extra)
        if call.runtime_env is not None or runtime_env.active():
            runtime_env.attach(spec, call.runtime_env)
        refs = client.submit(spec)
        del keep
        if call.streaming:
            return ObjectRefGenerator(refs[0])
        if call.num_returns == 1:
            return refs[0]
        if call.num_returns == 0:
            return None
        return refs


class _BoundOptions:
    """``f.options(...)``: the function with other options, for ``.remote()``."""

    def __init__(self, function: RemoteFunction, call: _Call) -> None:
        self._function = function
        self._callopts = call

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        return self._function._submit(args, kwargs, self._callopts)


def make_remote(target: Any, options: Dict[str, Any], arg_types: Optional[List[type]] = None,
                return_types: Optional[List[type]] = None) -> Any:
    if isinstance(target, type):
        from zray import actor
        if arg_types is not None or return_types is not None:
            raise TypeError("@zray.remote([types], [types]) is for functions, not classes")
        return actor.make_actor_class(target, options)
    return RemoteFunction(target, options, arg_types, return_types)


def remote_decorator(*args: Any, **options: Any) -> Any:
    """``zray.remote``: ``@remote``, ``@remote(**options)`` or ``remote(f)``.

    As in Ray, ``@remote()`` with empty parentheses is an error (write
    ``@remote``), and an unknown keyword fails at once, naming it.  The
    seed-era typed form ``@remote([int, int], [int])`` checks argument types
    when the task is submitted.
    """
    if len(args) == 1 and not options and callable(args[0]):
        return make_remote(args[0], {})
    if args and all(isinstance(a, (list, tuple)) for a in args) and len(args) <= 2:
        arg_types = list(args[0])
        return_types = list(args[1]) if len(args) > 1 else None
        return lambda target: make_remote(target, options, arg_types, return_types)
    if args:
        raise TypeError("@zray.remote takes a function or class, or only keyword options, "
                        f"e.g. @zray.remote(num_cpus=2); got {args!r}")
    if not options:
        raise TypeError("@zray.remote() needs options between its parentheses, e.g. "
                        "@zray.remote(num_cpus=2); for the defaults write @zray.remote "
                        "without parentheses")
    check_names(options, "@zray.remote")
    return lambda target: make_remote(target, options)
