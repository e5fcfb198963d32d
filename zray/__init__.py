"""zray: Ray's API on a ZeroMQ message bus.

    import zray as ray
    ray.init()

    @ray.remote
    def f(x):
        return x + 1

    ray.get(f.remote(1))  # 2

This module is the public API only; the machinery lives in ``zray._private``.

Importing it stays cheap: every process zray starts (head, node agent,
worker template) imports this package first, so the modules of actors and
remote functions load on first use (``remote()``, or ``__getattr__``).
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple, Union

from zray import exceptions
from zray._private import state
from zray._private.lazy import lazy_getattr
from zray.object_ref import (
    ActorID, DynamicObjectRefGenerator, JobID, NodeID, ObjectID, ObjectRef, ObjectRefGenerator,
    TaskID, WorkerID,
)

if TYPE_CHECKING:
    from zray.actor import ActorClass, ActorHandle, get_actor, kill, method
    from zray.runtime_context import get_runtime_context

__version__ = "0.1.0"

#: Public names that live in submodules, loaded when first asked for.
_LAZY = {
    "ActorHandle": "zray.actor", "ActorClass": "zray.actor", "get_actor": "zray.actor",
    "kill": "zray.actor", "method": "zray.actor",
    "get_runtime_context": "zray.runtime_context",
    "timeline": "zray.util.state.api",
    "visualize_computation_graph": "zray.util.state.api",
}
_SUBMODULES = ("actor", "object_ref", "remote_function", "cli", "util", "runtime_context",
               "services")


__getattr__ = lazy_getattr(__name__, _LAZY, _SUBMODULES)


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(_LAZY))

_lock = threading.RLock()
_session: Any = None
_context: Optional["ClientContext"] = None


class ClientContext:
    """What ``init`` returns: the session's addresses, also readable as a mapping,
    and a context manager that shuts zray down on exit."""

    def __init__(self, address_info: Dict[str, Any]) -> None:
        self.address_info = address_info
        #: Where the dashboard listens (``init(include_dashboard=True)``), else None.
        self.dashboard_url: Optional[str] = address_info.get("webui_url")

    def __getitem__(self, key: str) -> Any:
        return self.address_info[key]

    def __contains__(self, key: str) -> bool:
        return key in self.address_info

    def keys(self):
        return self.address_info.keys()

    def get(self, key: str, default: Any = None) -> Any:
        return self.address_info.get(key, default)

    def __repr__(self) -> str:
        return f"ClientContext({self.address_info!r})"

    def __enter__(self) -> "ClientContext":
        return self

    def __exit__(self, *exc: Any) -> None:
        shutdown()

    def disconnect(self) -> None:
        shutdown()


def _check_number(name: str, value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                              or value < 0):
        raise ValueError(f"zray.init: {name} must be a non-negative number, got {value!r}")


def init(address: Optional[str] = None, *, num_cpus: Optional[float] = None,
         num_gpus: Optional[float] = None, resources: Optional[Dict[str, float]] = None,
         labels: Optional[Dict[str, str]] = None, object_store_memory: Optional[int] = None,
         namespace: Optional[str] = None, runtime_env: Optional[Dict[str, Any]] = None,
         ignore_reinit_error: bool = False, include_dashboard: Optional[bool] = None,
         dashboard_host: str = "127.0.0.1", dashboard_port: Optional[int] = None,
         log_to_driver: bool = True, logging_level: Union[int, str] = logging.INFO,
         logging_format: Optional[str] = None, configure_logging: bool = True,
         job_config: Any = None, redis_address: Optional[str] = None,
         _system_config: Optional[Dict[str, Any]] = None, _temp_dir: Optional[str] = None,
         **unknown: Any) -> ClientContext:
    """Start a single-node cluster in this process's care and connect to it, or
    (with ``address``, else ``$ZRAY_ADDRESS`` as Ray reads ``RAY_ADDRESS``) join a running
    cluster.  Ray's parameters; those without
    effect in zray are listed in the README ("Coming from Ray")."""
    global _context
    from zray._private.init_options import Settings
    from zray._private.init_options import configure_logging as set_up_logging

    if unknown:
        raise TypeError(f"zray.init got unknown option(s): {', '.join(sorted(unknown))}")
    with _lock:
        if state.client is not None:
            if ignore_reinit_error:
                return _context
            raise RuntimeError("zray.init() was already called in this process; call "
                               "zray.shutdown() first or pass ignore_reinit_error=True")
        settings = Settings(namespace=namespace, runtime_env=runtime_env, job_config=job_config,
                            labels=labels, system_config=_system_config, temp_dir=_temp_dir,
                            log_to_driver=log_to_driver, include_dashboard=include_dashboard,
                            dashboard_host=dashboard_host, dashboard_port=dashboard_port)
        if configure_logging:
            set_up_logging(logging_level, logging_format)
        address = address or redis_address or os.environ.get("ZRAY_ADDRESS") or None
        if address is not None and address != "local":
            settings.check_connecting()
            _context = _connect(address, settings, num_cpus=num_cpus, num_gpus=num_gpus,
                                resources=resources, object_store_memory=object_store_memory)
        else:
            _context = _start_local(settings, num_cpus=num_cpus, num_gpus=num_gpus,
                                    resources=resources,
                                    object_store_memory=object_store_memory)
        try:  # the job's working_dir and py_modules: packed and put now
            settings.ship_runtime_env(connecting=address is not None and address != "local")
        except BaseException:
            shutdown()
            raise
        return _context


def _start_local(settings: Any, *, num_cpus: Optional[float], num_gpus: Optional[float],
                 resources: Optional[Dict[str, float]],
                 object_store_memory: Optional[int]) -> ClientContext:
    """Start the processes of a single-node session and connect to its agent."""
    global _session
    _check_number("num_cpus", num_cpus)
    _check_number("num_gpus", num_gpus)
    if object_store_memory is not None and (not isinstance(object_store_memory, int)
                                            or isinstance(object_store_memory, bool)
                                            or object_store_memory < 1024 * 1024):
        raise ValueError("zray.init: object_store_memory must be an int of at least "
                         f"1 MiB (bytes), got {object_store_memory!r}")
    if resources is not None:
        from zray._private import scheduling
        scheduling.validate_resource_request(None, None, resources, where="zray.init")

    import os

    from zray._private import services
    from zray._private.init_options import scoped_environ

    detected = services.detect_gpus()
    if num_gpus is None:
        num_gpus = len(detected)
    gpu_ids = detected[:int(num_gpus)] if len(detected) >= num_gpus else \
        list(range(int(num_gpus)))
    if num_cpus is None:
        num_cpus = os.cpu_count() or 1
    store = object_store_memory or services.default_store_bytes()
    # The agent starts now; the client (zmq, cloudpickle, ...) loads meanwhile.
    with scoped_environ(settings.environment()):
        session = services.LocalSession(num_cpus=num_cpus, gpu_ids=gpu_ids, num_gpus=num_gpus,
                                        resources=dict(resources or {}), store_bytes=store)
    try:
        from zray import remote_function  # noqa: F401  (the first @remote needs it)
        from zray._private.client import Client

        client = Client(session.agent_address, "driver", agent_pid=session.agent.pid)
        _apply(settings, client)
        state.client = client
        client.connect(timeout=30)
        dashboard_url = session.start_head(settings.dashboard)
    except BaseException as exc:
        client, state.client = state.client, None
        if client is not None:
            client.close()
        log = session.log_tail()
        session.stop()
        raise RuntimeError(f"zray could not start: {exc}\n{log}") from exc
    _session = session
    info = _address_info(client, session.head_address, session.session_dir,
                         agent_address=session.agent_address)
    info["webui_url"] = dashboard_url
    return ClientContext(info)


def _apply(settings: Any, client: Any) -> None:
    client.namespace = settings.namespace
    client.log_to_driver = settings.log_to_driver


def _address_info(client: Any, address: str, session_dir: str, *,
                  agent_address: str) -> Dict[str, Any]:
    return {
        "node_id": client.node_id.hex(),
        "node_ip_address": client.welcome.get("ip", "127.0.0.1"),
        "address": address, "gcs_address": address, "head_address": address,
        "agent_address": agent_address,
        "object_store_address": client.welcome.get("arena"),
        "session_dir": session_dir, "webui_url": None,
        "job_id": client.job_id.hex(),
    }


def _connect(address: str, settings: Any, **local_only: Any) -> ClientContext:
    """Join a running cluster through this machine's node agent; start nothing."""
    from zray._private import services
    from zray._private.client import Client
    from zray._private.init_options import scoped_environ

    given = sorted(k for k, v in local_only.items() if v is not None)
    if given:
        raise ValueError(f"zray.init(address=...) connects to a running cluster, whose nodes "
                         f"were given their resources when they started; do not pass "
                         f"{', '.join(given)} (start a node with `zray worker --num-cpus ...` "
                         f"instead)")
    if not isinstance(address, str):
        raise TypeError(f"zray.init: address must be 'HOST:PORT' or 'auto', got {address!r}")
    try:
        with scoped_environ(settings.environment()):  # _temp_dir: where records are
            record = services.find_record(address)
    except services.ClusterError as exc:
        raise ConnectionError(str(exc)) from None
    client = Client(record["agent_address"], "driver")
    _apply(settings, client)
    try:
        state.client = client
        client.connect(timeout=10)
    except BaseException as exc:
        state.client = None
        raise ConnectionError(f"zray could not connect to the node agent of "
                              f"{record['address']} at {record['agent_address']}: {exc}") from exc
    return ClientContext(_address_info(client, record["address"], record["session_dir"],
                                       agent_address=record["agent_address"]))


def _auto_init() -> Any:
    init(ignore_reinit_error=True)
    return state.client


def is_initialized() -> bool:
    return state.client is not None


def shutdown() -> None:
    """Disconnect, and stop every process ``init`` started."""
    global _session, _context
    with _lock:
        from zray._private.runtime_env import resolve
        resolve.reset()  # the job's packages: their refs go before the client
        client, state.client = state.client, None
        if client is not None:
            client.close()
            if client.arena is not None:
                client.arena.close()
        if _session is not None:
            _session.stop()
        _session = None
        _context = None


atexit.register(shutdown)


def _client() -> Any:
    client = state.client
    if client is None:
        raise RuntimeError("zray is not initialized; call zray.init() first")
    return client


def remote(*args: Any, **kwargs: Any) -> Any:
    """Make a function or class remote: ``@remote``, ``@remote(...)`` or ``remote(f)``.

    Options are checked against the table of the target (function or class)
    when it is decorated; the seed-era typed form ``@remote([int, int], [int])``
    checks argument types when the task is submitted.
    """
    from zray.remote_function import remote_decorator

    return remote_decorator(*args, **kwargs)


def _as_ref_list(refs: Any, what: str) -> Tuple[List[ObjectRef], bool]:
    if isinstance(refs, ObjectRef):
        return [refs], True
    if isinstance(refs, (list, tuple)):
        for i, ref in enumerate(refs):
            if not isinstance(ref, ObjectRef):
                raise TypeError(f"{what} expects ObjectRefs; item {i} is a "
                                f"{type(ref).__name__}")
        return list(refs), False
    raise TypeError(f"{what} expects an ObjectRef or a list of ObjectRefs, "
                    f"got {type(refs).__name__}")


def _check_session(refs: List[ObjectRef], client: Any, what: str) -> None:
    """Refs made before the last ``shutdown`` name objects of a session that is gone."""
    for ref in refs:
        if ref._client is not client and ref._client is not None:
            raise exceptions.ObjectLostError(
                f"{what}: {ref!r} belongs to a zray session that has ended (zray.shutdown() "
                f"was called after it was made); its object is gone with that session")


def get(object_refs: Union[ObjectRef, Sequence[ObjectRef]], *,
        timeout: Optional[float] = None) -> Any:
    """The value(s) behind ref(s); blocks until ready or ``timeout`` seconds pass.

    The first failure among them is raised as soon as it is known; with
    ``timeout=0`` the call returns at once or raises GetTimeoutError.
    """
    refs, single = _as_ref_list(object_refs, "zray.get")
    if timeout is not None and timeout < 0:
        raise ValueError(f"zray.get: timeout must be >= 0, got {timeout}")
    if not refs:
        return []
    client = _client()
    _check_session(refs, client, "zray.get")
    values = client.get(refs, timeout)
    return values[0] if single else values


def put(value: Any) -> ObjectRef:
    """Store ``value`` in the object store; return a ref to it."""
    if isinstance(value, ObjectRef):
        raise TypeError("zray.put of an ObjectRef is not allowed; pass the ref itself")
    return _client().put(value)


def wait(object_refs: Sequence[ObjectRef], *, num_returns: int = 1,
         timeout: Optional[float] = None, fetch_local: bool = True
         ) -> Tuple[List[ObjectRef], List[ObjectRef]]:
    """Split refs into (ready, not ready), both in the input's order.

    A failed task's ref counts as ready.  ``fetch_local`` is accepted; objects
    of other nodes are brought here only when read.
    """
    if isinstance(object_refs, ObjectRef):
        raise TypeError("zray.wait expects a list of ObjectRefs, got a single ObjectRef")
    refs, _ = _as_ref_list(object_refs, "zray.wait")
    if not refs:
        return [], []
    oids = [r._id for r in refs]
    if len(set(oids)) != len(oids):
        raise ValueError("zray.wait got the same ObjectRef more than once")
    if isinstance(num_returns, bool) or not isinstance(num_returns, int) or num_returns < 1:
        raise ValueError(f"zray.wait: num_returns must be a positive int, got {num_returns!r}")
    if num_returns > len(refs):
        raise ValueError(f"zray.wait: num_returns ({num_returns}) is more than the number "
                         f"of refs ({len(refs)})")
    if timeout is not None and timeout < 0:
        raise ValueError(f"zray.wait: timeout must be >= 0, got {timeout}")
    client = _client()
    _check_session(refs, client, "zray.wait")
    here = client.objects.has
    flags = list(map(here, oids))
    if flags.count(True) < num_returns:  # (a loop of waits finds its next one here)
        client.wait_objects(oids, num_returns, timeout)
        flags = list(map(here, oids))
    ready: List[ObjectRef] = []
    not_ready: List[ObjectRef] = []
    for ref, flag in zip(refs, flags):
        if flag and len(ready) < num_returns:
            ready.append(ref)
        else:
            not_ready.append(ref)
    return ready, not_ready


def cancel(object_ref: ObjectRef, *, force: bool = False, recursive: bool = True) -> None:
    """Cancel the task that makes ``object_ref``: queued ones never run; running
    ones get KeyboardInterrupt, or with ``force=True`` their worker is killed."""
    if not isinstance(object_ref, ObjectRef):
        raise TypeError(f"zray.cancel expects an ObjectRef, got {type(object_ref).__name__}")
    client = _client()
    _check_session([object_ref], client, "zray.cancel")
    client.cancel(object_ref.task_id().binary(), force=bool(force))


def get_gpu_ids() -> List[int]:
    """The GPU IDs assigned to the current task (empty in a driver)."""
    worker = getattr(state, "worker", None)
    return list(getattr(worker, "gpu_ids", []) or [])


def cluster_resources() -> Dict[str, float]:
    return _client().query("resources")["total"]


def available_resources() -> Dict[str, float]:
    return _client().query("resources")["available"]


def nodes() -> List[Dict[str, Any]]:
    out = []
    for node in _client().query("nodes")["nodes"]:
        out.append({"NodeID": node["node_id"], "Alive": node["alive"],
                    "NodeManagerAddress": node.get("node_ip"), "Resources": node["resources"],
                    "Available": node.get("available", {}),
                    "ObjectStoreCapacity": node.get("store_capacity", 0),
                    "ObjectStoreUsed": node.get("store_used", 0)})
    return out


def error_info() -> List[Dict[str, Any]]:
    """Recent task failures of this job, oldest first."""
    return _client().query("errors")["errors"]


__all__ = [
    "init", "shutdown", "is_initialized", "remote", "get", "put", "wait", "cancel",
    "get_gpu_ids", "cluster_resources", "available_resources", "nodes", "error_info",
    "get_runtime_context", "ObjectRef", "ObjectID", "TaskID", "ActorID", "NodeID", "JobID",
    "WorkerID", "exceptions", "__version__", "method", "kill", "get_actor", "ActorHandle",
    "ActorClass", "ObjectRefGenerator", "DynamicObjectRefGenerator", "timeline",
    "visualize_computation_graph",
]
