"""A task's arguments on the wire: the submitter's encoding, the worker's decoding.

Top-level ref arguments become *deps*: the agent resolves them before the
task runs and sends their descriptors with the EXECUTE, in order; inside the
pickled arguments each is replaced by an :class:`ArgDep` naming its index.
Small pickled arguments travel in the spec (``args``/``args_layout``); large
ones are stored as an object of their own (``args_object``, also the last
dep) and read zero-copy like any other object.  Refs pickled deeper inside
the arguments are listed in ``contained`` so the agent holds them while the
task runs.

Pure functions: storing the large-argument object is the caller's (given
as ``store``); this module sends nothing.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Sequence, Tuple

from zray import exceptions
from zray._private import protocol, serialization
from zray.object_ref import ObjectRef


class ArgDep:
    """Stands in for a top-level ref argument inside the pickled arguments."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index

    def __reduce__(self):
        return (ArgDep, (self.index,))


def encode_args(args: Sequence[Any], kwargs: Dict[str, Any], name: str,
                store: Callable[[serialization.Serialized], ObjectRef]
                ) -> Tuple[dict, List[ObjectRef]]:
    """The ``deps``/``contained``/``args``/``args_layout``/``args_object`` part
    of a task spec (what ``protocol.task_spec`` takes as ``args``).

    Also returns refs the caller must hold until the spec is queued: the
    outbox is ordered, so once the SUBMIT is queued no later DECREF can
    overtake it.
    """
    if not args and not kwargs:
        return {}, []
    deps: List[bytes] = []
    keep: List[ObjectRef] = []

    def swap(value: Any) -> Any:
        if isinstance(value, ObjectRef):
            deps.append(value._id)
            keep.append(value)
            return ArgDep(len(deps) - 1)
        return value

    args = [swap(a) for a in args]
    kwargs = {k: swap(v) for k, v in kwargs.items()}
    ser = serialization.serialize((args, kwargs), f"an argument of {name}")
    part: dict = {"deps": deps} if deps else {}
    if ser.contained:
        part["contained"] = ser.contained
    if ser.size <= protocol.INLINE_THRESHOLD:
        part["args"] = ser.to_bytes()
        part["args_layout"] = ser.layout
    else:
        ref = store(ser)
        part["args_object"] = ref._id
        part.setdefault("deps", []).append(ref._id)
        keep.append(ref)
    return part, keep


def decode_args(spec: dict, values: List[Any]) -> Tuple[Sequence[Any], Dict[str, Any]]:
    """A task's ``(args, kwargs)``, given the values of its deps in order."""
    if "args_object" in spec:
        args, kwargs = values[-1]
    elif "args" in spec:
        try:
            args, kwargs = serialization.deserialize(memoryview(spec["args"]),
                                                     spec["args_layout"])
        except Exception as exc:
            raise exceptions.SerializationError(
                f"could not unpickle the arguments of task {spec.get('name')}: "
                f"{type(exc).__name__}: {exc}") from exc
    else:
        return (), {}
    if values:
        args = [values[a.index] if type(a) is ArgDep else a for a in args]
        kwargs = {k: values[v.index] if type(v) is ArgDep else v for k, v in kwargs.items()}
    return args, kwargs
