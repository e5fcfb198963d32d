"""``multiprocessing.Pool`` on a zray cluster: the pool's processes are zray
actors, so they spread over every node.

::

    Pool.map/imap/apply_async ──("source", _Source)──▶ events ──▶ dispatcher thread
    dispatcher: each chunk to the least busy actor (two in flight per actor)
        actor.run.remote(fn, chunk, mode) ──▶ ref.future() done ──("done", ...)──▶ events
        result.chunk_done(index, ok, value)      (results.py: AsyncResult, iterators)

Each actor (``PoolProcess``) runs the initializer once, in its constructor;
with ``maxtasksperchild`` an actor that has been given that many chunks is
killed once they are done and a fresh one takes its place.  An actor that
dies fails only the chunks it held, and is replaced.  Jobs are served in the
order they were submitted; ``imap`` reads its input only as actors have room.

Owns: the pool's actors and its dispatcher thread.  Must not: touch zray's
internals; only the public API (actors, refs, ``kill``) is used.
"""

from __future__ import annotations

import collections
import itertools
import logging
import queue
import threading
from typing import Any, Callable, Deque, Dict, Iterable, Iterator, List, Optional, Tuple

import zray
from zray import exceptions
from zray.util.futures import cluster_cpus, original_error
from zray.util.multiprocessing.results import (
    AsyncResult, IMapIterator, IMapUnorderedIterator, MapResult,
)

logger = logging.getLogger("zray.util.multiprocessing")

#: Chunks sent to one actor before the first comes back, so it never idles
#: while a result travels.
IN_FLIGHT_PER_ACTOR = 2

_MAP, _STAR, _APPLY = "map", "star", "apply"


class PoolProcess:
    """One of the pool's processes: a zray actor running chunks of calls."""

    def __init__(self, initializer: Optional[Callable[..., Any]], initargs: tuple) -> None:
        if initializer is not None:
            initializer(*initargs)

    def run(self, fn: Callable[..., Any], chunk: list, mode: str) -> list:
        if mode == _MAP:
            return [fn(item) for item in chunk]
        if mode == _STAR:
            return [fn(*item) for item in chunk]
        return [fn(*args, **kwargs) for args, kwargs in chunk]


_PoolActor = zray.remote(PoolProcess)


class _Source:
    """A job's input, cut into chunks as the dispatcher asks for them."""

    def __init__(self, job: Any, chunks: Iterator[list], fn: Callable[..., Any],
                 mode: str) -> None:
        self.job = job
        self.chunks = chunks
        self.fn = fn
        self.mode = mode
        self.index = 0

    def next_chunk(self) -> Optional[Tuple[int, list]]:
        """The next (index, chunk), or None once the input has ended (or failed)."""
        try:
            chunk = next(self.chunks)
        except StopIteration:
            self.job.input_ended(self.index)
            return None
        except Exception as exc:  # the caller's iterable raised: the job ends with it
            self.job.chunk_done(self.index, False, exc)
            self.job.input_ended(self.index + 1)
            return None
        index, self.index = self.index, self.index + 1
        return index, chunk


class _Slot:
    """One place in the pool: its actor (None between a retired one and the next),
    what it has in flight and what it has been given."""

    __slots__ = ("actor", "in_flight", "given")

    def __init__(self) -> None:
        self.actor: Any = None
        self.in_flight = 0
        self.given = 0


class _Dispatcher:
    """The pool's one thread: hands chunks to actors, reports what comes back,
    recycles actors; all pool state changes here."""

    def __init__(self, make_actor: Callable[[], Any], processes: int,
                 maxtasksperchild: Optional[int]) -> None:
        self.make_actor = make_actor
        self.maxtasksperchild = maxtasksperchild
        self.slots = [_Slot() for _ in range(processes)]
        for slot in self.slots:
            slot.actor = make_actor()
        self.events: "queue.SimpleQueue[tuple]" = queue.SimpleQueue()
        self.sources: Deque[_Source] = collections.deque()
        self.jobs: Dict[int, Any] = {}  # unfinished jobs, by id
        self.closing = False
        self.thread = threading.Thread(target=self.serve, daemon=True, name="zray-pool")

    def serve(self) -> None:
        try:
            while True:
                self.dispatch()
                if self.closing and not self.sources and not self.busy():
                    break
                event = self.events.get()
                if event[0] == "source":
                    self.sources.append(event[1])
                    self.jobs[id(event[1].job)] = event[1].job
                elif event[0] == "done":
                    self.chunk_done(*event[1:])
                elif event[0] == "close":
                    self.closing = True
                elif event[0] == "terminate":
                    self.abort_all(ValueError("the Pool was terminated before this job "
                                              "finished"))
                    break
        finally:
            self.kill_all()

    def busy(self) -> bool:
        return any(slot.in_flight for slot in self.slots)

    def open_slot(self) -> Optional[_Slot]:
        """The actor with the fewest chunks in flight that may take one more."""
        limit = self.maxtasksperchild
        best = None
        for slot in self.slots:
            if slot.in_flight >= IN_FLIGHT_PER_ACTOR or (limit and slot.given >= limit):
                continue
            if best is None or slot.in_flight < best.in_flight:
                best = slot
        return best

    def dispatch(self) -> None:
        while self.sources:
            slot = self.open_slot()
            if slot is None:
                return
            source = self.sources[0]
            taken = source.next_chunk()
            if taken is None:
                self.sources.popleft()
                self.forget_if_finished(source.job)
                continue
            self.send(slot, source, *taken)

    def send(self, slot: _Slot, source: _Source, index: int, chunk: list) -> None:
        if slot.actor is None:
            self.start_actor(slot)
        slot.in_flight += 1
        slot.given += 1
        job = source.job
        try:
            ref = slot.actor.run.remote(source.fn, chunk, source.mode)
        except Exception as exc:  # e.g. the function would not pickle
            self.events.put(("done", slot, job, index, exc, None))
            return
        events = self.events
        ref.future().add_done_callback(
            lambda future: events.put(("done", slot, job, index, None, future)))

    def chunk_done(self, slot: _Slot, job: Any, index: int, error: Optional[BaseException],
                   future: Any) -> None:
        slot.in_flight -= 1
        if error is None:
            error = future.exception()
        if error is None:
            job.chunk_done(index, True, future.result())
        else:
            if isinstance(error, exceptions.RayActorError):
                self.retire(slot)  # it died: only its own chunks fail; a new one follows
            job.chunk_done(index, False, original_error(error))
        self.forget_if_finished(job)
        limit = self.maxtasksperchild
        if limit and slot.given >= limit and slot.in_flight == 0:
            self.retire(slot)  # the next chunk for this place starts a fresh actor

    def forget_if_finished(self, job: Any) -> None:
        if job.finished():
            self.jobs.pop(id(job), None)

    def start_actor(self, slot: _Slot) -> None:
        slot.actor = self.make_actor()
        slot.given = 0

    def retire(self, slot: _Slot) -> None:
        if slot.actor is not None:
            self.kill(slot.actor)
        slot.actor = None
        slot.given = 0

    def abort_all(self, error: BaseException) -> None:
        for job in list(self.jobs.values()):
            job.abort(error)
        self.jobs.clear()
        self.sources.clear()

    def kill(self, actor: Any) -> None:
        try:
            zray.kill(actor)
        except Exception:  # the session is gone already: so is the actor
            pass

    def kill_all(self) -> None:
        for slot in self.slots:
            self.retire(slot)


def _chunked(iterable: Iterable[Any], size: int) -> Iterator[list]:
    it = iter(iterable)
    return iter(lambda: list(itertools.islice(it, size)), [])


def _check_chunksize(chunksize: Any) -> None:
    if isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1:
        raise ValueError(f"chunksize must be an int >= 1, got {chunksize!r}")


class Pool:
    """``multiprocessing.Pool`` whose processes are zray actors on the whole cluster.

    ``processes`` defaults to the cluster's CPUs; each actor asks for one CPU
    (a share of one when there are more processes than CPUs).
    ``ray_remote_args`` adds actor options (``resources``, ``num_gpus``,
    ``scheduling_strategy``, ...).  zray is started if it is not yet.
    """

    def __init__(self, processes: Optional[int] = None,
                 initializer: Optional[Callable[..., Any]] = None, initargs: Iterable[Any] = (),
                 maxtasksperchild: Optional[int] = None, context: Any = None, *,
                 ray_remote_args: Optional[Dict[str, Any]] = None) -> None:
        cpus = cluster_cpus()  # starts zray if needed
        if processes is None:
            processes = cpus
        if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
            raise ValueError("Number of processes must be at least 1")
        if maxtasksperchild is not None and (isinstance(maxtasksperchild, bool) or not
                                             isinstance(maxtasksperchild, int)
                                             or maxtasksperchild < 1):
            raise ValueError("maxtasksperchild must be a positive int or None")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        options = {"num_cpus": min(1.0, cpus / processes), "scheduling_strategy": "SPREAD"}
        options.update(ray_remote_args or {})
        actor_class = _PoolActor.options(**options)
        initargs = tuple(initargs)
        self._processes = processes
        self._state = "running"
        self._dispatcher = _Dispatcher(lambda: actor_class.remote(initializer, initargs),
                                       processes, maxtasksperchild)
        self._dispatcher.thread.start()

    # ------------------------------------------------------------------ lifecycle
    def _check_running(self) -> None:
        if self._state != "running":
            raise ValueError("Pool not running")

    def close(self) -> None:
        """No more work; the actors exit once the work already given is done."""
        if self._state == "running":
            self._state = "closed"
            self._dispatcher.events.put(("close",))

    def terminate(self) -> None:
        """Kill the actors now; unfinished results raise ValueError."""
        if self._state != "terminated":
            self._state = "terminated"
            self._dispatcher.events.put(("terminate",))
            self._dispatcher.thread.join()

    def join(self) -> None:
        """Wait until the pool (closed or terminated) has finished and its actors are gone."""
        if self._state == "running":
            raise ValueError("Pool is still running")
        self._dispatcher.thread.join()

    def __enter__(self) -> "Pool":
        self._check_running()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.terminate()

    def __repr__(self) -> str:
        return f"<zray.util.multiprocessing.Pool state={self._state} pool_size={self._processes}>"

    # ------------------------------------------------------------------ work
    def _submit(self, job: Any, chunks: Iterator[list], fn: Callable[..., Any],
                mode: str) -> None:
        self._dispatcher.events.put(("source", _Source(job, chunks, fn, mode)))

    def _map_async(self, fn: Callable[..., Any], iterable: Iterable[Any], mode: str,
                   chunksize: Optional[int], callback: Any, error_callback: Any) -> MapResult:
        self._check_running()
        items = iterable if hasattr(iterable, "__len__") else list(iterable)
        if chunksize is None:
            chunksize, extra = divmod(len(items), self._processes * 4)
            chunksize += 1 if extra else 0
            chunksize = max(1, chunksize)
        _check_chunksize(chunksize)
        count = -(-len(items) // chunksize)
        result = MapResult(count, callback, error_callback)
        if count:
            self._submit(result, _chunked(items, chunksize), fn, mode)
        return result

    def apply_async(self, func: Callable[..., Any], args: Iterable[Any] = (),
                    kwds: Optional[Dict[str, Any]] = None,
                    callback: Optional[Callable[[Any], Any]] = None,
                    error_callback: Optional[Callable[[BaseException], Any]] = None
                    ) -> AsyncResult:
        self._check_running()
        result = AsyncResult(callback, error_callback)
        self._submit(result, iter([[(tuple(args), dict(kwds or {}))]]), func, _APPLY)
        return result

    def apply(self, func: Callable[..., Any], args: Iterable[Any] = (),
              kwds: Optional[Dict[str, Any]] = None) -> Any:
        return self.apply_async(func, args, kwds).get()

    def map_async(self, func: Callable[..., Any], iterable: Iterable[Any],
                  chunksize: Optional[int] = None,
                  callback: Optional[Callable[[Any], Any]] = None,
                  error_callback: Optional[Callable[[BaseException], Any]] = None
                  ) -> MapResult:
        return self._map_async(func, iterable, _MAP, chunksize, callback, error_callback)

    def map(self, func: Callable[..., Any], iterable: Iterable[Any],
            chunksize: Optional[int] = None) -> List[Any]:
        return self.map_async(func, iterable, chunksize).get()

    def starmap_async(self, func: Callable[..., Any], iterable: Iterable[Iterable[Any]],
                      chunksize: Optional[int] = None,
                      callback: Optional[Callable[[Any], Any]] = None,
                      error_callback: Optional[Callable[[BaseException], Any]] = None
                      ) -> MapResult:
        return self._map_async(func, iterable, _STAR, chunksize, callback, error_callback)

    def starmap(self, func: Callable[..., Any], iterable: Iterable[Iterable[Any]],
                chunksize: Optional[int] = None) -> List[Any]:
        return self.starmap_async(func, iterable, chunksize).get()

    def imap(self, func: Callable[..., Any], iterable: Iterable[Any],
             chunksize: int = 1) -> IMapIterator:
        """Results in input order, as they come; the input is read as actors have room."""
        self._check_running()
        _check_chunksize(chunksize)
        result = IMapIterator()
        self._submit(result, _chunked(iterable, chunksize), func, _MAP)
        return result

    def imap_unordered(self, func: Callable[..., Any], iterable: Iterable[Any],
                       chunksize: int = 1) -> IMapUnorderedIterator:
        """Results in the order they finish."""
        self._check_running()
        _check_chunksize(chunksize)
        result = IMapUnorderedIterator()
        self._submit(result, _chunked(iterable, chunksize), func, _MAP)
        return result


__all__ = ["Pool", "PoolProcess"]
