"""Errors zray raises to users, with Ray's names and hierarchy.

``RayError`` is the root of every error zray raises itself (``ZrayError`` is
the same class, under the name zray used first).  ``RayTaskError`` is what
``get`` raises when a task raised: it is also an instance of the task's own
exception type, so ``except ValueError`` works around a remote ``ValueError``
as it would around a local one, and ``.cause`` is the original exception.

::

    RayError (= ZrayError)
    ├── RayTaskError (= TaskError)        a task raised; .cause
    ├── RayActorError
    │   ├── ActorDiedError
    │   └── ActorUnavailableError
    ├── TaskCancelledError, WorkerCrashedError, NodeDiedError, RaySystemError
    ├── GetTimeoutError (also TimeoutError)
    ├── ObjectLostError
    │   ├── ObjectFreedError, OwnerDiedError, ObjectFetchTimedOutError
    ├── ObjectStoreFullError (also MemoryError), OutOfMemoryError, OutOfDiskError
    ├── PendingCallsLimitExceeded, RuntimeEnvSetupError, AsyncioActorExit
    ├── TaskUnschedulableError, ActorUnschedulableError
    ├── UnserializableException           the cause of a task error that would not pickle
    └── SerializationError (also TypeError)

Every class but ``RayTaskError`` takes one message, so the node agent can
pickle them with plain pickle and :func:`from_error` can build them from an
ERROR reply's type name and message.
"""

from __future__ import annotations

from typing import Optional


class RayError(Exception):
    """Base class of every error zray raises itself."""


#: The name zray used first; the same class.
ZrayError = RayError


class RayTaskError(RayError):
    """A task raised; carries the remote traceback, the task's name and ``cause``."""

    def __init__(self, task_name: str = "", traceback_str: str = "",
                 cause: Optional[BaseException] = None, pid: int = 0) -> None:
        self.task_name = task_name
        self.traceback_str = traceback_str
        self.cause = cause
        self.pid = pid
        # Not super(): in a dual class the next __init__ is the cause type's,
        # which may want other arguments (or set attributes of the same names).
        Exception.__init__(self, self._message())

    @property
    def function_name(self) -> str:
        return self.task_name

    def _message(self) -> str:
        where = f"task {self.task_name}" + (f" (pid={self.pid})" if self.pid else "")
        return f"{where} failed:\n{self.traceback_str.rstrip()}"

    def __str__(self) -> str:
        return self._message()

    def __reduce__(self):
        return (_rebuild_task_error, (self.task_name, self.traceback_str, self.cause, self.pid))

    def as_instanceof_cause(self) -> "RayTaskError":
        """This error as an instance of both RayTaskError and the cause's type.

        A cause type that cannot be subclassed (or built without arguments)
        gives back a plain RayTaskError; ``.cause`` still holds the original.
        """
        cause_type = type(self.cause) if self.cause is not None else None
        if cause_type is None or isinstance(self, cause_type):
            return self
        try:
            dual = _dual_class(cause_type)
            err = dual.__new__(dual)
        except TypeError:
            return self
        RayTaskError.__init__(err, self.task_name, self.traceback_str, self.cause, self.pid)
        err.args = (self._message(),)
        return err


#: The name zray used first; the same class.
TaskError = RayTaskError

_dual_classes: dict = {}


def _dual_class(cause_type: type) -> type:
    cls = _dual_classes.get(cause_type)
    if cls is None:
        cls = type(f"RayTaskError({cause_type.__name__})", (RayTaskError, cause_type), {
            "__init__": RayTaskError.__init__,
            "__str__": RayTaskError.__str__,
            "__reduce__": RayTaskError.__reduce__,
            "__module__": __name__,
        })
        _dual_classes[cause_type] = cls
    return cls


def _rebuild_task_error(task_name, traceback_str, cause, pid):
    return RayTaskError(task_name, traceback_str, cause, pid).as_instanceof_cause()


class UnserializableException(RayError):
    """Stands for a task's exception that could not be pickled: its text and traceback."""

    def __init__(self, message: str = "", traceback_str: str = "") -> None:
        self.message = message
        self.traceback_str = traceback_str
        super().__init__(message, traceback_str)

    def __str__(self) -> str:
        return (f"an exception that could not be pickled was raised: {self.message}\n"
                f"{self.traceback_str.rstrip()}")


class RayActorError(RayError):
    """The actor could not run the call: it died, or cannot be reached for now."""


class ActorDiedError(RayActorError):
    """The actor is dead: killed, crashed without restarts left, or never started."""


class ActorUnavailableError(RayActorError):
    """The actor cannot be reached for now (restarting, say); it may come back."""


class AsyncioActorExit(RayError):
    """An async actor is leaving on purpose (``exit_actor``)."""


class TaskCancelledError(RayError):
    """The task was cancelled with ``zray.cancel`` before it finished."""


class GetTimeoutError(RayError, TimeoutError):
    """``get`` ran out of time before every object was ready."""


class WorkerCrashedError(RayError):
    """The worker process running the task died, and no retries were left."""


class NodeDiedError(RayError):
    """The node agent the caller depended on is gone."""


class RaySystemError(RayError):
    """zray itself failed (not the user's code)."""


class ObjectLostError(RayError):
    """The object is not known to the cluster (freed, lost with its node, or never created)."""


class ObjectFreedError(ObjectLostError):
    """The object was freed on purpose before it was read."""


class OwnerDiedError(ObjectLostError):
    """The process or node that owned the object is gone."""


class ObjectFetchTimedOutError(ObjectLostError):
    """The object's bytes could not be brought to this node in time."""


class ObjectStoreFullError(RayError, MemoryError):
    """The node's object store has no room for the object, even after spilling."""


class OutOfMemoryError(RayError):
    """The node is running out of memory; a task or actor was stopped to free some."""


class OutOfDiskError(RayError):
    """The node's disk is full (spilling failed)."""


class PendingCallsLimitExceeded(RayError):
    """An actor has more calls queued than its ``max_pending_calls``."""


class RuntimeEnvSetupError(RayError):
    """A runtime environment could not be set up (or is not supported)."""


class TaskUnschedulableError(RayError):
    """No node can ever run the task (its resources or strategy cannot be met)."""


class ActorUnschedulableError(RayError):
    """No node can ever host the actor (its resources or strategy cannot be met)."""


class SerializationError(RayError, TypeError):
    """A value could not be pickled or unpickled."""


__all__ = [
    "RayError", "RayTaskError", "RayActorError", "ActorDiedError", "ActorUnavailableError",
    "AsyncioActorExit", "TaskCancelledError", "GetTimeoutError", "WorkerCrashedError",
    "NodeDiedError", "RaySystemError", "ObjectLostError", "ObjectFreedError", "OwnerDiedError",
    "ObjectFetchTimedOutError", "ObjectStoreFullError", "OutOfMemoryError", "OutOfDiskError",
    "PendingCallsLimitExceeded", "RuntimeEnvSetupError", "TaskUnschedulableError",
    "ActorUnschedulableError", "UnserializableException", "SerializationError",
    "ZrayError", "TaskError",
]


_BY_NAME = {name: globals()[name] for name in __all__}
_BY_NAME.update(ValueError=ValueError, TypeError=TypeError, KeyError=KeyError,
                TimeoutError=TimeoutError)


def from_error(error_type: str, message: str) -> Exception:
    """The exception an ERROR reply (or a failed forwarded task) stands for.

    The one mapping both ends use: the sender names the type with
    ``protocol.error_body``; a name this module does not know becomes a
    ``RayError`` with the same message.
    """
    cls = _BY_NAME.get(error_type, RayError)
    if cls is RayTaskError or cls is UnserializableException:
        return RayError(message)  # their fields are not in a message: keep the text
    try:
        return cls(message)
    except Exception:  # a type whose constructor wants more than a message
        return RayError(message)
