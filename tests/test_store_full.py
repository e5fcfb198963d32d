"""A small object store: bounded use, spilling, and clear errors when full."""

import gc

import numpy as np
import pytest
from waiting import eventually

import zray
from zray import exceptions
from zray._private import state

pytestmark = pytest.mark.timeout(90)

MiB = 1024 * 1024


@pytest.fixture(scope="module", autouse=True)
def cluster():
    zray.init(num_cpus=2, object_store_memory=64 * MiB)
    yield
    zray.shutdown()


def store_stats() -> dict:
    """The agent's store: ``used`` and ``capacity`` bytes, ``objects``, ``spilled`` bytes."""
    return state.client.query("store")


def test_put_and_drop_keeps_store_bounded():
    baseline = store_stats()["used"]
    block = np.ones(MiB // 8)
    for _ in range(2000):  # 2 GiB through a 64 MiB store
        ref = zray.put(block)
        del ref
    # A dropped ref's DECREF is sent lazily (batched with others): wait for the
    # last ones, within a deadline.  A leaked ref keeps its MiB (or its spill
    # file) for good, and 2000 of them cannot fit in 64 MiB without spilling.
    settled = eventually(lambda: store_stats()["used"] == baseline)
    stats = store_stats()
    assert settled, f"{stats['used'] - baseline} bytes still used after every ref was dropped"
    assert stats["spilled"] == 0, f"{stats['spilled']} bytes were spilled: refs were held"


def test_full_store_spills_and_restores():
    arrays = [np.full(3 * MiB, i, dtype=np.uint8) for i in range(40)]
    refs = [zray.put(a) for a in arrays]  # 120 MiB held: some must spill
    assert store_stats()["spilled"] > 0
    for i, ref in enumerate(refs):
        value = zray.get(ref)
        assert value[0] == i and value[-1] == i
        del value


def test_pinned_views_are_never_spilled():
    first = zray.put(np.full(20 * MiB, 7, dtype=np.uint8))
    view = zray.get(first)
    others = []
    with pytest.raises(exceptions.ObjectStoreFullError):
        for _ in range(10):
            others.append(zray.put(np.ones(20 * MiB, dtype=np.uint8)))
            others.append(zray.get(others[-1]))  # pin each one too
    assert view[0] == 7 and view[-1] == 7
    del others
    gc.collect()


def test_object_larger_than_store_is_a_clear_error():
    with pytest.raises(exceptions.ObjectStoreFullError, match="no room"):
        zray.put(np.ones(100 * MiB, dtype=np.uint8))
    assert zray.get(zray.put(1)) == 1
