"""Custom serializers for classes that do not pickle (or should pickle differently).

    from zray.util import register_serializer

    register_serializer(Connection, serializer=lambda c: c.url,
                        deserializer=Connection.open)

A registration holds for this process: values it puts, arguments it passes
and results it returns.  The deserializer travels with each value (pickled
by cloudpickle), so a reader needs no registration of its own; it must
itself be picklable.  Exactly ``cls`` is matched, not its subclasses.
"""

from __future__ import annotations

from typing import Any, Callable

from zray._private import serialization


def register_serializer(cls: type, *, serializer: Callable[[Any], Any],
                        deserializer: Callable[[Any], Any]) -> None:
    """Pickle instances of ``cls`` as ``deserializer(serializer(obj))``."""
    if not isinstance(cls, type):
        raise TypeError(f"register_serializer: cls must be a class, got {cls!r}")
    if not callable(serializer) or not callable(deserializer):
        raise TypeError("register_serializer: serializer and deserializer must be callable")
    serialization.register_reducer(cls, serializer, deserializer)


def deregister_serializer(cls: type) -> None:
    """Forget the serializer of ``cls`` (nothing happens if it has none)."""
    serialization.deregister_reducer(cls)


__all__ = ["register_serializer", "deregister_serializer"]
