"""Generator tasks and methods: ``num_returns="streaming"`` (Ray's default for a
function that yields) and ``"dynamic"``, end to end on one shared cluster."""

import asyncio
import os
import threading

import numpy as np
import pytest

import zray
from waiting import eventually
from zray import exceptions

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module", autouse=True)
def cluster():
    zray.init(num_cpus=2)
    yield
    zray.shutdown()


@zray.remote
def count_up(n):
    for i in range(n):
        yield i * 10


@zray.remote
def big_items(n):
    for i in range(n):
        yield np.full(300_000, i, dtype=np.int64)  # 2.4 MB each: shared memory


@zray.remote
def fails_after(n):
    for i in range(n):
        yield i
    raise ValueError(f"broke after {n}")


@zray.remote
def gated(path, n):
    """Yields one item, then waits for ``path`` before yielding the rest."""
    yield 0
    while not os.path.exists(path):
        threading.Event().wait(0.01)
    for i in range(1, n):
        yield i


def test_a_generator_function_returns_a_generator_of_refs():
    gen = count_up.remote(5)
    assert isinstance(gen, zray.ObjectRefGenerator)
    refs = list(gen)
    assert all(isinstance(r, zray.ObjectRef) for r in refs)
    assert zray.get(refs) == [0, 10, 20, 30, 40]
    assert gen.is_finished()
    assert zray.get(gen.completed()) == 5


def test_items_arrive_before_the_generator_finishes(tmp_path):
    gate = tmp_path / "gate"
    gen = gated.remote(str(gate), 3)
    first = next(gen)  # would hang if items came only at the end
    assert zray.get(first) == 0
    gate.touch()
    assert zray.get(list(gen)) == [1, 2]


def test_an_empty_generator_stops_at_once():
    assert list(count_up.remote(0)) == []


def test_large_items_are_shared_and_zero_copy():
    values = [zray.get(ref) for ref in big_items.remote(3)]
    assert [int(v[0]) for v in values] == [0, 1, 2]
    assert not values[0].flags.writeable  # read in place from the store


def test_an_exception_is_the_last_item():
    gen = fails_after.remote(2)
    first, second, third = next(gen), next(gen), next(gen)
    assert zray.get([first, second]) == [0, 1]
    with pytest.raises(ValueError, match="broke after 2"):
        zray.get(third)
    with pytest.raises(exceptions.RayTaskError):
        zray.get(third)
    with pytest.raises(StopIteration):
        next(gen)


def test_a_streaming_function_that_does_not_yield_fails_clearly():
    @zray.remote(num_returns="streaming")
    def plain():
        return 1

    (only,) = list(plain.remote())
    with pytest.raises(TypeError, match="must be a generator"):
        zray.get(only)


def test_async_iteration():
    async def collect():
        return [await ref async for ref in count_up.remote(4)]

    assert asyncio.run(collect()) == [0, 10, 20, 30]


def test_an_async_generator_function_streams_too():
    @zray.remote
    async def ticks(n):
        for i in range(n):
            await asyncio.sleep(0)
            yield i

    assert zray.get(list(ticks.remote(3))) == [0, 1, 2]


def test_dynamic_returns_one_ref_holding_the_refs():
    gen_ref = count_up.options(num_returns="dynamic").remote(3)
    assert isinstance(gen_ref, zray.ObjectRef)
    dynamic = zray.get(gen_ref)
    assert isinstance(dynamic, zray.DynamicObjectRefGenerator)
    assert len(dynamic) == 3
    assert zray.get(list(dynamic)) == [0, 10, 20]


def test_a_task_can_read_a_generator_it_starts():
    @zray.remote
    def total(n):
        return sum(zray.get(ref) for ref in count_up.remote(n))

    assert zray.get(total.remote(4)) == 60


def test_a_dropped_generator_leaves_no_refs_behind():
    client = zray._private.state.client
    before = client.local_ref_count()
    stored = client.query("store")["objects"]
    for finished in (True, False):
        gen = count_up.remote(20)
        next(gen)
        if finished:
            zray.get(gen.completed())  # every item is here
        del gen
    assert client.local_ref_count() == before
    assert eventually(lambda: client.query("store")["objects"] <= stored), (
        stored, client.query("store"))  # the node's too


@zray.remote
class Producer:
    def __init__(self, base):
        self.base = base

    def items(self, n):
        for i in range(n):
            yield self.base + i

    @zray.method(num_returns="dynamic")
    def batch(self, n):
        for i in range(n):
            yield i


@zray.remote
class AsyncProducer:
    async def items(self, n):
        for i in range(n):
            await asyncio.sleep(0)
            yield i


def test_actor_methods_that_yield_stream():
    producer = Producer.remote(100)
    assert zray.get(list(producer.items.remote(3))) == [100, 101, 102]
    assert zray.get(list(zray.get(producer.batch.remote(2)))) == [0, 1]


def test_async_actor_methods_that_yield_stream():
    producer = AsyncProducer.remote()
    assert zray.get(list(producer.items.remote(3))) == [0, 1, 2]
