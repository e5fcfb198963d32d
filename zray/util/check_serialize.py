"""``inspect_serializability``: find what inside a value keeps it from pickling.

    ok, failures = inspect_serializability(my_function, name="my_function")

It pickles the value as zray would (cloudpickle); if that fails it looks
inside, up to ``depth`` levels: the variables a function closes over and the
globals it uses, a bound method's object, the items of containers, an
object's attributes.  A member that fails to pickle and has no failing member
of its own (within the depth) is a *failure*: the thing to fix.  A report of
the search is printed (to ``print_file``, default stdout).
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Any, Dict, Iterator, Optional, Set, Tuple

import cloudpickle


class FailureTuple:
    """One member that does not pickle: the object, its name, and what holds it."""

    __slots__ = ("obj", "name", "parent")

    def __init__(self, obj: Any, name: str, parent: Any) -> None:
        self.obj = obj
        self.name = name
        self.parent = parent

    def __repr__(self) -> str:
        return f"FailureTuple({self.name} [obj={self.obj!r}, parent={self.parent!r}])"


class _Report:
    def __init__(self, print_file: Any) -> None:
        self.print_file = print_file
        self.level = 0

    def line(self, text: str) -> None:
        print("    " * self.level + text, file=self.print_file)

    @contextlib.contextmanager
    def deeper(self) -> Iterator[None]:
        self.level += 1
        try:
            yield
        finally:
            self.level -= 1


def _pickle_error(obj: Any) -> Optional[BaseException]:
    try:
        cloudpickle.dumps(obj)
    except Exception as exc:
        return exc
    return None


def _members(obj: Any) -> Iterator[Tuple[str, Any]]:
    """The named parts of ``obj`` that pickling it pickles too."""
    if inspect.ismethod(obj):
        yield "__self__", obj.__self__
        yield "__func__", obj.__func__
    elif inspect.isfunction(obj):
        try:
            found = inspect.getclosurevars(obj)
        except (TypeError, ValueError):
            return
        yield from found.nonlocals.items()
        yield from found.globals.items()
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield repr(key), value
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for i, value in enumerate(obj):
            yield f"[{i}]", value
    elif inspect.isclass(obj):
        for key, value in vars(obj).items():
            if not (key.startswith("__") and key.endswith("__")):
                yield key, value
    else:
        attributes = getattr(obj, "__dict__", None)
        if isinstance(attributes, dict):
            yield from attributes.items()
        for slot in getattr(type(obj), "__slots__", ()) or ():
            if isinstance(slot, str) and hasattr(obj, slot):
                yield slot, getattr(obj, slot)


def _inspect(obj: Any, name: str, depth: int, parent: Any, failures: Dict[int, FailureTuple],
             report: _Report, seen: Set[int]) -> bool:
    """Whether ``obj`` pickles; records the innermost members that do not."""
    error = _pickle_error(obj)
    if error is None:
        return True
    report.line(f"{name} ({type(obj).__name__}) does not pickle: "
                f"{type(error).__name__}: {error}")
    if id(obj) in seen:
        return False
    seen.add(id(obj))
    deeper = False
    if depth > 0:
        with report.deeper():
            for member_name, member in _members(obj):
                if not _inspect(member, member_name, depth - 1, obj, failures, report, seen):
                    deeper = True
    if not deeper:
        failures.setdefault(id(obj), FailureTuple(obj, name, parent))
    return False


def inspect_serializability(base_obj: Any, name: Optional[str] = None, depth: int = 3,
                            print_file: Any = None) -> Tuple[bool, Set[FailureTuple]]:
    """``(True, set())`` if ``base_obj`` pickles; else ``(False, failures)``, the
    members found (within ``depth`` levels) that keep it from pickling."""
    if name is None:
        name = getattr(base_obj, "__qualname__", None) or type(base_obj).__name__
    report = _Report(print_file)
    failures: Dict[int, FailureTuple] = {}
    ok = _inspect(base_obj, name, depth, None, failures, report, set())
    if ok:
        report.line(f"{name} pickles.")
        return True, set()
    report.line(f"{len(failures)} member(s) of {name} do not pickle: "
                + ", ".join(f.name for f in failures.values()))
    return False, set(failures.values())


__all__ = ["inspect_serializability", "FailureTuple"]
