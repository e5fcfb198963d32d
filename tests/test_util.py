"""zray.util: ActorPool and the actor-backed Queue, on one shared cluster."""

import asyncio
import pickle
import queue as stdlib_queue
import threading
import time
import uuid

import pytest

import zray
from zray import exceptions
from zray.util import ActorPool
from zray.util.queue import Empty, Full, Queue

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module", autouse=True)
def cluster():
    zray.init(num_cpus=4)
    yield
    zray.shutdown()


@zray.remote(max_concurrency=4)
class PoolWorker:
    """Counts how many calls it runs at once, so tests can see the pool's limit."""

    def __init__(self):
        self.lock = threading.Lock()
        self.active = 0
        self.most_active = 0
        self.seen = []

    def double(self, value, delay=0.0):
        with self.lock:
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        try:
            time.sleep(delay)
            if value == "boom":
                raise ValueError("cannot double boom")
            with self.lock:
                self.seen.append(value)
            return 2 * value
        finally:
            with self.lock:
                self.active -= 1

    @zray.method(num_returns=2)
    def both(self, value):
        return value, -value

    def stats(self):
        return self.most_active, list(self.seen)


def double(actor, value):
    return actor.double.remote(value)


def slow_first(actor, value):
    # Value 0 takes long; the rest are quick.
    return actor.double.remote(value, 1.0 if value == 0 else 0.0)


@zray.remote
def produce(q, start, count):
    for i in range(start, start + count):
        q.put(i)
    return count


@zray.remote
def consume(q, count, timeout=30):
    return [q.get(timeout=timeout) for _ in range(count)]


# ------------------------------------------------------------------ ActorPool


def test_map_returns_results_in_order():
    pool = ActorPool([PoolWorker.remote() for _ in range(3)])
    results = pool.map(lambda a, v: a.double.remote(v, 0.02 * (5 - v % 5)), range(20))
    assert list(results) == [2 * v for v in range(20)]
    assert not pool.has_next()


def test_map_unordered_returns_every_result_as_it_is_ready():
    pool = ActorPool([PoolWorker.remote() for _ in range(2)])
    results = list(pool.map_unordered(slow_first, range(6)))
    assert sorted(results) == [0, 2, 4, 6, 8, 10]
    assert results[0] != 0  # the 1 s call is not waited for before quick ones
    assert results[-1] == 0


def test_pool_runs_one_call_per_actor_at_a_time():
    actors = [PoolWorker.remote() for _ in range(2)]
    pool = ActorPool(actors)
    assert list(pool.map(lambda a, v: a.double.remote(v, 0.05), range(10))) == \
        [2 * v for v in range(10)]
    stats = zray.get([a.stats.remote() for a in actors])
    assert [most for most, _ in stats] == [1, 1]
    assert sorted(v for _, seen in stats for v in seen) == list(range(10))


def test_submit_get_next_and_has_next():
    pool = ActorPool([PoolWorker.remote() for _ in range(2)])
    assert not pool.has_next()
    for value in range(5):  # three more than actors: they wait in the pool
        pool.submit(double, value)
    assert pool.has_next()
    assert not pool.has_free()
    assert [pool.get_next() for _ in range(5)] == [0, 2, 4, 6, 8]
    assert not pool.has_next()
    with pytest.raises(StopIteration):
        pool.get_next()
    with pytest.raises(StopIteration):
        pool.get_next_unordered()


def test_get_next_unordered_collects_everything():
    pool = ActorPool([PoolWorker.remote() for _ in range(2)])
    for value in range(4):
        pool.submit(slow_first, value)
    out = []
    while pool.has_next():
        out.append(pool.get_next_unordered())
    assert sorted(out) == [0, 2, 4, 6]
    assert out[-1] == 0


def test_get_next_timeout_raises_get_timeout_error():
    pool = ActorPool([PoolWorker.remote()])
    pool.submit(slow_first, 0)
    with pytest.raises(exceptions.GetTimeoutError):
        pool.get_next(timeout=0.1)
    with pytest.raises(exceptions.GetTimeoutError):
        pool.get_next_unordered(timeout=0.1)
    assert pool.has_next()
    assert pool.get_next(timeout=30) == 0
    assert not pool.has_next()


def test_get_next_can_drop_a_timed_out_result():
    pool = ActorPool([PoolWorker.remote()])
    pool.submit(slow_first, 0)
    pool.submit(double, 5)
    with pytest.raises(exceptions.GetTimeoutError):
        pool.get_next(timeout=0.1, ignore_if_timedout=True)
    # The dropped call still occupies the actor; the next one runs after it.
    assert pool.get_next(timeout=30) == 10
    assert not pool.has_next()
    assert pool.has_free()


def test_has_free_pop_idle_and_push():
    actor = PoolWorker.remote()
    pool = ActorPool([actor])
    assert pool.has_free()
    pool.submit(double, 1)
    assert not pool.has_free()
    assert pool.pop_idle() is None
    assert pool.get_next() == 2
    assert pool.has_free()
    popped = pool.pop_idle()
    assert popped == actor
    assert not pool.has_free()

    pool.submit(double, 3)  # no actor in the pool: it waits
    assert pool.has_next()
    pool.push(popped)  # ...and starts on the pushed actor
    assert pool.get_next(timeout=30) == 6
    with pytest.raises(ValueError, match="already"):
        pool.push(popped)
    other = PoolWorker.remote()
    pool.push(other)
    assert sorted(pool.map(double, [1, 2, 3, 4])) == [2, 4, 6, 8]


def test_failed_call_raises_from_get_next_and_pool_goes_on():
    pool = ActorPool([PoolWorker.remote()])
    pool.submit(double, "boom")
    pool.submit(double, 4)
    with pytest.raises(ValueError, match="cannot double boom"):
        pool.get_next()
    assert pool.get_next() == 8


def test_map_discards_uncollected_results_of_earlier_submits():
    pool = ActorPool([PoolWorker.remote() for _ in range(2)])
    pool.submit(slow_first, 0)
    pool.submit(double, 100)
    assert list(pool.map(double, [1, 2, 3])) == [2, 4, 6]
    assert not pool.has_next()


def test_multi_return_methods_in_a_pool():
    pool = ActorPool([PoolWorker.remote() for _ in range(2)])
    assert list(pool.map(lambda a, v: a.both.remote(v), [1, 2, 3])) == \
        [[1, -1], [2, -2], [3, -3]]


def test_pool_rejects_bad_arguments():
    with pytest.raises(TypeError):
        ActorPool(["not an actor"])
    pool = ActorPool([PoolWorker.remote()])
    with pytest.raises(TypeError, match="ObjectRef"):
        pool.submit(lambda a, v: v, 1)
    assert pool.has_free()  # the actor is not lost to the failed submit


# ------------------------------------------------------------------ Queue


def test_queue_items_flow_from_tasks_to_driver():
    q = Queue()
    counts = [produce.remote(q, 100 * p, 20) for p in range(3)]
    got = [q.get(timeout=30) for _ in range(60)]
    assert zray.get(counts) == [20, 20, 20]
    assert sorted(got) == [100 * p + i for p in range(3) for i in range(20)]
    for p in range(3):  # each producer's items arrive in its order
        mine = [v for v in got if v // 100 == p]
        assert mine == sorted(mine)
    assert q.empty()


def test_queue_items_flow_from_driver_to_tasks():
    q = Queue()
    consumer = consume.remote(q, 10)
    for i in range(10):
        q.put(i)
    assert zray.get(consumer, timeout=30) == list(range(10))


def test_queue_fifo_and_sizes():
    q = Queue(maxsize=3)
    assert q.empty() and not q.full()
    assert q.qsize() == q.size() == len(q) == 0
    q.put("a")
    q.put_nowait("b")
    assert q.qsize() == 2 and not q.empty() and not q.full()
    q.put("c")
    assert q.full() and q.size() == 3
    assert [q.get(), q.get_nowait(), q.get(block=False)] == ["a", "b", "c"]
    assert q.empty()


def test_blocking_get_with_timeout_raises_empty():
    q = Queue()
    start = time.monotonic()
    with pytest.raises(Empty):
        q.get(timeout=0.3)
    assert time.monotonic() - start >= 0.25
    with pytest.raises(stdlib_queue.Empty):
        q.get_nowait()
    with pytest.raises(Empty):
        q.get(block=False)


def test_full_queue_put_with_timeout_raises_full():
    q = Queue(maxsize=1)
    q.put(1)
    start = time.monotonic()
    with pytest.raises(Full):
        q.put(2, timeout=0.3)
    assert time.monotonic() - start >= 0.25
    with pytest.raises(stdlib_queue.Full):
        q.put_nowait(2)
    with pytest.raises(Full):
        q.put(2, block=False)
    assert q.get() == 1 and q.empty()


def test_blocked_get_waits_for_a_put_without_blocking_other_calls():
    q = Queue()
    consumer = consume.remote(q, 1, None)  # blocks in the actor until an item comes
    ready, _ = zray.wait([consumer], timeout=0.3)
    assert ready == []
    assert q.qsize() == 0  # the queue still answers while a get waits
    q.put("wake up")
    assert zray.get(consumer, timeout=30) == ["wake up"]


def test_blocked_put_waits_for_room():
    q = Queue(maxsize=1)
    q.put(0)
    producer = produce.remote(q, 1, 2)  # puts 1 and 2; blocks until there is room
    assert [q.get(timeout=30) for _ in range(3)] == [0, 1, 2]
    assert zray.get(producer, timeout=30) == 2


def test_batches_are_all_or_nothing():
    q = Queue(maxsize=4)
    q.put_nowait_batch([1, 2, 3])
    with pytest.raises(Full):
        q.put_nowait_batch([4, 5])
    assert q.qsize() == 3
    with pytest.raises(Empty):
        q.get_nowait_batch(4)
    assert q.qsize() == 3
    assert q.get_nowait_batch(2) == [1, 2]
    assert q.get_nowait_batch(1) == [3]
    assert q.get_nowait_batch(0) == []


def test_bad_arguments():
    with pytest.raises(ValueError):
        Queue().get(timeout=-1)
    with pytest.raises(TypeError):
        Queue(maxsize="3")
    with pytest.raises(TypeError):
        Queue().put_nowait_batch(5)


def test_queue_pickles_as_a_handle_on_one_actor():
    q = Queue()
    copy = pickle.loads(pickle.dumps(q))
    copy.put("via the copy")
    assert q.get(timeout=30) == "via the copy"


def test_async_put_and_get():
    q = Queue()

    async def main():
        await q.put_async(1)
        await q.put_async(2)
        got = [await q.get_async(), await q.get_async()]
        try:
            await q.get_async(timeout=0.1)
        except Empty:
            got.append("empty")
        return got

    assert asyncio.run(main()) == [1, 2, "empty"]


def test_actor_options_and_shutdown():
    name = f"queue-{uuid.uuid4().hex[:8]}"
    q = Queue(actor_options={"name": name})
    q.put("x")
    by_name = zray.get_actor(name)
    assert zray.get(by_name.qsize.remote()) == 1
    q.shutdown()
    with pytest.raises(RuntimeError, match="shut down"):
        q.put("y")
    with pytest.raises(exceptions.ActorDiedError):
        zray.get(by_name.qsize.remote())
    q.shutdown()  # twice is fine


def test_forced_shutdown_ends_blocked_callers():
    q = Queue()
    consumer = consume.remote(q, 1, None)
    ready, _ = zray.wait([consumer], timeout=0.2)
    assert ready == []
    q.shutdown(force=True)
    with pytest.raises(exceptions.ActorDiedError):
        zray.get(consumer, timeout=30)
