"""A first-in, first-out queue shared by tasks, actors and the driver.

    from zray.util.queue import Queue, Empty

    q = Queue(maxsize=100)

    @zray.remote
    def producer(q):
        for i in range(10):
            q.put(i)

    producer.remote(q)
    [q.get(timeout=5) for _ in range(10)]

The items live in an async actor, so a blocked ``get`` or ``put`` waits there
without holding up other callers.  A Queue object pickles as a handle on that
actor: pass it to tasks and actors freely.
"""

from __future__ import annotations

import asyncio
import collections
import queue as _stdlib_queue
from typing import Any, Dict, Iterable, List, Optional, Tuple

import zray
from zray.actor import ActorHandle


class Empty(_stdlib_queue.Empty):
    """``get`` found no item (non-blocking, or not within its timeout)."""


class Full(_stdlib_queue.Full):
    """``put`` found no room (non-blocking, or not within its timeout)."""


class _QueueActor:
    """The actor holding the items.  Methods report failure in their return
    value (never by raising), so the caller can raise a clean Empty/Full."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.items: collections.deque = collections.deque()
        self._changed: Optional[asyncio.Condition] = None
        self._active = 0

    def _cond(self) -> asyncio.Condition:
        if self._changed is None:  # made on the actor's event loop
            self._changed = asyncio.Condition()
        return self._changed

    def _room(self, count: int = 1) -> bool:
        return self.maxsize <= 0 or len(self.items) + count <= self.maxsize

    async def _wait_until(self, ready, timeout: Optional[float]) -> bool:
        """With the condition's lock held: wait until ``ready()`` or the timeout."""
        cond = self._cond()
        if timeout is None:
            await cond.wait_for(ready)
            return True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not ready():
            left = deadline - loop.time()
            if left <= 0:
                return False
            try:
                # On timeout, cond.wait() takes the lock back before the error
                # reaches us, so the lock is held either way.
                await asyncio.wait_for(cond.wait(), left)
            except asyncio.TimeoutError:
                pass
        return True

    async def qsize(self) -> int:
        return len(self.items)

    async def put(self, item: Any, timeout: Optional[float] = None) -> bool:
        cond = self._cond()
        self._active += 1
        try:
            async with cond:
                if not await self._wait_until(self._room, timeout):
                    return False
                self.items.append(item)
                cond.notify_all()
                return True
        finally:
            self._active -= 1
            await self._notify()

    async def get(self, timeout: Optional[float] = None) -> Tuple[bool, Any]:
        cond = self._cond()
        self._active += 1
        try:
            async with cond:
                if not await self._wait_until(lambda: bool(self.items), timeout):
                    return False, None
                item = self.items.popleft()
                cond.notify_all()
                return True, item
        finally:
            self._active -= 1
            await self._notify()

    async def put_nowait_batch(self, items: List[Any]) -> bool:
        cond = self._cond()
        async with cond:
            if not self._room(len(items)):
                return False
            self.items.extend(items)
            cond.notify_all()
            return True

    async def get_nowait_batch(self, count: int) -> Tuple[bool, List[Any]]:
        cond = self._cond()
        async with cond:
            if count > len(self.items):
                return False, []
            out = [self.items.popleft() for _ in range(count)]
            cond.notify_all()
            return True, out

    async def _notify(self) -> None:
        cond = self._cond()
        async with cond:
            cond.notify_all()

    async def drain(self, timeout: float) -> bool:
        """Wait until no put or get is in progress; False if still busy at the timeout."""
        cond = self._cond()
        async with cond:
            return await self._wait_until(lambda: self._active == 0, timeout)


class Queue:
    """A FIFO queue backed by an actor; usable from the driver, tasks and actors.

    ``maxsize <= 0`` means unbounded.  ``actor_options`` are passed to the
    backing actor's ``.options()`` (e.g. ``{"name": "jobs", "lifetime": "detached"}``).
    """

    def __init__(self, maxsize: int = 0, actor_options: Optional[Dict[str, Any]] = None) -> None:
        if isinstance(maxsize, bool) or not isinstance(maxsize, int):
            raise TypeError(f"Queue: maxsize must be an int, got {type(maxsize).__name__}")
        if actor_options is not None and not isinstance(actor_options, dict):
            raise TypeError("Queue: actor_options must be a dict of actor options, got "
                            f"{type(actor_options).__name__}")
        self.maxsize = maxsize
        actor_class = zray.remote(_QueueActor)
        self.actor: Optional[ActorHandle] = actor_class.options(
            **(actor_options or {})).remote(maxsize)

    def __len__(self) -> int:
        return self.size()

    def __repr__(self) -> str:
        return f"Queue(maxsize={self.maxsize}, actor={self.actor!r})"

    def _handle(self) -> ActorHandle:
        if self.actor is None:
            raise RuntimeError("this Queue has been shut down")
        return self.actor

    # ------------------------------------------------------------------ size
    def size(self) -> int:
        """The number of items in the queue now."""
        return zray.get(self._handle().qsize.remote())

    def qsize(self) -> int:
        return self.size()

    def empty(self) -> bool:
        return self.size() == 0

    def full(self) -> bool:
        return self.maxsize > 0 and self.size() >= self.maxsize

    # ------------------------------------------------------------------ put / get
    def put(self, item: Any, block: bool = True, timeout: Optional[float] = None) -> None:
        """Add ``item``; when full, wait (up to ``timeout`` seconds) for room.

        Raises Full if there is no room and ``block`` is False, or none came in time.
        """
        if not block:
            return self.put_nowait(item)
        _check_timeout(timeout)
        if not zray.get(self._handle().put.remote(item, timeout)):
            raise Full(f"Queue.put: no room within {timeout}s (maxsize {self.maxsize})")
        return None

    def get(self, block: bool = True, timeout: Optional[float] = None) -> Any:
        """Remove and return the oldest item; when empty, wait (up to ``timeout``).

        Raises Empty if there is no item and ``block`` is False, or none came in time.
        """
        if not block:
            return self.get_nowait()
        _check_timeout(timeout)
        ok, item = zray.get(self._handle().get.remote(timeout))
        if not ok:
            raise Empty(f"Queue.get: no item within {timeout}s")
        return item

    async def put_async(self, item: Any, block: bool = True,
                        timeout: Optional[float] = None) -> None:
        """``put`` for asyncio code: awaits instead of blocking the thread."""
        _check_timeout(timeout)
        if not await self._handle().put.remote(item, timeout if block else 0):
            raise Full(f"Queue.put_async: no room (maxsize {self.maxsize})")

    async def get_async(self, block: bool = True, timeout: Optional[float] = None) -> Any:
        """``get`` for asyncio code: awaits instead of blocking the thread."""
        _check_timeout(timeout)
        ok, item = await self._handle().get.remote(timeout if block else 0)
        if not ok:
            raise Empty("Queue.get_async: no item")
        return item

    def put_nowait(self, item: Any) -> None:
        """Add ``item`` or raise Full at once."""
        if not zray.get(self._handle().put.remote(item, 0)):
            raise Full(f"Queue.put_nowait: the queue is full (maxsize {self.maxsize})")

    def get_nowait(self) -> Any:
        """Remove and return the oldest item, or raise Empty at once."""
        ok, item = zray.get(self._handle().get.remote(0))
        if not ok:
            raise Empty("Queue.get_nowait: the queue is empty")
        return item

    def put_nowait_batch(self, items: Iterable[Any]) -> None:
        """Add all ``items`` at once, or none of them (raising Full)."""
        if isinstance(items, (str, bytes)) or not hasattr(items, "__iter__"):
            raise TypeError("Queue.put_nowait_batch expects an iterable of items, got "
                            f"{type(items).__name__}")
        items = list(items)
        if not zray.get(self._handle().put_nowait_batch.remote(items)):
            raise Full(f"Queue.put_nowait_batch: cannot add {len(items)} items to a queue "
                       f"of maxsize {self.maxsize}")

    def get_nowait_batch(self, num_items: int) -> List[Any]:
        """Remove and return the ``num_items`` oldest items, or raise Empty
        (taking none) if fewer are there."""
        if isinstance(num_items, bool) or not isinstance(num_items, int):
            raise TypeError("Queue.get_nowait_batch: num_items must be an int, got "
                            f"{type(num_items).__name__}")
        if num_items < 0:
            raise ValueError(f"Queue.get_nowait_batch: num_items must be >= 0, got {num_items}")
        ok, items = zray.get(self._handle().get_nowait_batch.remote(num_items))
        if not ok:
            raise Empty(f"Queue.get_nowait_batch: fewer than {num_items} items in the queue")
        return items

    # ------------------------------------------------------------------ end
    def shutdown(self, force: bool = False, grace_period_s: float = 5) -> None:
        """End the backing actor; the queue (and its copies) can't be used after.

        Without ``force``, puts and gets in progress get up to
        ``grace_period_s`` seconds to finish first.
        """
        actor, self.actor = self.actor, None
        if actor is None:
            return
        if not force:
            try:
                zray.get(actor.drain.remote(grace_period_s), timeout=grace_period_s + 30)
            except Exception:
                pass  # dead or stuck already: kill it regardless
        zray.kill(actor, no_restart=True)


def _check_timeout(timeout: Optional[float]) -> None:
    if timeout is not None and (isinstance(timeout, bool)
                                or not isinstance(timeout, (int, float)) or timeout < 0):
        raise ValueError(f"'timeout' must be a non-negative number, got {timeout!r}")


__all__ = ["Queue", "Empty", "Full"]
