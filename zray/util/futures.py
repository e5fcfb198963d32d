"""``concurrent.futures`` on zray: an Executor whose calls run as zray tasks.

    from zray.util.futures import Executor

    with Executor(max_workers=8, num_cpus=1) as ex:
        future = ex.submit(pow, 2, 10)      # a concurrent.futures.Future
        print(future.result())              # 1024
        print(list(ex.map(abs, [-1, -2])))  # [1, 2]

Data flow::

    submit ──▶ waiting (only while max_workers tasks are in flight)
           ──▶ _call.remote(fn, args, kwargs) ──▶ ref
    ref.future() done (client's I/O thread) ──▶ relay queue
    relay thread ──▶ Future.set_result / set_exception ──▶ user callbacks
                 ──▶ the next waiting call is submitted

The relay thread exists so that user callbacks (and the next submit) never
run on the thread that watches the zray connection.  A task's exception
reaches the caller as the original exception, its remote traceback chained
as ``__cause__``; ``original_error`` does that unwrapping for the other
bridges too.

Owns: the Executor, its futures, its relay thread.  Must not: reach into
the client; everything here goes through zray's public API.
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import queue
import threading
from typing import Any, Callable, Deque, Dict, Iterable, Iterator, Optional, Tuple

import zray
from zray import exceptions


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a zray worker, as text."""

    def __init__(self, traceback_str: str) -> None:
        super().__init__(traceback_str)
        self.traceback_str = traceback_str

    def __str__(self) -> str:
        return f"\n\"\"\"\n{self.traceback_str.rstrip()}\n\"\"\""


def original_error(exc: BaseException) -> BaseException:
    """The exception a task raised, as it was raised (its own type, not
    RayTaskError), with the remote traceback attached as ``__cause__``.
    Anything else (a lost worker, a cancelled task) comes back unchanged."""
    if isinstance(exc, exceptions.RayTaskError) and exc.cause is not None:
        cause = exc.cause
        if cause.__cause__ is None and exc.traceback_str:
            cause.__cause__ = RemoteTraceback(exc.traceback_str)
        return cause
    return exc


def ensure_started() -> None:
    """Start a local zray session unless this process has one already."""
    if not zray.is_initialized():
        zray.init(ignore_reinit_error=True)


def cluster_cpus() -> int:
    """Whole CPUs of the cluster, at least one."""
    ensure_started()
    return max(1, int(zray.cluster_resources().get("CPU", 1)))


def _call(fn: Callable[..., Any], args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
    return fn(*args, **kwargs)


def _call_chunk(fn: Callable[..., Any], chunk: list) -> list:
    return [fn(*args) for args in chunk]


_remote_call = zray.remote(_call)
_remote_chunk = zray.remote(_call_chunk)


class _Call:
    """One submitted call: what to run and the Future that reports it."""

    __slots__ = ("remote_fn", "args", "future", "ref")

    def __init__(self, remote_fn: Any, args: tuple, future: concurrent.futures.Future) -> None:
        self.remote_fn = remote_fn
        self.args = args
        self.future = future
        self.ref: Any = None


class Executor(concurrent.futures.Executor):
    """A ``concurrent.futures.Executor`` that runs each call as a zray task.

    ``max_workers`` bounds how many tasks are in flight at once (default: no
    bound; zray queues what the cluster cannot run yet).  The other keyword
    arguments are task options (``num_cpus``, ``num_gpus``, ``resources``,
    ``max_retries``, ``scheduling_strategy``, ...) given to every task.
    zray is started (``zray.init()``) if this process has not started it.
    """

    def __init__(self, max_workers: Optional[int] = None, **task_options: Any) -> None:
        if max_workers is not None and (isinstance(max_workers, bool)
                                        or not isinstance(max_workers, int) or max_workers < 1):
            raise ValueError(f"max_workers must be a positive int or None, got {max_workers!r}")
        ensure_started()
        self._max_workers = max_workers
        self._call_fn = _remote_call.options(**task_options) if task_options else _remote_call
        self._chunk_fn = _remote_chunk.options(**task_options) if task_options else _remote_chunk
        self._lock = threading.Lock()
        self._waiting: Deque[_Call] = collections.deque()
        self._in_flight = 0
        self._shutdown = False
        self._done_queue: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
        self._relay: Optional[threading.Thread] = None

    # ------------------------------------------------------------------ submitting
    def submit(self, fn: Callable[..., Any], /, *args: Any,
               **kwargs: Any) -> concurrent.futures.Future:
        """Run ``fn(*args, **kwargs)`` as a zray task; its Future resolves with the
        task's value or raises its exception."""
        return self._submit(self._call_fn, (fn, args, kwargs))

    def _submit(self, remote_fn: Any, args: tuple) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        call = _Call(remote_fn, args, future)
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._start_relay()
            if self._max_workers is not None and self._in_flight >= self._max_workers:
                self._waiting.append(call)
                return future
            self._in_flight += 1
        if not self._launch(call):
            self._finished_one()
        return future

    def _launch(self, call: _Call) -> bool:
        """Submit the task of a call counted in flight; False if none is in
        flight for it after all (it was cancelled, or submitting failed)."""
        if not call.future.set_running_or_notify_cancel():
            return False
        try:
            call.ref = call.remote_fn.remote(*call.args)
        except BaseException as exc:
            call.future.set_exception(exc)
            return False
        done_queue = self._done_queue
        call.ref.future().add_done_callback(lambda ref_future: done_queue.put((call, ref_future)))
        return True

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any],
            timeout: Optional[float] = None, chunksize: int = 1) -> Iterator[Any]:
        """Like ``concurrent.futures.Executor.map``; with ``chunksize`` > 1, each
        task runs that many calls, which costs less per call."""
        if isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1:
            raise ValueError(f"chunksize must be an int >= 1, got {chunksize!r}")
        if chunksize == 1:
            return super().map(fn, *iterables, timeout=timeout)
        calls = zip(*iterables)
        chunks = iter(lambda: list(itertools.islice(calls, chunksize)), [])
        futures = [self._submit(self._chunk_fn, (fn, chunk)) for chunk in chunks]
        return itertools.chain.from_iterable(_results(futures, timeout))

    # ------------------------------------------------------------------ completing
    def _start_relay(self) -> None:
        if self._relay is None:
            self._relay = threading.Thread(target=self._relay_results, daemon=True,
                                           name="zray-futures-relay")
            self._relay.start()

    def _relay_results(self) -> None:
        while True:
            item = self._done_queue.get()
            if item is None:
                return
            call, ref_future = item
            error = ref_future.exception()
            if error is not None:
                call.future.set_exception(original_error(error))
            else:
                call.future.set_result(ref_future.result())
            call.ref = None
            self._finished_one()

    def _finished_one(self) -> None:
        """A call left flight: its place goes to the next waiting one, or the
        relay ends once nothing is left after a shutdown."""
        while True:
            with self._lock:
                if not self._waiting:
                    self._in_flight -= 1
                    if self._shutdown and self._in_flight == 0:
                        self._done_queue.put(None)
                    return
                call = self._waiting.popleft()
            if self._launch(call):
                return

    # ------------------------------------------------------------------ shutdown
    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No more submits.  ``cancel_futures`` cancels calls still waiting for a
        place (those already running as tasks finish); ``wait`` blocks until
        every call has finished."""
        cancelled = []
        with self._lock:
            self._shutdown = True
            if cancel_futures:
                cancelled, self._waiting = list(self._waiting), collections.deque()
            relay = self._relay
            if self._in_flight == 0 and relay is not None:
                self._done_queue.put(None)
        for call in cancelled:
            call.future.cancel()
        if wait and relay is not None and relay is not threading.current_thread():
            relay.join()


def _results(futures: list, timeout: Optional[float]) -> Iterator[Any]:
    """Each future's result in order, within ``timeout`` seconds of now in all."""
    import time

    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        for future in futures:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            yield future.result(left)
    finally:
        for future in futures:
            future.cancel()


__all__ = ["Executor", "RemoteTraceback", "original_error"]
