"""Tests for zray._private.object_store: allocator, arena segment, spilling."""

from __future__ import annotations

import contextlib
import os
import pickle
import random
import stat
import subprocess
import sys
import textwrap
import time
from uuid import uuid4

import numpy as np
import pytest

from zray._private.object_store import ALIGNMENT, Allocator, Arena, SpillStore

pytestmark = pytest.mark.timeout(60)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------ allocator


def test_offsets_and_sizes_are_aligned():
    allocator = Allocator(1 << 20)
    offsets = [allocator.allocate(size) for size in (1, 63, 64, 65, 1000, 0, -5)]
    assert all(offset is not None and offset % ALIGNMENT == 0 for offset in offsets)
    assert [allocator.size_of(offset) for offset in offsets] == [64, 64, 64, 128, 1024, 64, 64]


def test_capacity_is_rounded_down_to_the_alignment():
    allocator = Allocator(1000)
    assert allocator.capacity == 960
    assert allocator.allocate(960) == 0
    assert allocator.allocate(1) is None


def test_custom_alignment():
    allocator = Allocator(4096, alignment=512)
    assert allocator.allocate(1) == 0
    assert allocator.allocate(513) == 512
    assert allocator.used == 512 + 1024


def test_first_fit_reuses_freed_low_block():
    allocator = Allocator(10 * 1024)
    low = allocator.allocate(1024)
    allocator.allocate(1024)
    allocator.allocate(1024)
    assert allocator.free(low) == 1024
    # The lowest block that fits wins, even though the top is far bigger.
    assert allocator.allocate(512) == low
    assert allocator.allocate(512) == low + 512


def test_free_neighbours_coalesce():
    allocator = Allocator(3 * 1024)
    first, middle, last = (allocator.allocate(1024) for _ in range(3))
    assert allocator.allocate(1) is None
    allocator.free(middle)
    allocator.free(first)    # merges with the block above it
    allocator.free(last)     # merges with the block below it
    assert allocator.free_blocks() == [(0, 3 * 1024)]
    assert allocator.largest_free == 3 * 1024
    assert allocator.allocate(3 * 1024) == 0


def test_coalescing_in_every_order():
    for order in ([0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]):
        allocator = Allocator(4 * 256)
        blocks = [allocator.allocate(256) for _ in range(3)]
        for index in order:
            allocator.free(blocks[index])
        assert allocator.free_blocks() == [(0, 4 * 256)], order


def test_out_of_space_returns_none():
    allocator = Allocator(4096)
    assert allocator.allocate(4097) is None
    assert allocator.allocate(4096) == 0
    assert allocator.allocate(1) is None
    assert Allocator(0).allocate(1) is None


def test_fragmented_space_does_not_fit_a_large_block():
    allocator = Allocator(4 * 64)
    blocks = [allocator.allocate(64) for _ in range(4)]
    allocator.free(blocks[0])
    allocator.free(blocks[2])
    assert allocator.available == 128
    assert allocator.largest_free == 64
    assert allocator.allocate(128) is None


def test_double_free_and_unknown_offsets_raise():
    allocator = Allocator(4096)
    offset = allocator.allocate(100)
    allocator.free(offset)
    with pytest.raises(ValueError, match=f"offset {offset} is not allocated"):
        allocator.free(offset)
    with pytest.raises(ValueError, match="offset 64 is not allocated"):
        allocator.free(64)
    with pytest.raises(ValueError, match="not allocated"):
        allocator.size_of(offset)


def test_accounting():
    allocator = Allocator(8192)
    assert (allocator.used, allocator.available, allocator.num_allocations) == (0, 8192, 0)
    a = allocator.allocate(100)
    b = allocator.allocate(1000)
    assert allocator.used == 128 + 1024
    assert allocator.available == 8192 - 128 - 1024
    assert allocator.num_allocations == 2
    assert allocator.largest_free == 8192 - 128 - 1024
    allocator.free(a)
    assert allocator.used == 1024
    assert allocator.num_allocations == 1
    allocator.free(b)
    assert (allocator.used, allocator.available, allocator.largest_free) == (0, 8192, 8192)


def _check_invariants(allocator: Allocator, live: dict[int, int]) -> None:
    blocks = sorted([(offset, size, "used") for offset, size in live.items()]
                    + [(offset, size, "free") for offset, size in allocator.free_blocks()])
    # Used and free blocks tile [0, capacity) exactly: no overlap, no gap.
    position = 0
    previous_kind = None
    for offset, size, kind in blocks:
        assert offset == position, (offset, position)
        assert size > 0 and offset % ALIGNMENT == 0 and size % ALIGNMENT == 0
        assert not (kind == "free" and previous_kind == "free"), "free neighbours were not merged"
        position += size
        previous_kind = kind
    assert position == allocator.capacity
    assert allocator.used == sum(live.values())
    assert allocator.available == allocator.capacity - allocator.used
    assert allocator.num_allocations == len(live)
    free_sizes = [size for _, size in allocator.free_blocks()]
    assert allocator.largest_free == max(free_sizes, default=0)


def test_random_allocations_never_overlap():
    rng = random.Random(1234)
    allocator = Allocator(1 << 20)
    live: dict[int, int] = {}
    for step in range(6000):
        if live and (rng.random() < 0.45 or allocator.available < 4096):
            offset = rng.choice(list(live))
            assert allocator.free(offset) == live.pop(offset)
        else:
            size = rng.choice([rng.randint(1, 256), rng.randint(1, 8192), rng.randint(1, 40000)])
            offset = allocator.allocate(size)
            if offset is None:
                assert allocator.largest_free < size
                continue
            assert offset not in live
            assert allocator.size_of(offset) >= size
            live[offset] = allocator.size_of(offset)
            assert offset + live[offset] <= allocator.capacity
        if step % 97 == 0:
            _check_invariants(allocator, live)
    _check_invariants(allocator, live)
    for offset in list(live):
        allocator.free(offset)
    assert allocator.free_blocks() == [(0, allocator.capacity)]
    assert allocator.used == 0


def test_many_fragments_keep_first_fit_order():
    allocator = Allocator(64 * 20000)
    offsets = [allocator.allocate(64) for _ in range(10000)]
    for offset in offsets[::2]:
        allocator.free(offset)
    assert allocator.num_free_blocks == 5001
    # Small requests fill the holes from the bottom up ...
    assert allocator.allocate(64) == offsets[0]
    assert allocator.allocate(64) == offsets[2]
    # ... while a big one skips all of them and lands on the untouched top.
    assert allocator.allocate(128) == 64 * 10000


# ---------------------------------------------------------------------- arena


def _segment_exists(name: str) -> bool:
    return os.path.exists(f"/dev/shm/{name}")


@pytest.fixture
def arena_name():
    name = f"zray_test_{uuid4().hex[:8]}"
    try:
        yield name
    finally:
        # Whatever the test did, leave nothing behind in /dev/shm.
        with contextlib.suppress(FileNotFoundError):
            leftover = Arena.attach(name)
            leftover.close()
            leftover.unlink()
        assert not _segment_exists(name)


@pytest.fixture
def arena(arena_name):
    created = Arena.create(arena_name, 1 << 16)
    try:
        yield created
    finally:
        created.close()
        created.unlink()


def _run_python(code: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO_ROOT, env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args],
                          check=False,   # callers look at returncode and stderr themselves
                          env=env, capture_output=True, text=True, timeout=timeout)


def test_create_sets_name_and_size(arena, arena_name):
    assert arena.name == arena_name
    assert arena.size >= 1 << 16
    assert len(arena.buf) == arena.size
    assert _segment_exists(arena_name)


def test_names_must_start_with_zray():
    with pytest.raises(ValueError, match="must start with 'zray'"):
        Arena.create(f"test_{uuid4().hex[:8]}", 4096)
    with pytest.raises(ValueError, match="must start with 'zray'"):
        Arena.attach("psm_something")


def test_child_process_sees_the_same_bytes_and_does_not_unlink(arena, arena_name):
    arena.write(0, b"from the creator")
    child = _run_python("""
        import sys
        from zray._private.object_store import Arena
        arena = Arena.attach(sys.argv[1])
        print(bytes(arena.view(0, 16)).decode())
        arena.write(100, b"from the child")
        arena.close()
    """, arena_name)
    assert child.returncode == 0, child.stderr
    assert child.stdout.strip() == "from the creator"
    assert "leaked" not in child.stderr
    assert bytes(arena.view(100, 14)) == b"from the child"
    # The attaching process has exited: the segment must still be there.
    assert _segment_exists(arena_name)
    again = Arena.attach(arena_name)
    try:
        assert bytes(again.view(0, 16)) == b"from the creator"
    finally:
        again.close()


def test_child_exiting_without_close_does_not_unlink(arena, arena_name):
    child = _run_python("""
        import sys
        from zray._private.object_store import Arena
        arena = Arena.attach(sys.argv[1])
        arena.write(0, b"x")
    """, arena_name)
    assert child.returncode == 0, child.stderr
    assert _segment_exists(arena_name)
    assert bytes(arena.view(0, 1)) == b"x"


def test_crashed_creator_segment_is_cleaned_even_after_a_child_attached(arena_name):
    # The child is started with "spawn", so it shares the creator's resource
    # tracker.  Its attach must leave the creator's registration alone, so
    # the tracker still removes the segment when the creator is killed.
    creator = _run_python("""
        import multiprocessing, os, signal, sys
        from zray._private.object_store import Arena
        name = sys.argv[1]
        arena = Arena.create(name, 4096)
        child = multiprocessing.get_context("spawn").Process(target=Arena.attach, args=(name,))
        child.start()
        child.join()
        assert child.exitcode == 0
        assert os.path.exists("/dev/shm/" + name)
        print("attached", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """, arena_name)
    assert creator.stdout.strip() == "attached", creator.stderr
    deadline = time.monotonic() + 20
    while _segment_exists(arena_name) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _segment_exists(arena_name)


def test_unlink_removes_the_segment(arena_name):
    arena = Arena.create(arena_name, 4096)
    assert _segment_exists(arena_name)
    arena.unlink()
    assert not _segment_exists(arena_name)
    arena.unlink()            # a second unlink is harmless
    arena.close()
    arena.close()
    with pytest.raises(FileNotFoundError):
        Arena.attach(arena_name)


def test_unlink_after_close(arena_name):
    arena = Arena.create(arena_name, 4096)
    arena.close()
    assert _segment_exists(arena_name)
    arena.unlink()
    assert not _segment_exists(arena_name)


def test_write_accepts_any_bytes_like(arena):
    arena.write(0, b"bytes")
    arena.write(8, bytearray(b"bytearray"))
    arena.write(24, memoryview(b"memoryview"))
    assert bytes(arena.view(0, 5)) == b"bytes"
    assert bytes(arena.view(8, 9)) == b"bytearray"
    assert bytes(arena.view(24, 10)) == b"memoryview"

    values = np.arange(100, dtype=np.float64)
    arena.write(64, values)
    assert np.array_equal(np.frombuffer(arena.view(64, values.nbytes), dtype=np.float64), values)

    grid = np.arange(12, dtype=np.int32).reshape(3, 4)
    arena.write(1024, grid)
    assert np.array_equal(np.frombuffer(arena.view(1024, 48), dtype=np.int32).reshape(3, 4), grid)

    # Fortran order: the raw memory, as the out-of-band pickle buffer has it.
    fortran = np.asfortranarray(grid)
    arena.write(2048, fortran)
    restored = np.frombuffer(arena.view(2048, 48), dtype=np.int32).reshape(3, 4, order="F")
    assert np.array_equal(restored, grid)

    # Strided (not contiguous): copied in logical order.
    arena.write(4096, values[::2])
    assert np.array_equal(np.frombuffer(arena.view(4096, 400), dtype=np.float64), values[::2])

    buffer = pickle.PickleBuffer(values)
    arena.write(8192, buffer.raw())
    assert bytes(arena.view(8192, values.nbytes)) == values.tobytes()


def test_views_are_writable_and_bounded(arena):
    view = arena.view(10, 5)
    view[:] = b"abcde"
    assert bytes(arena.buf[10:15]) == b"abcde"
    with pytest.raises(ValueError, match="outside arena"):
        arena.view(arena.size - 4, 8)
    with pytest.raises(ValueError, match="outside arena"):
        arena.write(arena.size - 2, b"abc")
    with pytest.raises(ValueError, match="outside arena"):
        arena.view(-1, 2)


def test_close_with_live_views_does_not_raise(arena_name):
    arena = Arena.create(arena_name, 4096)
    try:
        view = arena.view(0, 16)
        array = np.frombuffer(arena.view(0, 64), dtype=np.uint8)
        arena.write(0, b"still here")
        arena.close()
        arena.close()
        # The mapping was left in place for the views that still use it.
        assert bytes(view[:10]) == b"still here"
        assert array[0] == ord("s")
        with pytest.raises(ValueError, match="closed"):
            arena.view(0, 1)
    finally:
        arena.unlink()


# ------------------------------------------------------------------- spilling


def test_spill_round_trip(tmp_path):
    store = SpillStore(str(tmp_path))
    spill_dir = tmp_path / "zray_spill"
    assert not spill_dir.exists()     # created on the first spill only
    key = b"\x01" * 20
    payload = bytes(range(256)) * 40
    assert store.spill(key, memoryview(payload)) == len(payload)
    assert stat.S_IMODE(os.stat(spill_dir).st_mode) == 0o700
    assert (spill_dir / key.hex()).exists()
    assert key in store
    assert b"other" not in store
    assert store.spilled_bytes == len(payload)

    target = bytearray(len(payload))
    store.restore_into(key, memoryview(target))
    assert bytes(target) == payload
    assert key not in store
    assert store.spilled_bytes == 0
    assert not (spill_dir / key.hex()).exists()


def test_spill_numpy_and_restore_into_arena(tmp_path, arena):
    store = SpillStore(str(tmp_path))
    values = np.arange(1000, dtype=np.int64)
    assert store.spill(b"k", memoryview(values)) == values.nbytes
    store.restore_into(b"k", arena.view(128, values.nbytes))
    assert np.array_equal(np.frombuffer(arena.view(128, values.nbytes), dtype=np.int64), values)


def test_restore_errors(tmp_path):
    store = SpillStore(str(tmp_path))
    with pytest.raises(KeyError):
        store.restore_into(b"missing", memoryview(bytearray(4)))
    store.spill(b"k", memoryview(b"12345678"))
    with pytest.raises(ValueError, match="too small"):
        store.restore_into(b"k", memoryview(bytearray(4)))
    assert b"k" in store    # a failed restore keeps the object


def test_discard_and_cleanup(tmp_path):
    store = SpillStore(str(tmp_path))
    store.discard(b"never spilled")
    store.spill(b"a", memoryview(b"aaaa"))
    store.spill(b"b", memoryview(b"bbbbbb"))
    assert store.spilled_bytes == 10
    store.discard(b"a")
    assert b"a" not in store
    assert not (tmp_path / "zray_spill" / b"a".hex()).exists()
    assert store.spilled_bytes == 6
    store.cleanup()
    assert not (tmp_path / "zray_spill").exists()
    assert store.spilled_bytes == 0
    assert b"b" not in store
    store.cleanup()           # nothing left to remove: still fine
    store.spill(b"c", memoryview(b"c"))     # and the store is usable again
    assert (tmp_path / "zray_spill" / b"c".hex()).exists()


# --------------------------------------------------------------------- warm pages


def _resident_bytes(name: str) -> int:
    """Resident bytes of this process's mappings of /dev/shm/<name> (from smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            if "-" in line.split(" ", 1)[0] and len(line.split()) >= 5:
                inside = line.rstrip().endswith(f"/dev/shm/{name}")
            elif inside and line.startswith("Rss:"):
                total += int(line.split()[1]) * 1024
    return total


def _wait(condition, within=20.0):
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "the warm region never grew"
        time.sleep(0.01)


def test_the_allocator_remembers_its_high_water_mark():
    alloc = Allocator(1 << 20)
    a = alloc.allocate(1000)
    b = alloc.allocate(5000)
    assert alloc.high_water == b + 5056
    alloc.free(b)
    alloc.free(a)
    assert alloc.high_water == b + 5056 and alloc.allocate(64) == 0


def test_a_warm_region_becomes_resident_without_changing_a_byte(arena_name):
    from zray._private import warm

    size = 48 << 20
    arena = Arena.create(arena_name, size)
    try:
        if not warm.populate(warm.address_of(arena.buf), 0, 4096):
            pytest.skip("this kernel has no MADV_POPULATE_WRITE")
        for offset in (5000, 20 << 20, size - 1):
            arena.buf[offset] = 0xAB
        assert _resident_bytes(arena_name) < 1 << 20
        high = [0]
        arena.keep_warm(lambda: high[0])
        warmer = arena._warmer
        warmer.ahead = 16 << 20      # (the thread reads it at each step)
        _wait(lambda: warmer.edge >= 16 << 20)
        high[0] = 40 << 20           # puts reached further: the region follows
        _wait(lambda: warmer.edge >= size)
        assert _resident_bytes(arena_name) >= size - (1 << 20)
        assert [arena.buf[o] for o in (5000, 20 << 20, size - 1)] == [0xAB] * 3
        assert arena.buf[4096] == 0
    finally:
        arena.close()
        arena.unlink()
    assert warmer.thread is None     # stopped with the arena
