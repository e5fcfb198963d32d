"""Results as they come: ``as_completed`` and ``map_unordered``.

    for value in as_completed(refs):          # values, in the order they finish
        ...
    for value in map_unordered(f, items):     # f.remote(item) for each, bounded
        ...

Both are built on ``zray.wait``: each round waits for up to ``chunk_size``
refs and yields those, so a slow one never holds back the others.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, List, Sequence

import zray
from zray.object_ref import ObjectRef


def _check_chunk(chunk_size: int) -> None:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}")


def _take_ready(pending: List[ObjectRef], chunk_size: int, yield_obj_refs: bool,
                wait_options: dict) -> Iterator[Any]:
    """Wait for up to ``chunk_size`` of ``pending`` (which loses them) and yield those."""
    ready, rest = zray.wait(pending, num_returns=min(chunk_size, len(pending)), **wait_options)
    pending[:] = rest
    if yield_obj_refs:
        yield from ready
    elif ready:
        yield from zray.get(ready)


def as_completed(refs: Sequence[ObjectRef], *, chunk_size: int = 10,
                 yield_obj_refs: bool = False, **wait_options: Any) -> Iterator[Any]:
    """Yield the values of ``refs`` (or the refs, with ``yield_obj_refs``) as their
    objects become ready, a batch of up to ``chunk_size`` at a time.

    Extra keyword arguments go to ``zray.wait`` (``timeout``, ``fetch_local``);
    a batch that times out empty ends nothing: the next round waits again.
    A failed task's error is raised when its value is reached.
    """
    _check_chunk(chunk_size)
    pending = list(refs)
    for i, ref in enumerate(pending):
        if not isinstance(ref, ObjectRef):
            raise TypeError(f"as_completed expects ObjectRefs; item {i} is a "
                            f"{type(ref).__name__}")
    while pending:
        yield from _take_ready(pending, chunk_size, yield_obj_refs, wait_options)


def map_unordered(fn: Any, items: Iterable[Any], *, backpressure_size: int = 100,
                  chunk_size: int = 10, yield_obj_refs: bool = False,
                  **wait_options: Any) -> Iterator[Any]:
    """``fn.remote(item)`` for each item, at most ``backpressure_size`` running at
    once; yield the results as they become ready (in no set order)."""
    _check_chunk(chunk_size)
    if isinstance(backpressure_size, bool) or not isinstance(backpressure_size, int) or \
            backpressure_size < 1:
        raise ValueError(f"backpressure_size must be an int >= 1, got {backpressure_size!r}")
    if not hasattr(fn, "remote"):
        raise TypeError(f"map_unordered expects a remote function, got {type(fn).__name__}")
    pending: List[ObjectRef] = []
    for item in items:
        if len(pending) >= backpressure_size:
            yield from _take_ready(pending, chunk_size, yield_obj_refs, wait_options)
        pending.append(fn.remote(item))
    while pending:
        yield from _take_ready(pending, chunk_size, yield_obj_refs, wait_options)
