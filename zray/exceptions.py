"""Errors zray raises to users.

``TaskError`` is what ``get`` raises when a task raised: it is also an
instance of the task's own exception type, so ``except ValueError`` works
around a remote ``ValueError`` as it would around a local one.
"""

from __future__ import annotations

from typing import Optional


class ZrayError(Exception):
    """Base class of every error zray raises itself."""


class TaskError(ZrayError):
    """A task raised; carries the remote traceback and the task's name."""

    def __init__(self, task_name: str = "", traceback_str: str = "",
                 cause: Optional[BaseException] = None, pid: int = 0) -> None:
        self.task_name = task_name
        self.traceback_str = traceback_str
        self.cause = cause
        self.pid = pid
        super().__init__(self._message())

    def _message(self) -> str:
        where = f"task {self.task_name}" + (f" (pid={self.pid})" if self.pid else "")
        return f"{where} failed:\n{self.traceback_str.rstrip()}"

    def __str__(self) -> str:
        return self._message()

    def __reduce__(self):
        return (_rebuild_task_error, (self.task_name, self.traceback_str, self.cause, self.pid))

    def as_instanceof_cause(self) -> "TaskError":
        """This error as an instance of both TaskError and the cause's type."""
        cause_type = type(self.cause) if self.cause is not None else None
        if cause_type is None or isinstance(self, cause_type):
            return self
        try:
            dual = _dual_class(cause_type)
            err = dual.__new__(dual)
        except TypeError:  # a cause type that can't be subclassed or built bare
            return self
        TaskError.__init__(err, self.task_name, self.traceback_str, self.cause, self.pid)
        err.args = (self._message(),)
        return err


_dual_classes: dict = {}


def _dual_class(cause_type: type) -> type:
    cls = _dual_classes.get(cause_type)
    if cls is None:
        cls = type(f"TaskError({cause_type.__name__})", (TaskError, cause_type), {
            "__init__": TaskError.__init__,
            "__str__": TaskError.__str__,
            "__reduce__": TaskError.__reduce__,
            "__module__": __name__,
        })
        _dual_classes[cause_type] = cls
    return cls


def _rebuild_task_error(task_name, traceback_str, cause, pid):
    return TaskError(task_name, traceback_str, cause, pid).as_instanceof_cause()


class GetTimeoutError(ZrayError, TimeoutError):
    """``get`` ran out of time before every object was ready."""


class TaskCancelledError(ZrayError):
    """The task was cancelled with ``zray.cancel`` before it finished."""


class WorkerCrashedError(ZrayError):
    """The worker process running the task died, and no retries were left."""


class ObjectLostError(ZrayError):
    """The object is not known to the cluster (freed, or never created)."""


class ObjectStoreFullError(ZrayError, MemoryError):
    """The node's object store has no room for the object, even after spilling."""


class NodeDiedError(ZrayError):
    """The node agent the caller depended on is gone."""


class SerializationError(ZrayError, TypeError):
    """A value could not be pickled or unpickled."""


class ActorDiedError(ZrayError):
    """The actor is dead: killed, crashed without restarts left, or never started."""


__all__ = [
    "ZrayError", "TaskError", "GetTimeoutError", "TaskCancelledError",
    "WorkerCrashedError", "ObjectLostError", "ObjectStoreFullError",
    "NodeDiedError", "SerializationError", "ActorDiedError",
]


_BY_NAME = {name: globals()[name] for name in __all__}
_BY_NAME.update(ValueError=ValueError, TypeError=TypeError, KeyError=KeyError,
                TimeoutError=TimeoutError)


def from_error(error_type: str, message: str) -> Exception:
    """The exception an ERROR reply (or a failed forwarded task) stands for.

    The one mapping both ends use: the sender names the type with
    ``protocol.error_body``; a name this module does not know becomes a
    ``ZrayError`` with the same message.
    """
    cls = _BY_NAME.get(error_type, ZrayError)
    try:
        return cls(message)
    except Exception:  # a type whose constructor wants more than a message
        return ZrayError(message)
