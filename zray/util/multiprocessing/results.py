"""What ``Pool``'s asynchronous calls hand back: ``AsyncResult`` (``apply_async``),
``MapResult`` (``map_async``, ``starmap_async``) and the iterators of ``imap``
and ``imap_unordered``, with the stdlib's interface.

The pool's dispatcher thread reports each finished chunk with
``chunk_done(index, ok, value)`` (``value``: the chunk's list of results, or
the exception); a lazily read input says how many chunks it had with
``input_ended(count)``; ``abort(exc)`` ends a job whose pool was terminated.
Callers wait on a condition or an event; nothing here knows about zray.

Owns: results, their waiting and their callbacks.  Must not: submit work.
"""

from __future__ import annotations

import collections
import logging
import multiprocessing
import threading
import time
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

logger = logging.getLogger("zray.util.multiprocessing")


def _call_back(callback: Optional[Callable[[Any], Any]], value: Any) -> None:
    if callback is None:
        return
    try:
        callback(value)
    except Exception:  # like the stdlib: a failing callback must not stop the pool
        logger.exception("a Pool callback raised")


class AsyncResult:
    """The result of ``apply_async``: ``get``, ``wait``, ``ready``, ``successful``."""

    def __init__(self, callback: Optional[Callable[[Any], Any]] = None,
                 error_callback: Optional[Callable[[BaseException], Any]] = None) -> None:
        self._event = threading.Event()
        self._success = False
        self._value: Any = None
        self._callback = callback
        self._error_callback = error_callback

    def ready(self) -> bool:
        return self._event.is_set()

    def successful(self) -> bool:
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return self._success

    def wait(self, timeout: Optional[float] = None) -> None:
        self._event.wait(timeout)

    def get(self, timeout: Optional[float] = None) -> Any:
        """The value, or the call's exception raised; ``multiprocessing.TimeoutError``
        if it is not ready within ``timeout`` seconds."""
        self.wait(timeout)
        if not self.ready():
            raise multiprocessing.TimeoutError
        if self._success:
            return self._value
        raise self._value

    # ------------------------------------------------------------------ dispatcher side
    def finished(self) -> bool:
        return self.ready()

    def chunk_done(self, index: int, ok: bool, value: Any) -> None:
        self._finish(ok, value[0] if ok else value)

    def input_ended(self, count: int) -> None:
        """The number of chunks is known in advance here."""

    def abort(self, error: BaseException) -> None:
        if not self.ready():
            self._finish(False, error)

    def _finish(self, ok: bool, value: Any) -> None:
        self._success, self._value = ok, value
        _call_back(self._callback if ok else self._error_callback, value)
        self._event.set()


ApplyResult = AsyncResult


class MapResult(AsyncResult):
    """The result of ``map_async``: the list of all results in input order, or
    the first exception once every chunk has finished."""

    def __init__(self, chunks: int, callback: Optional[Callable[[Any], Any]] = None,
                 error_callback: Optional[Callable[[BaseException], Any]] = None) -> None:
        super().__init__(callback, error_callback)
        self._parts: List[Optional[list]] = [None] * chunks
        self._left = chunks
        self._error: Optional[BaseException] = None
        self._lock = threading.Lock()
        if chunks == 0:
            self._finish(True, [])

    def chunk_done(self, index: int, ok: bool, value: Any) -> None:
        with self._lock:
            if self.ready():
                return
            self._left -= 1
            if ok:
                self._parts[index] = value
            elif self._error is None:
                self._error = value
            if self._left > 0:
                return
        if self._error is not None:
            self._finish(False, self._error)
        else:
            self._finish(True, [item for part in self._parts for item in part])


class IMapIterator:
    """The iterator of ``imap``: results in input order, each as soon as it and
    all before it are in.  A failed chunk raises its exception once, in its
    place; iteration goes on after it."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._items: Deque[Tuple[bool, Any]] = collections.deque()  # ready to hand out
        self._chunks: Dict[int, Tuple[bool, Any]] = {}  # arrived ahead of their turn
        self._taken = 0            # chunks moved to _items
        self._count: Optional[int] = None  # chunks in all, once the input has ended

    def __iter__(self) -> "IMapIterator":
        return self

    def next(self, timeout: Optional[float] = None) -> Any:
        """The next result; ``multiprocessing.TimeoutError`` if none comes within
        ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._items:
                if self._count is not None and self._taken >= self._count:
                    raise StopIteration
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise multiprocessing.TimeoutError
                self._cond.wait(left)
            ok, value = self._items.popleft()
        if ok:
            return value
        raise value

    __next__ = next

    # ------------------------------------------------------------------ dispatcher side
    def finished(self) -> bool:
        with self._cond:
            return self._count is not None and self._taken >= self._count

    def chunk_done(self, index: int, ok: bool, value: Any) -> None:
        with self._cond:
            self._chunks[index] = (ok, value)
            self._take_in_order()
            self._cond.notify_all()

    def _take_in_order(self) -> None:
        while self._taken in self._chunks:
            self._hand_out(*self._chunks.pop(self._taken))

    def _hand_out(self, ok: bool, value: Any) -> None:
        self._taken += 1
        if ok:
            self._items.extend((True, item) for item in value)
        else:
            self._items.append((False, value))

    def input_ended(self, count: int) -> None:
        with self._cond:
            self._count = count
            self._cond.notify_all()

    def abort(self, error: BaseException) -> None:
        with self._cond:
            if self._count is not None and self._taken >= self._count:
                return
            self._chunks.clear()
            self._items.append((False, error))
            self._count = self._taken = self._taken + 1
            self._cond.notify_all()


class IMapUnorderedIterator(IMapIterator):
    """The iterator of ``imap_unordered``: results in the order chunks finish."""

    def _take_in_order(self) -> None:
        for index in list(self._chunks):
            self._hand_out(*self._chunks.pop(index))


__all__ = ["AsyncResult", "ApplyResult", "MapResult", "IMapIterator", "IMapUnorderedIterator"]
