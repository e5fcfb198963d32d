"""What the code running here can learn about where it runs: ``get_runtime_context()``.

The job, node, worker, task and actor this code runs in, its namespace and
the resources and accelerators it was given.  Everything is read from this
process's client and, in a worker, from the spec of the task it runs (the
worker loop keeps it as ``state.worker.current_task``) and of the actor it
hosts.  This module reads that state; it never changes it.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from zray._private import state
from zray._private.names import anonymous_namespace


def _running_specs() -> Tuple[Optional[dict], Optional[dict]]:
    """(the spec of the task running here, the creation spec of the actor hosted here)."""
    worker = state.worker
    if worker is None:
        return None, None
    task = worker.current_task
    actor = getattr(worker, "actor_spec", None)
    if actor is None and task is not None and task.get("new_actor"):
        actor = task  # the constructor is running
    return task, actor


def running_namespace() -> Optional[str]:
    """The namespace carried by the spec of the task or actor running in this
    worker (None: its job's anonymous namespace)."""
    task, actor = _running_specs()
    spec = actor or task
    return spec.get("namespace") if spec else None


class RuntimeContext:
    """IDs of the job, node, worker, task and actor this code runs in."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._task, self._actor = _running_specs()
        spec = self._actor or self._task
        job = spec.get("job_id") if spec else None
        self._job_id: bytes = job or client.job_id

    # ------------------------------------------------------------------ IDs
    def get_job_id(self) -> str:
        return self._job_id.hex()

    def get_node_id(self) -> str:
        return self._client.node_id.hex()

    def get_worker_id(self) -> str:
        return self._client.identity.hex()

    def get_task_id(self) -> Optional[str]:
        """The running task's ID (hex); None in a driver or outside a task."""
        return self._task["task_id"].hex() if self._task else None

    def get_task_name(self) -> Optional[str]:
        return self._task.get("name") if self._task else None

    def get_actor_id(self) -> Optional[str]:
        """The ID (hex) of the actor this code runs in; None outside an actor."""
        spec = self._actor or self._task
        actor_id = spec.get("actor_id") if spec else None
        return actor_id.hex() if actor_id else None

    def get_actor_name(self) -> Optional[str]:
        return (self._actor.get("actor_name") or None) if self._actor else None

    @property
    def job_id(self) -> str:
        return self.get_job_id()

    @property
    def node_id(self) -> str:
        return self.get_node_id()

    @property
    def worker_id(self) -> str:
        return self.get_worker_id()

    @property
    def task_id(self) -> Optional[str]:
        return self.get_task_id()

    @property
    def actor_id(self) -> Optional[str]:
        return self.get_actor_id()

    @property
    def namespace(self) -> str:
        """The namespace of this job: the one ``init`` named, or the job's own."""
        if self._client.kind == "driver":
            named = self._client.namespace
        else:
            spec = self._actor or self._task
            named = spec.get("namespace") if spec else None
        return named or anonymous_namespace(self._job_id)

    # ------------------------------------------------------------------ resources
    def get_assigned_resources(self) -> Dict[str, float]:
        """The resources the running task (or the actor hosting it) holds.

        A task asks for one CPU unless told otherwise; an actor for none.  A
        driver holds none.
        """
        spec = self._actor or self._task
        if spec is None:
            return {}
        resources = spec.get("resources")
        if resources is None:
            return {} if spec.get("new_actor") else {"CPU": 1.0}
        return {name: float(amount) for name, amount in resources.items() if amount}

    def get_accelerator_ids(self) -> Dict[str, List[str]]:
        """The accelerator IDs visible to the running task, as strings."""
        worker = state.worker
        gpu_ids = list(getattr(worker, "gpu_ids", None) or []) if worker is not None else []
        return {"GPU": [str(g) for g in gpu_ids]}

    def get_resource_ids(self) -> Dict[str, List[str]]:
        return self.get_accelerator_ids()

    # ------------------------------------------------------------------ actors
    @property
    def current_actor(self) -> Any:
        """A handle to the actor this code runs in."""
        if state.worker is None or self._actor is None or not self._actor.get("actor_id"):
            raise RuntimeError("get_runtime_context().current_actor is only available in an "
                               "actor's methods and constructor")
        from zray._private import protocol
        from zray.actor import ActorHandle, method_table
        from zray.object_ref import ObjectRef

        spec = self._actor
        instance = getattr(state.worker, "actor", None)
        if instance is not None:
            cls = type(instance)
        else:  # the constructor is running: the class is the creation task's function
            cls = getattr(state.worker, "functions", {}).get(spec.get("function_id"))
        methods = method_table(cls) if isinstance(cls, type) else {}
        # The anchor (the creation task's result) counts this handle like any other.
        anchor = ObjectRef(protocol.returns_of(spec)[0])
        return ActorHandle(spec["actor_id"], spec.get("class_name", "Actor"), methods, anchor)

    @property
    def was_current_actor_reconstructed(self) -> bool:
        """Whether this actor was restarted after its worker died."""
        return bool(self._actor and self._actor.get("restart_count", 0) > 0)

    # ------------------------------------------------------------------ the rest
    def get(self) -> Dict[str, Any]:
        """The context as a dict (Ray's older form)."""
        out: Dict[str, Any] = {"job_id": self.get_job_id(), "node_id": self.get_node_id(),
                               "namespace": self.namespace}
        if self._task is not None:
            out["task_id"] = self.get_task_id()
        if self.get_actor_id() is not None:
            out["actor_id"] = self.get_actor_id()
        return out

    @property
    def gcs_address(self) -> str:
        import zray

        ctx = getattr(zray, "_context", None)
        return ctx.get("gcs_address", "") if ctx is not None else ""

    def __repr__(self) -> str:
        return (f"RuntimeContext(job_id={self.get_job_id()}, node_id={self.get_node_id()}, "
                f"worker_id={self.get_worker_id()}, task_id={self.get_task_id()}, "
                f"actor_id={self.get_actor_id()}, namespace={self.namespace})")


def get_runtime_context() -> RuntimeContext:
    """The context of this driver, task or actor (starts zray if needed in a driver)."""
    client = state.client
    if client is None:
        from zray import _auto_init

        client = _auto_init()
    return RuntimeContext(client)


__all__ = ["RuntimeContext", "get_runtime_context"]
