"""The joblib backend: each batch of calls joblib hands over is one zray task.

::

    joblib.Parallel ──submit(batch, callback)──▶ ZrayBackend
        ──▶ zray.util.futures.Executor.submit(batch)   (a zray task)
        ──▶ Future done (the executor's relay thread) ──▶ callback ──▶ next batch

Batch sizes adapt as with joblib's process backends (``AutoBatchingMixin``):
quick calls are grouped so that each task is worth its overhead.
``n_jobs=-1`` means every CPU of the cluster, as ``zray.cluster_resources()``
counts them; zray starts (``zray.init()``) if it has not.

Owns: the backend class.  Must not: import zray internals.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from joblib._parallel_backends import (
    AutoBatchingMixin, FallbackToBackend, ParallelBackendBase, SequentialBackend,
)

from zray.util.futures import Executor, cluster_cpus


#: What joblib's tasks are called in ``zray list tasks`` and the dashboard.
TASK_NAME = "joblib_batch"


def _run_batch(batch: Callable[[], Any]) -> Any:
    return batch()


class ZrayBackend(AutoBatchingMixin, ParallelBackendBase):
    """joblib's batches as zray tasks.  Extra keyword arguments given to
    ``parallel_backend("zray", ...)`` are task options (``num_cpus``,
    ``resources``, ...) for every batch."""

    supports_retrieve_callback = True
    supports_timeout = True
    supports_return_generator = True
    supports_sharedmem = False
    uses_threads = False
    default_n_jobs = -1

    def __init__(self, nesting_level: Optional[int] = None,
                 inner_max_num_threads: Optional[int] = None, **task_options: Any) -> None:
        super().__init__(nesting_level=nesting_level,
                         inner_max_num_threads=inner_max_num_threads)
        self.task_options = {"name": TASK_NAME, **task_options}
        self._executor: Optional[Executor] = None

    def effective_n_jobs(self, n_jobs: Optional[int]) -> int:
        """How many batches can run at once: ``-1`` is every cluster CPU, ``-2``
        all but one, and so on; a positive number is taken as given."""
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 has no meaning")
        if n_jobs is None:
            n_jobs = self.default_n_jobs
        if n_jobs < 0:
            return max(1, cluster_cpus() + 1 + n_jobs)
        return n_jobs

    def configure(self, n_jobs: int = 1, parallel: Any = None, prefer: Any = None,
                  require: Any = None, **backend_kwargs: Any) -> int:
        if require == "sharedmem":
            raise ValueError("the zray backend runs calls in other processes; it cannot "
                             "give require='sharedmem'")
        n_jobs = self.effective_n_jobs(n_jobs)
        if n_jobs == 1:
            raise FallbackToBackend(SequentialBackend(nesting_level=self.nesting_level))
        self.parallel = parallel
        if self._executor is None:
            self._executor = Executor(**self.task_options)
        return n_jobs

    def submit(self, func: Callable[[], Any], callback: Optional[Callable[[Any], Any]] = None
               ) -> Any:
        future = self._executor.submit(_run_batch, func)
        if callback is not None:
            future.add_done_callback(callback)
        return future

    def retrieve_result_callback(self, out: Any) -> Any:
        return out.result()

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """Stop the batches not started; with ``ensure_ready`` the backend can
        take more."""
        self.terminate()
        if ensure_ready:
            self._executor = Executor(**self.task_options)

    def terminate(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


__all__ = ["ZrayBackend"]
