"""Actors: ``@zray.remote`` on a class, handles, methods, ``@zray.method``.

An actor lives in a worker of its own.  Its handle is small and picklable:
the actor's ID, its method table, and a ref to the actor's *anchor* object
(the result of its creation task).  Handles are counted through that ref
like any object, so when the last handle anywhere is gone the anchor is
freed and the node retires the actor.

Creation and call specs are built with ``protocol.task_spec`` and handed to
the client's public verbs (``submit``, ``reserve_name``, ``kill_actor``);
this module owns no connection state.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
from typing import Any, Callable, Dict, Optional

from zray._private import ids, protocol, state
from zray.object_ref import ObjectRef
from zray.remote_function import (
    TASK_OPTIONS, Option, int_at_least, resource_demand, validate_options,
)

ACTOR_OPTIONS: Dict[str, Option] = {o.name: o for o in [
    TASK_OPTIONS["num_cpus"], TASK_OPTIONS["num_gpus"], TASK_OPTIONS["resources"],
    Option("name", lambda v: v is None or (isinstance(v, str) and v != ""), None,
           "a non-empty string"),
    Option("namespace", lambda v: v is None or isinstance(v, str), None, "a string"),
    Option("lifetime", lambda v: v in (None, "detached", "non_detached"), None,
           "None, 'detached' or 'non_detached'"),
    Option("max_restarts", int_at_least(-1), 0, "an int >= -1 (-1: restart forever)"),
    Option("max_task_retries", int_at_least(-1), 0, "an int >= -1"),
    Option("max_concurrency", int_at_least(1), None, "an int >= 1"),
    Option("get_if_exists", lambda v: isinstance(v, bool), False, "a bool"),
]}

METHOD_OPTIONS: Dict[str, Option] = {"num_returns": TASK_OPTIONS["num_returns"]}


def method(*args: Any, **options: Any) -> Callable:
    """Decorate an actor method with options, e.g. ``@zray.method(num_returns=2)``."""
    if args:
        raise TypeError("@zray.method takes keyword options only, e.g. "
                        "@zray.method(num_returns=2)")
    checked = validate_options(options, METHOD_OPTIONS, "@zray.method")

    def decorate(fn: Callable) -> Callable:
        fn.__zray_method_options__ = checked
        return fn
    return decorate


def _method_table(cls: type) -> Dict[str, int]:
    table = {}
    for name, member in inspect.getmembers(cls):
        if name.startswith("__") and name != "__call__":
            continue
        if inspect.isfunction(member) or inspect.ismethod(member):
            opts = getattr(member, "__zray_method_options__", {})
            table[name] = opts.get("num_returns", 1)
    return table


def _is_async(cls: type) -> bool:
    return any(inspect.iscoroutinefunction(m) or inspect.isasyncgenfunction(m)
               for _, m in inspect.getmembers(cls, inspect.isfunction))


class ActorClass:
    def __init__(self, cls: type, options: Dict[str, Any]) -> None:
        self._cls = cls
        self._name = cls.__qualname__
        self._options = validate_options(options, ACTOR_OPTIONS, f"@zray.remote on {self._name}")
        self._methods = _method_table(cls)
        self._async = _is_async(cls)
        self._blob: Optional[bytes] = None
        self._fid: Optional[bytes] = None
        functools.update_wrapper(self, cls, updated=())

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"Actor class {self._name} cannot be instantiated directly. "
                        f"Instead of '{self._name}()', call '{self._name}.remote()'.")

    def __repr__(self) -> str:
        return f"<zray actor class {self._name}>"

    def remote(self, *args: Any, **kwargs: Any) -> "ActorHandle":
        return self._create(args, kwargs, self._options)

    def options(self, **options: Any) -> "_BoundActorOptions":
        checked = validate_options(options, ACTOR_OPTIONS, f"{self._name}.options()")
        return _BoundActorOptions(self, {**self._options, **checked})

    def _export(self, client: Any) -> bytes:
        if self._blob is None:
            import cloudpickle

            try:
                self._blob = cloudpickle.dumps(self._cls, protocol=5)
            except Exception as exc:
                from zray.exceptions import SerializationError
                raise SerializationError(f"could not pickle actor class {self._name}: "
                                         f"{type(exc).__name__}: {exc}") from exc
            self._fid = hashlib.sha1(self._blob).digest()[:16]
        client.export_function(self._fid, self._blob, self._name)
        return self._fid

    def _create(self, args: Any, kwargs: Any, options: Dict[str, Any]) -> "ActorHandle":
        client = state.client
        if client is None:
            from zray import _auto_init
            client = _auto_init()
        name = options.get("name")
        if name and options.get("get_if_exists"):
            try:
                return get_actor(name)
            except ValueError:
                pass
        fid = self._export(client)
        actor_id = ids.new_id()
        args_part, keep = client.encode_args(args, kwargs, f"{self._name}.__init__")
        spec = protocol.task_spec(
            task_id=ids.new_id(), job_id=client.job_id, name=f"{self._name}.__init__",
            function_id=fid, resources=resource_demand({"num_cpus": 0, **options}),
            max_retries=0, args=args_part, actor_id=actor_id, new_actor=True,
            max_restarts=options.get("max_restarts", 0),
            max_concurrency=options.get("max_concurrency") or (1000 if self._async else 1),
            is_async=self._async, class_name=self._name, actor_name=name or "",
            detached=options.get("lifetime") == "detached")
        if name:
            # Reserve the name before anything runs, so a clash fails here.
            client.reserve_name(name, actor_id, protocol.returns_of(spec)[0],
                                {"class_name": self._name, "methods": self._methods})
        anchor = client.submit(spec)[0]
        del keep
        return ActorHandle(actor_id, self._name, self._methods, anchor)


class _BoundActorOptions:
    def __init__(self, actor_class: ActorClass, options: Dict[str, Any]) -> None:
        self._actor_class = actor_class
        self._options = options

    def remote(self, *args: Any, **kwargs: Any) -> "ActorHandle":
        return self._actor_class._create(args, kwargs, self._options)


class ActorHandle:
    def __init__(self, actor_id: bytes, class_name: str, methods: Dict[str, int],
                 anchor: ObjectRef) -> None:
        self._actor_id = actor_id
        self._class_name = class_name
        self._methods = methods
        self._anchor = anchor

    def __getattr__(self, name: str) -> "ActorMethod":
        methods = self.__dict__.get("_methods", {})
        if name in methods:
            return ActorMethod(self, name, methods[name])
        raise AttributeError(f"actor {self.__dict__.get('_class_name', '?')} has no method "
                             f"{name!r}")

    def __repr__(self) -> str:
        return f"Actor({self._class_name}, {self._actor_id.hex()})"

    def __hash__(self) -> int:
        return hash(self._actor_id)

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, ActorHandle) and other._actor_id == self._actor_id

    def __reduce__(self):
        return (ActorHandle, (self._actor_id, self._class_name, self._methods, self._anchor))

    def _submit(self, method_name: str, args: Any, kwargs: Any, num_returns: int) -> Any:
        client = state.client
        if client is None:
            raise RuntimeError("zray is not initialized; call zray.init() first")
        task_name = f"{self._class_name}.{method_name}"
        args_part, keep = client.encode_args(args, kwargs, task_name)
        spec = protocol.task_spec(
            task_id=ids.new_id(), job_id=client.job_id, name=task_name,
            num_returns=num_returns, resources={}, max_retries=0, args=args_part,
            actor_id=self._actor_id, method=method_name)
        refs = client.submit(spec)
        del keep
        if num_returns == 1:
            return refs[0]
        if num_returns == 0:
            return None
        return refs


class ActorMethod:
    def __init__(self, handle: ActorHandle, name: str, num_returns: int) -> None:
        self._handle = handle
        self._name = name
        self._num_returns = num_returns

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"Actor method {self._name} cannot be called directly. Instead of "
                        f"'actor.{self._name}()', call 'actor.{self._name}.remote()'.")

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        return self._handle._submit(self._name, args, kwargs, self._num_returns)

    def options(self, **options: Any) -> "ActorMethod":
        checked = validate_options(options, METHOD_OPTIONS, f"{self._name}.options()")
        return ActorMethod(self._handle, self._name,
                           checked.get("num_returns", self._num_returns))


def make_actor_class(cls: type, options: Dict[str, Any]) -> ActorClass:
    return ActorClass(cls, options)


def get_actor(name: str) -> ActorHandle:
    """The handle of the live actor registered under ``name``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"zray.get_actor: name must be a non-empty string, got {name!r}")
    client = state.client
    if client is None:
        raise RuntimeError("zray is not initialized; call zray.init() first")
    reply = client.query("actor", name=name)
    meta = reply["meta"]
    return ActorHandle(reply["actor_id"], meta["class_name"], meta["methods"],
                       ObjectRef(reply["anchor"]))


def kill(actor: ActorHandle, *, no_restart: bool = True) -> None:
    """End the actor at once; pending and later calls raise ActorDiedError."""
    if not isinstance(actor, ActorHandle):
        raise TypeError(f"zray.kill expects an actor handle, got {type(actor).__name__}")
    client = state.client
    if client is None:
        raise RuntimeError("zray is not initialized; call zray.init() first")
    client.kill_actor(actor._actor_id, no_restart=bool(no_restart))
