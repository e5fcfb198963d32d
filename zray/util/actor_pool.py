"""ActorPool: spread work over a fixed set of actors.

    pool = ActorPool([Worker.remote() for _ in range(4)])
    for out in pool.map(lambda actor, v: actor.work.remote(v), range(100)):
        ...

``fn(actor, value)`` must call a method of ``actor`` and return its ObjectRef
(or the list of refs of a ``num_returns > 1`` method).  Each actor runs one
of the pool's calls at a time; values submitted while every actor is busy
wait in the pool until one is free.

The pool is driven by its caller (there is no background thread): actors are
handed back, and waiting values started, when the caller collects results
with ``get_next``/``get_next_unordered`` or checks ``has_free``/``pop_idle``.
It is not thread-safe; use it from one thread.
"""

from __future__ import annotations

import collections
import time
from typing import Any, Callable, Deque, Dict, Iterable, Iterator, List, Optional, Tuple

import zray
from zray.actor import ActorHandle
from zray.exceptions import GetTimeoutError
from zray.object_ref import ObjectRef

Key = Any  # an ObjectRef, or a tuple of them for a multi-return method


def _key_of(result: Any) -> Key:
    if isinstance(result, ObjectRef):
        return result
    if isinstance(result, (list, tuple)) and result and all(
            isinstance(ref, ObjectRef) for ref in result):
        return tuple(result)
    raise TypeError("ActorPool: fn(actor, value) must return the ObjectRef of an actor "
                    "method call (or a non-empty list of ObjectRefs), got "
                    f"{type(result).__name__}")


def _refs_of(key: Key) -> Tuple[ObjectRef, ...]:
    return (key,) if isinstance(key, ObjectRef) else key


class ActorPool:
    """Run ``fn(actor, value)`` calls over a pool of actors, one call per actor at a time."""

    def __init__(self, actors: Iterable[ActorHandle]) -> None:
        actors = list(actors)
        for actor in actors:
            if not isinstance(actor, ActorHandle):
                raise TypeError("ActorPool expects actor handles, got "
                                f"{type(actor).__name__}")
        if len(set(actors)) != len(actors):
            raise ValueError("ActorPool got the same actor more than once")
        self._idle: List[ActorHandle] = actors
        # In-flight calls whose results the caller will collect: key -> (index, actor).
        self._busy: Dict[Key, Tuple[int, ActorHandle]] = {}
        self._by_index: Dict[int, Any] = {}  # submission index -> what fn returned
        # In-flight calls whose results were discarded (by map/map_unordered or a
        # get_next(ignore_if_timedout=True)); their actors return when they finish.
        self._orphans: Dict[Key, ActorHandle] = {}
        self._pending: Deque[Tuple[Callable[[ActorHandle, Any], Any], Any]] = \
            collections.deque()
        self._next_task_index = 0
        self._next_return_index = 0

    # ------------------------------------------------------------------ mapping
    def map(self, fn: Callable[[ActorHandle, Any], Any], values: Iterable[Any]) -> Iterator[Any]:
        """Apply ``fn`` to every value; return a generator of the results in order.

        Every value is submitted now; results of earlier ``submit`` calls that were
        not collected yet are discarded (their actors rejoin the pool when done).
        """
        self._discard_uncollected()
        for value in values:
            self.submit(fn, value)

        def results() -> Iterator[Any]:
            while self.has_next():
                yield self.get_next()
        return results()

    def map_unordered(self, fn: Callable[[ActorHandle, Any], Any],
                      values: Iterable[Any]) -> Iterator[Any]:
        """Like ``map``, but results come as soon as they are ready, in any order."""
        self._discard_uncollected()
        for value in values:
            self.submit(fn, value)

        def results() -> Iterator[Any]:
            while self.has_next():
                yield self.get_next_unordered()
        return results()

    # ------------------------------------------------------------------ submitting
    def submit(self, fn: Callable[[ActorHandle, Any], Any], value: Any) -> None:
        """Start ``fn(actor, value)`` on an idle actor, or queue it until one is free."""
        if not callable(fn):
            raise TypeError(f"ActorPool.submit: fn must be callable, got {type(fn).__name__}")
        self._reap_orphans()
        self._pending.append((fn, value))
        self._start_pending()

    def has_next(self) -> bool:
        """Whether any submitted result is still to be collected."""
        return bool(self._busy) or bool(self._pending)

    def get_next(self, timeout: Optional[float] = None,
                 ignore_if_timedout: bool = False) -> Any:
        """The next result in submission order.

        Raises StopIteration when nothing is pending, GetTimeoutError when the
        result is not ready within ``timeout`` seconds (with
        ``ignore_if_timedout=True`` that result is then dropped for good), and
        the call's own error if it failed.
        """
        if not self.has_next():
            raise StopIteration("No more results to get")
        deadline = self._deadline(timeout)
        self._reap_orphans()
        index = self._next_return_index
        while index not in self._by_index:
            if index < self._next_task_index or self._busy:
                raise ValueError("ActorPool.get_next() cannot be used after "
                                 "get_next_unordered() while results are pending")
            # The next result is a queued submit: every actor still runs a call
            # whose result was discarded.  Wait for one to come back.
            self._wait_for_orphan(deadline, timeout)
        result = self._by_index[index]
        key = _key_of(result)
        if self._wait_any([key], self._left(deadline)) is None:
            if ignore_if_timedout:
                del self._by_index[index]
                self._next_return_index += 1
                self._orphans[key] = self._busy.pop(key)[1]
                raise GetTimeoutError(f"ActorPool.get_next: result {index} was not ready "
                                      f"within {timeout}s; it has been dropped")
            raise GetTimeoutError(f"ActorPool.get_next: timed out after {timeout}s")
        del self._by_index[index]
        self._next_return_index += 1
        self._return_actor(self._busy.pop(key)[1])
        return self._fetch(result)

    def get_next_unordered(self, timeout: Optional[float] = None) -> Any:
        """Whichever pending result is ready first (any order).

        Raises StopIteration when nothing is pending and GetTimeoutError when no
        result is ready within ``timeout`` seconds.
        """
        if not self.has_next():
            raise StopIteration("No more results to get")
        deadline = self._deadline(timeout)
        self._reap_orphans()
        while True:
            keys = list(self._busy) + list(self._orphans)
            if not keys:
                raise ValueError("ActorPool has values waiting but no actors to run them; "
                                 "push() an actor")
            key = self._wait_any(keys, self._left(deadline))
            if key is None:
                raise GetTimeoutError(f"ActorPool.get_next_unordered: timed out after "
                                      f"{timeout}s")
            if key in self._orphans:
                self._return_actor(self._orphans.pop(key))
                continue
            index, actor = self._busy.pop(key)
            result = self._by_index.pop(index)
            self._next_return_index = max(self._next_return_index, index + 1)
            self._return_actor(actor)
            return self._fetch(result)

    # ------------------------------------------------------------------ actors
    def has_free(self) -> bool:
        """Whether an actor is idle (and no submitted value is waiting for one)."""
        self._reap_orphans()
        return bool(self._idle) and not self._pending

    def pop_idle(self) -> Optional[ActorHandle]:
        """Take an idle actor out of the pool; None if none is free."""
        if self.has_free():
            return self._idle.pop()
        return None

    def push(self, actor: ActorHandle) -> None:
        """Add an actor to the pool (it starts a waiting value at once, if any)."""
        if not isinstance(actor, ActorHandle):
            raise TypeError(f"ActorPool.push expects an actor handle, got "
                            f"{type(actor).__name__}")
        if (actor in self._idle or any(a == actor for _, a in self._busy.values())
                or actor in self._orphans.values()):
            raise ValueError("Actor already belongs to current ActorPool")
        self._return_actor(actor)

    # ------------------------------------------------------------------ internals
    def _start(self, fn: Callable[[ActorHandle, Any], Any], value: Any) -> None:
        actor = self._idle.pop()
        try:
            result = fn(actor, value)
            key = _key_of(result)
            if key in self._busy or key in self._orphans:
                raise ValueError("ActorPool: fn returned an ObjectRef the pool already "
                                 "tracks; it must return the ref of a new method call")
        except BaseException:
            self._idle.append(actor)
            raise
        index = self._next_task_index
        self._next_task_index += 1
        self._busy[key] = (index, actor)
        self._by_index[index] = result

    def _return_actor(self, actor: ActorHandle) -> None:
        self._idle.append(actor)
        self._start_pending()

    def _start_pending(self) -> None:
        # If fn raises, the error reaches the caller; the actor stays idle and
        # the values after it keep waiting for the next call to start them.
        while self._idle and self._pending:
            fn, value = self._pending.popleft()
            self._start(fn, value)

    def _discard_uncollected(self) -> None:
        for key, (_, actor) in self._busy.items():
            self._orphans[key] = actor
        self._busy.clear()
        self._by_index.clear()
        self._pending.clear()
        self._next_return_index = self._next_task_index

    def _reap_orphans(self) -> None:
        if self._orphans:
            for key in self._ready_keys(list(self._orphans)):
                self._return_actor(self._orphans.pop(key))

    def _wait_for_orphan(self, deadline: Optional[float], timeout: Optional[float]) -> None:
        if not self._orphans:
            raise ValueError("ActorPool has values waiting but no actors to run them; "
                             "push() an actor")
        key = self._wait_any(list(self._orphans), self._left(deadline))
        if key is None:
            raise GetTimeoutError(f"ActorPool: timed out after {timeout}s")
        self._return_actor(self._orphans.pop(key))

    @staticmethod
    def _poll(keys: List[Key]) -> Tuple[List[Key], List[ObjectRef]]:
        """The keys whose refs are all ready now (in the given order), and the refs
        not ready yet."""
        flat = list(dict.fromkeys(ref for key in keys for ref in _refs_of(key)))
        ready, not_ready = zray.wait(flat, num_returns=len(flat), timeout=0)
        done = set(ready)
        return [key for key in keys if all(ref in done for ref in _refs_of(key))], not_ready

    def _ready_keys(self, keys: List[Key]) -> List[Key]:
        return self._poll(keys)[0]

    def _wait_any(self, keys: List[Key], timeout: Optional[float]) -> Optional[Key]:
        """The first of ``keys`` whose refs are all ready; None after ``timeout``."""
        deadline = self._deadline(timeout)
        while True:
            ready, not_ready = self._poll(keys)
            if ready:
                return ready[0]
            left = self._left(deadline)
            if left is not None and left <= 0:
                return None
            zray.wait(not_ready, num_returns=1, timeout=left)

    @staticmethod
    def _fetch(result: Any) -> Any:
        if isinstance(result, ObjectRef):
            return zray.get(result)
        return zray.get(list(result))

    @staticmethod
    def _deadline(timeout: Optional[float]) -> Optional[float]:
        if timeout is None:
            return None
        if timeout < 0:
            raise ValueError(f"timeout must be >= 0, got {timeout}")
        return time.monotonic() + timeout

    @staticmethod
    def _left(deadline: Optional[float]) -> Optional[float]:
        return None if deadline is None else max(0.0, deadline - time.monotonic())


__all__ = ["ActorPool"]
