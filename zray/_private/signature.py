"""A call's arguments checked against the callee's signature, in the caller.

``f.remote(1, 2, 3)`` on a function of two parameters fails where it is
written, with Python's own TypeError, instead of in a worker later.  A
:class:`Binder` is made once per function, constructor or method; the
common call (positional arguments only, a signature without ``*args``,
``**kwargs`` or keyword-only parameters) is checked by counting, and
anything else goes through ``inspect.Signature.bind``.

An actor method's parameters also travel inside actor handles (pickled, or
in a named actor's entry, which is msgpack): :func:`to_wire` and
:func:`from_wire` give them a plain form, ``[[name, kind, has_default], ...]``.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, List, Optional, Sequence

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
_KIND = type(inspect.Parameter.POSITIONAL_ONLY)
_DEFAULT = object()  # stands in for a default value known only to the callee


class Binder:
    __slots__ = ("signature", "name", "simple", "min_args", "max_args", "names", "index")

    def __init__(self, signature: inspect.Signature, name: str) -> None:
        self.signature = signature
        self.name = name
        params = list(signature.parameters.values())
        self.simple = all(p.kind in _POSITIONAL for p in params)
        self.min_args = sum(1 for p in params if p.default is inspect.Parameter.empty)
        self.max_args = len(params)
        self.names = [p.name for p in params]
        self.index = {p.name: i for i, p in enumerate(params)
                      if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD}

    def check(self, args: Sequence[Any], kwargs: Dict[str, Any]) -> None:
        """Raise TypeError, as Python would, when ``args``/``kwargs`` do not fit."""
        if self.simple and self._fits(len(args), kwargs):
            return
        try:
            self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{self.name}() {exc}") from None

    def _fits(self, count: int, kwargs: Dict[str, Any]) -> bool:
        """The quick check of a signature with plain parameters only (required
        ones come first there); False sends the call to ``Signature.bind``."""
        if not kwargs:
            return self.min_args <= count <= self.max_args
        index = self.index
        for key in kwargs:
            position = index.get(key)
            if position is None or position < count:
                return False
        names = self.names
        return all(names[i] in kwargs for i in range(count, self.min_args))


def of_callable(fn: Callable, name: str, drop_first: bool = False) -> Optional[Binder]:
    """The binder of ``fn`` (without its first parameter: ``self``), or None
    when its signature cannot be read (some builtins)."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    if drop_first:
        params = list(signature.parameters.values())
        if params and params[0].kind in _POSITIONAL:
            signature = signature.replace(parameters=params[1:])
    return Binder(signature, name)


def method_signature(cls: type, name: str) -> Optional[inspect.Signature]:
    """The signature a call of ``cls``'s method ``name`` on an instance binds to."""
    member = inspect.getattr_static(cls, name, None)
    bound_already = isinstance(member, (staticmethod, classmethod))
    binder = of_callable(getattr(cls, name), name, drop_first=not bound_already)
    return binder.signature if binder is not None else None


def to_wire(signature: Optional[inspect.Signature]) -> Optional[List[list]]:
    if signature is None:
        return None
    return [[p.name, int(p.kind), p.default is not inspect.Parameter.empty]
            for p in signature.parameters.values()]


def from_wire(params: Optional[List[list]], name: str) -> Optional[Binder]:
    if params is None:
        return None
    try:
        signature = inspect.Signature([
            inspect.Parameter(p_name, _KIND(kind),
                              default=_DEFAULT if has_default else inspect.Parameter.empty)
            for p_name, kind, has_default in params])
    except (TypeError, ValueError):
        return None
    return Binder(signature, name)
