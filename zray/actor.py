"""Actors: ``@zray.remote`` on a class, handles, methods, ``@zray.method``.

An actor lives in a worker of its own.  Its handle is small and picklable:
the actor's ID, its method table (one :class:`MethodInfo` per method: its
options and parameters), and a ref to the actor's *anchor* object (the
result of its creation task).  Handles are counted through that ref like
any object, so when the last handle anywhere is gone the anchor is freed
and the node retires the actor.

The decorated class stays reachable through its :class:`ActorClass`:
``Cls.CONST`` and ``Cls.helper()`` reach the user's class.  Arguments are
bound against the constructor's or method's signature at ``.remote()``.
``max_task_retries`` becomes each call's ``max_retries`` (the agent runs a
call again on the restarted actor), and ``max_pending_calls`` is counted
per handle, here in the caller (calls with ``num_returns=0`` have no result
to watch and are not counted).  Named actors live in a namespace: the
``namespace`` option's, else the job's (its anonymous one if ``init`` named
none); the name is claimed before the creation task is submitted.

Creation and call specs are built with ``protocol.task_spec`` and handed to
the client's public verbs (``submit``, ``reserve_name``, ``query``,
``kill_actor``); this module owns no connection state.  What runs in the
actor's worker is ``zray._private.actor_worker``.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import inspect
from typing import Any, Callable, Dict, Optional

from zray import exceptions
from zray._private import ids, protocol, signature, state
from zray._private.names import anonymous_namespace
from zray._private.runtime_env import resolve as runtime_env
from zray._private.options import (
    ACTOR_OPTIONS, METHOD_OPTIONS, run_settings, runtime_env_of, retry_exceptions_wire,
    strategy_wire, validate_options,
)
from zray.object_ref import ObjectRef, ObjectRefGenerator
from zray.util.placement_group import actor_demand, captured_actor_strategy

#: Methods every actor has, as in Ray: wait until it is up; end it after queued calls.
BUILTIN_METHODS = ("__ray_ready__", "__ray_terminate__")

_NO_BINDER: Any = False


class MethodInfo:
    """One actor method as its handles know it: options, parameters, task name."""

    __slots__ = ("name", "num_returns", "max_task_retries", "retry_exceptions",
                 "concurrency_group", "params", "task_name", "_binder")

    def __init__(self, name: str, num_returns: int = 1, max_task_retries: Optional[int] = None,
                 retry_exceptions: Any = None, concurrency_group: Optional[str] = None,
                 params: Optional[list] = None, task_name: Optional[str] = None) -> None:
        self.name = name
        self.num_returns = num_returns
        self.max_task_retries = max_task_retries   # None: the actor's
        self.retry_exceptions = retry_exceptions   # as the spec carries it (True / bytes)
        self.concurrency_group = concurrency_group
        self.params = params                       # signature.to_wire(); None: unknown
        self.task_name = task_name                 # the ``name`` option
        self._binder: Any = None

    @classmethod
    def of(cls, name: str, options: Dict[str, Any], params: Optional[list]) -> "MethodInfo":
        """From checked METHOD_OPTIONS."""
        return cls(name, options.get("num_returns", 1), options.get("max_task_retries"),
                   retry_exceptions_wire(options.get("retry_exceptions")),
                   options.get("concurrency_group"), params, options.get("name"))

    def to_wire(self) -> list:
        return [self.name, self.num_returns, self.max_task_retries, self.retry_exceptions,
                self.concurrency_group, self.params, self.task_name]

    @classmethod
    def from_wire(cls, wire: list) -> "MethodInfo":
        return cls(*wire)

    def __reduce__(self):
        return (MethodInfo.from_wire, (self.to_wire(),))

    def with_options(self, options: Dict[str, Any]) -> "MethodInfo":
        """This method with ``.options(...)`` (checked) over its own."""
        info = MethodInfo(*self.to_wire())
        info._binder = self._binder
        for key in ("num_returns", "max_task_retries", "concurrency_group"):
            if key in options:
                setattr(info, key, options[key])
        if "retry_exceptions" in options:
            info.retry_exceptions = retry_exceptions_wire(options["retry_exceptions"])
        if "name" in options:
            info.task_name = options["name"]
        return info

    def check_args(self, args: Any, kwargs: Any, class_name: str) -> None:
        binder = self._binder
        if binder is None:
            binder = self._binder = signature.from_wire(
                self.params, f"{class_name}.{self.name}") or _NO_BINDER
        if binder is not _NO_BINDER:
            binder.check(args, kwargs)


def method(*args: Any, **options: Any) -> Callable:
    """Options of one actor method: ``@zray.method(num_returns=2)`` (also bare
    ``@zray.method``): ``num_returns``, ``max_task_retries``,
    ``retry_exceptions``, ``concurrency_group``, ``name``."""
    if len(args) == 1 and not options and callable(args[0]):
        args[0].__zray_method_options__ = {}
        return args[0]
    if args:
        raise TypeError("@zray.method takes keyword options only, e.g. "
                        "@zray.method(num_returns=2)")
    checked = validate_options(options, METHOD_OPTIONS, "@zray.method")

    def decorate(fn: Callable) -> Callable:
        fn.__zray_method_options__ = checked
        return fn
    return decorate


def method_table(cls: type) -> Dict[str, MethodInfo]:
    """Every method a handle of ``cls`` can call, inherited ones included."""
    table = {}
    for name, member in inspect.getmembers(cls):
        if name.startswith("__") and name != "__call__":
            continue
        if inspect.isfunction(member) or inspect.ismethod(member):
            options = getattr(member, "__zray_method_options__", {})
            if "num_returns" not in options and (inspect.isgeneratorfunction(member) or
                                                 inspect.isasyncgenfunction(member)):
                options = dict(options, num_returns="streaming")  # Ray's default
            params = signature.to_wire(signature.method_signature(cls, name))
            table[name] = MethodInfo.of(name, options, params)
    for name in BUILTIN_METHODS:
        table[name] = MethodInfo(name, params=[])
    return table


def _is_async(cls: type) -> bool:
    return any(inspect.iscoroutinefunction(m) or inspect.isasyncgenfunction(m)
               for _, m in inspect.getmembers(cls, inspect.isfunction))


def _client_or_init() -> Any:
    client = state.client
    if client is None:
        from zray import _auto_init
        client = _auto_init()
    return client


def _connected_client() -> Any:
    client = state.client
    if client is None:
        raise RuntimeError("zray is not initialized; call zray.init() first")
    return client


def job_namespace(client: Any) -> str:
    """The namespace of the job this code runs for (its anonymous one if unnamed)."""
    namespace = client.spec_namespace()
    if namespace:
        return namespace
    worker = state.worker
    task = worker.current_task if worker is not None else None
    return anonymous_namespace(task.get("job_id", client.job_id) if task else client.job_id)


class ActorClass:
    """What ``@zray.remote`` makes of a class: ``.remote()``, ``.options()``, and
    the user's class attributes, static methods and class methods."""

    def __init__(self, cls: type, options: Dict[str, Any]) -> None:
        self._cls = cls
        self._name = cls.__qualname__
        self._options = validate_options(options, ACTOR_OPTIONS, f"@zray.remote on {self._name}")
        self._methods = method_table(cls)
        self._async = _is_async(cls)
        self._blob: Optional[bytes] = None
        self._fid: Optional[bytes] = None
        self._binder: Any = None
        functools.update_wrapper(self, cls, updated=())

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"Actor class {self._name} cannot be instantiated directly. "
                        f"Instead of '{self._name}()', call '{self._name}.remote()'.")

    def __getattr__(self, name: str) -> Any:
        cls = self.__dict__.get("_cls")
        if cls is None or name.startswith("__"):
            raise AttributeError(name)
        try:
            return getattr(cls, name)
        except AttributeError:
            raise AttributeError(f"actor class {self._name} has no attribute {name!r}") from None

    def __mro_entries__(self, bases: tuple) -> tuple:
        raise TypeError(f"{self._name} is a zray actor class, which cannot be subclassed; "
                        f"subclass the plain class and decorate the subclass with "
                        f"@zray.remote instead")

    def __reduce__(self):
        return (make_actor_class, (self._cls, self._options))

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
                raise exceptions.SerializationError(
                    f"could not pickle actor class {self._name}: "
                    f"{type(exc).__name__}: {exc}") from exc
            self._fid = hashlib.sha1(self._blob).digest()[:16]
        client.export_function(self._fid, self._blob, self._name)
        return self._fid

    def _check_args(self, args: Any, kwargs: Any) -> None:
        binder = self._binder
        if binder is None:
            binder = self._binder = signature.of_callable(self._cls, self._name) or _NO_BINDER
        if binder is not _NO_BINDER:
            binder.check(args, kwargs)

    def _meta(self, options: Dict[str, Any]) -> dict:
        """What a handle needs, for the actor's name entry (msgpack: plain values)."""
        return {"class_name": self._name,
                "methods": {name: info.to_wire() for name, info in self._methods.items()},
                "max_task_retries": options.get("max_task_retries", 0),
                "max_pending_calls": options.get("max_pending_calls", -1)}

    def _create(self, args: Any, kwargs: Any, options: Dict[str, Any]) -> "ActorHandle":
        client = _client_or_init()
        self._check_args(args, kwargs)
        options = captured_actor_strategy(options)  # a creator in a group may capture it
        name = options.get("name")
        if options.get("get_if_exists") and not name:
            raise ValueError(f"{self._name}: get_if_exists=True needs a name")
        fid = self._export(client)
        args_part, keep = client.encode_args(args, kwargs, f"{self._name}.__init__")
        # The name's namespace; the actor itself runs in its job's namespace.
        namespace = (options.get("namespace") or job_namespace(client)) if name else None
        actor_id = ids.new_id()
        spec = protocol.task_spec(
            task_id=ids.new_id(), job_id=client.job_id, name=f"{self._name}.__init__",
            function_id=fid, resources=actor_demand(options, self._name),
            max_retries=0, args=args_part, actor_id=actor_id, new_actor=True,
            max_restarts=options.get("max_restarts", 0),
            max_concurrency=options.get("max_concurrency") or (1000 if self._async else 1),
            is_async=self._async, class_name=self._name, actor_name=name,
            namespace=client.spec_namespace(), name_namespace=namespace,
            name_meta=self._meta(options) if name else None,
            detached=options.get("lifetime") == "detached",
            scheduling_strategy=strategy_wire(options.get("scheduling_strategy")),
            **run_settings(options))
        env = runtime_env_of(options)
        if env is not None or runtime_env.active():
            runtime_env.attach(spec, env)  # the actor's, over the job's
        if name:
            # Claim the name before anything runs, so a clash fails here.
            existing = client.reserve_name(
                name=name, namespace=namespace, actor_id=actor_id,
                anchor=protocol.returns_of(spec)[0], meta=self._meta(options),
                get_if_exists=bool(options.get("get_if_exists")))
            if existing is not None:
                return handle_from_entry(existing)
        anchor = client.submit(spec)[0]
        del keep
        return ActorHandle(actor_id, self._name, self._methods, anchor,
                           options.get("max_task_retries", 0),
                           options.get("max_pending_calls", -1))


class _BoundActorOptions:
    def __init__(self, actor_class: ActorClass, options: Dict[str, Any]) -> None:
        self._actor_class = actor_class
        self._options = options

    def remote(self, *args: Any, **kwargs: Any) -> "ActorHandle":
        return self._actor_class._create(args, kwargs, self._options)


class ActorHandle:
    def __init__(self, actor_id: bytes, class_name: str, methods: Dict[str, MethodInfo],
                 anchor: ObjectRef, max_task_retries: int = 0,
                 max_pending_calls: int = -1) -> None:
        self._actor_id = actor_id
        self._class_name = class_name
        self._methods = methods
        self._anchor = anchor
        self._max_task_retries = max_task_retries
        self._max_pending_calls = max_pending_calls
        # Refs to the first result of each call not known to be finished.
        self._pending: Optional[collections.deque] = \
            collections.deque() if max_pending_calls > 0 else None

    def __getattr__(self, name: str) -> "ActorMethod":
        info = self.__dict__.get("_methods", {}).get(name)
        if info is not None:
            return ActorMethod(self, info)
        raise AttributeError(f"actor {self.__dict__.get('_class_name', '?')} has no method "
                             f"{name!r}")

    def __repr__(self) -> str:
        return f"Actor({self._class_name}, {self._actor_id.hex()})"

    def __hash__(self) -> int:
        return hash(self._actor_id)

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, ActorHandle) and other._actor_id == self._actor_id

    def __reduce__(self):
        return (ActorHandle, (self._actor_id, self._class_name, self._methods, self._anchor,
                              self._max_task_retries, self._max_pending_calls))

    def _make_room(self, client: Any) -> None:
        """Forget finished calls; raise if max_pending_calls are still unfinished."""
        pending = self._pending
        while pending and client.is_ready(pending[0]._id):
            pending.popleft()
        if len(pending) >= self._max_pending_calls:
            self._pending = pending = collections.deque(
                ref for ref in pending if not client.is_ready(ref._id))
            if len(pending) >= self._max_pending_calls:
                raise exceptions.PendingCallsLimitExceeded(
                    f"actor {self._class_name} has {len(pending)} calls pending on this "
                    f"handle, its max_pending_calls ({self._max_pending_calls}); wait for "
                    f"some to finish before calling it again")

    def _submit(self, info: MethodInfo, args: Any, kwargs: Any) -> Any:
        client = _connected_client()
        info.check_args(args, kwargs, self._class_name)
        if self._pending is not None:
            self._make_room(client)
        task_name = info.task_name or f"{self._class_name}.{info.name}"
        args_part, keep = client.encode_args(args, kwargs, task_name)
        retries = info.max_task_retries
        num_returns = info.num_returns
        generator = num_returns if isinstance(num_returns, str) else None
        if generator:
            num_returns = 1
        spec = protocol.task_spec(
            task_id=ids.new_id(), job_id=client.job_id, name=task_name,
            num_returns=num_returns, resources={},
            max_retries=self._max_task_retries if retries is None else retries,
            args=args_part, actor_id=self._actor_id, method=info.name,
            retry_exceptions=info.retry_exceptions, namespace=client.spec_namespace(),
            concurrency_group=info.concurrency_group, generator=generator)
        refs = client.submit(spec)
        del keep
        if generator == "streaming":
            return ObjectRefGenerator(refs[0])
        if num_returns == 1:
            if self._pending is not None:
                self._pending.append(refs[0])
            return refs[0]
        if num_returns == 0:
            return None
        if self._pending is not None:
            self._pending.append(refs[0])
        return refs


class ActorMethod:
    __slots__ = ("_handle", "_info")

    def __init__(self, handle: ActorHandle, info: MethodInfo) -> None:
        self._handle = handle
        self._info = info

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        name = self._info.name
        raise TypeError(f"Actor method {name} cannot be called directly. Instead of "
                        f"'actor.{name}()', call 'actor.{name}.remote()'.")

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        return self._handle._submit(self._info, args, kwargs)

    def options(self, **options: Any) -> "ActorMethod":
        checked = validate_options(options, METHOD_OPTIONS, f"{self._info.name}.options()")
        return ActorMethod(self._handle, self._info.with_options(checked))


def make_actor_class(cls: type, options: Dict[str, Any]) -> ActorClass:
    return ActorClass(cls, options)


def handle_from_entry(entry: dict) -> ActorHandle:
    """A handle to a named actor, from its entry (``reserve_name``, ``query("actor")``)."""
    meta = entry["meta"]
    methods = {name: MethodInfo.from_wire(wire) for name, wire in meta["methods"].items()}
    return ActorHandle(entry["actor_id"], meta["class_name"], methods,
                       ObjectRef(entry["anchor"]), meta.get("max_task_retries", 0),
                       meta.get("max_pending_calls", -1))


def get_actor(name: str, namespace: Optional[str] = None) -> ActorHandle:
    """The handle of the live actor named ``name`` in ``namespace`` (None: this job's)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"zray.get_actor: name must be a non-empty string, got {name!r}")
    if namespace is not None and (not isinstance(namespace, str) or not namespace):
        raise ValueError(f"zray.get_actor: namespace must be a non-empty string, "
                         f"got {namespace!r}")
    client = _connected_client()
    reply = client.query("actor", name=name, namespace=namespace or job_namespace(client))
    return handle_from_entry(reply)


def kill(actor: ActorHandle, *, no_restart: bool = True) -> None:
    """End the actor at once; pending and later calls raise ActorDiedError."""
    if not isinstance(actor, ActorHandle):
        raise TypeError(f"zray.kill expects an actor handle, got {type(actor).__name__}")
    _connected_client().kill_actor(actor._actor_id, no_restart=bool(no_restart))


def exit_actor() -> None:
    """End the actor this code runs in, on purpose, once the current call is over.

    The call that exits sees ActorDiedError, calls queued behind it fail with
    ActorDiedError, and the actor is not restarted; its ``atexit`` handlers
    run.  Calls already running in a threaded or async actor finish first.
    In the constructor, the actor is dead from the start.
    """
    worker = state.worker
    host = getattr(worker, "host", None)
    if host is None or not host.actor_id:
        raise TypeError("exit_actor() can only be called inside an actor "
                        "(in one of its methods or its constructor)")
    from zray._private.actor_worker import ActorExit

    raise ActorExit()
