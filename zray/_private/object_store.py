"""The node's shared-memory object store: arena, allocator and disk spilling.

Each node keeps large objects in one pre-sized shared-memory segment (the
*arena*) that every process on the node maps once.  This module owns:

* :class:`Allocator` -- which byte ranges of the arena are in use.  It only
  does bookkeeping over offsets; it never touches the memory itself.
* :class:`Arena` -- the segment: creating it (the node agent), attaching to it
  (workers and drivers), copying bytes in, and letting go of it safely.
* :class:`SpillStore` -- objects moved out of the arena into files when it is
  full, and read back into the arena when needed again.

It knows nothing about object IDs, reference counts or messages.
"""

from __future__ import annotations

import _posixshmem  # the POSIX calls behind SharedMemory; zray needs /dev/shm anyway
import bisect
import contextlib
import os
import pickle
import sys
import threading
from collections.abc import Iterator
from multiprocessing import resource_tracker
from multiprocessing.shared_memory import SharedMemory
from typing import Any

#: Every block starts on a multiple of this (a cache line), so numpy arrays
#: placed in the arena are always suitably aligned.
ALIGNMENT = 64

#: Segment names zray creates; anything else in /dev/shm is not ours to touch.
NAME_PREFIX = "zray"


# --------------------------------------------------------------------- allocator


class _FreeBlocks:
    """Free blocks ordered by address, for lowest-address first fit.

    The offsets are kept in a list of sorted chunks, each remembering the size
    of its largest block.  First fit then skips every chunk that has nothing
    big enough, so a search costs about ``n / CHUNK + CHUNK`` steps instead of
    ``n`` once the free space is fragmented into many pieces.
    """

    CHUNK = 64

    def __init__(self) -> None:
        self.sizes: dict[int, int] = {}       # offset -> size of every free block
        self._chunks: list[list[int]] = []    # sorted offsets, split in chunks
        self._firsts: list[int] = []          # first offset of each chunk
        self._maxes: list[int] = []           # largest block size in each chunk

    def __len__(self) -> int:
        return len(self.sizes)

    def largest(self) -> int:
        return max(self._maxes, default=0)

    def first_fit(self, size: int) -> int | None:
        """The lowest offset of a free block of at least ``size`` bytes."""
        sizes = self.sizes
        for index, biggest in enumerate(self._maxes):
            if biggest >= size:
                for offset in self._chunks[index]:
                    if sizes[offset] >= size:
                        return offset
        return None

    def neighbours(self, offset: int) -> tuple[int | None, int | None]:
        """The free blocks just below and just above ``offset`` (not itself free)."""
        index = bisect.bisect_right(self._firsts, offset) - 1
        if index < 0:
            return None, (self._firsts[0] if self._firsts else None)
        chunk = self._chunks[index]
        position = bisect.bisect_left(chunk, offset)
        below = chunk[position - 1] if position > 0 else None
        if position < len(chunk):
            above: int | None = chunk[position]
        elif index + 1 < len(self._chunks):
            above = self._firsts[index + 1]
        else:
            above = None
        return below, above

    def add(self, offset: int, size: int) -> None:
        self.sizes[offset] = size
        if not self._chunks:
            self._chunks.append([offset])
            self._firsts.append(offset)
            self._maxes.append(size)
            return
        index = max(bisect.bisect_right(self._firsts, offset) - 1, 0)
        chunk = self._chunks[index]
        bisect.insort(chunk, offset)
        self._firsts[index] = chunk[0]
        self._maxes[index] = max(self._maxes[index], size)
        if len(chunk) > 2 * self.CHUNK:
            self._split(index)

    def remove(self, offset: int) -> int:
        size = self.sizes.pop(offset)
        index = bisect.bisect_right(self._firsts, offset) - 1
        chunk = self._chunks[index]
        del chunk[bisect.bisect_left(chunk, offset)]
        if not chunk:
            del self._chunks[index], self._firsts[index], self._maxes[index]
            return size
        self._firsts[index] = chunk[0]
        if size == self._maxes[index]:
            self._maxes[index] = self._chunk_max(chunk)
        return size

    def grow(self, offset: int, size: int) -> None:
        """Give the free block at ``offset`` a new, larger size."""
        self.sizes[offset] = size
        index = bisect.bisect_right(self._firsts, offset) - 1
        self._maxes[index] = max(self._maxes[index], size)

    def _split(self, index: int) -> None:
        chunk = self._chunks[index]
        half = len(chunk) // 2
        low, high = chunk[:half], chunk[half:]
        self._chunks[index:index + 1] = [low, high]
        self._firsts[index:index + 1] = [low[0], high[0]]
        self._maxes[index:index + 1] = [self._chunk_max(low), self._chunk_max(high)]

    def _chunk_max(self, chunk: list[int]) -> int:
        sizes = self.sizes
        return max(sizes[offset] for offset in chunk)


class Allocator:
    """First-fit allocator over the byte range [0, capacity) with a free list that coalesces neighbours.

    Blocks are carved from the lowest address that fits, so memory freed at
    the bottom of the arena is reused first; those pages are already touched
    and resident, while the top of a large arena may never need to be.
    ``capacity`` is rounded down to a multiple of the alignment, so every
    offset and every block size handed out is a multiple of it.
    """

    def __init__(self, capacity: int, alignment: int = ALIGNMENT) -> None:
        if alignment <= 0:
            raise ValueError(f"alignment must be positive, got {alignment}")
        if capacity < 0:
            raise ValueError(f"capacity must not be negative, got {capacity}")
        self.alignment = alignment
        self.capacity = capacity - capacity % alignment
        self._free = _FreeBlocks()
        self._allocated: dict[int, int] = {}   # offset -> rounded size
        self._used = 0
        self.high_water = 0                    # the end of the highest block ever allocated
        if self.capacity:
            self._free.add(0, self.capacity)

    @property
    def used(self) -> int:
        """Bytes in allocated blocks (sizes as rounded up)."""
        return self._used

    @property
    def available(self) -> int:
        """Bytes not allocated, possibly split over several free blocks."""
        return self.capacity - self._used

    @property
    def largest_free(self) -> int:
        """Size of the biggest block a single allocate() could return now."""
        return self._free.largest()

    @property
    def num_allocations(self) -> int:
        return len(self._allocated)

    @property
    def num_free_blocks(self) -> int:
        """How fragmented the free space is (1 when nothing is allocated)."""
        return len(self._free)

    def allocate(self, size: int) -> int | None:
        """Reserve ``size`` bytes; return the block's offset, or None if no free block fits."""
        size = self._round(size)
        offset = self._free.first_fit(size)
        if offset is None:
            return None
        block = self._free.remove(offset)
        if block > size:
            self._free.add(offset + size, block - size)
        self._allocated[offset] = size
        self._used += size
        self.high_water = max(self.high_water, offset + size)
        return offset

    def free(self, offset: int) -> int:
        """Release the block at ``offset``; return how many bytes that gave back."""
        size = self._allocated.pop(offset, None)
        if size is None:
            raise ValueError(f"offset {offset} is not allocated")
        self._used -= size
        start, end = offset, offset + size
        below, above = self._free.neighbours(offset)
        if above is not None and above == end:
            end += self._free.remove(above)
        if below is not None and below + self._free.sizes[below] == start:
            self._free.grow(below, end - below)
        else:
            self._free.add(start, end - start)
        return size

    def free_blocks(self) -> list[tuple[int, int]]:
        """Every free block as (offset, size), lowest address first."""
        return sorted(self._free.sizes.items())

    def size_of(self, offset: int) -> int:
        """The rounded size of the allocated block at ``offset``."""
        try:
            return self._allocated[offset]
        except KeyError:
            raise ValueError(f"offset {offset} is not allocated") from None

    def _round(self, size: int) -> int:
        if size <= 0:
            return self.alignment
        return -(-size // self.alignment) * self.alignment


# ------------------------------------------------------------------------- arena

# attach() briefly replaces resource_tracker.register; the lock keeps a
# create() in another thread from running while registration is switched off.
_tracker_lock = threading.Lock()

# Mappings that could not be closed because views into them were still alive.
# Holding them here keeps SharedMemory.__del__ from retrying the close (and
# printing the same BufferError) at an arbitrary moment; the OS unmaps them
# when the process exits.
_left_open: list[SharedMemory] = []


@contextlib.contextmanager
def _untracked() -> Iterator[None]:
    """Keep SharedMemory from registering the segment with the resource tracker.

    Before Python 3.13 attaching to a segment registers it, and the tracker
    unlinks every registered segment when the process exits -- destroying
    the node's arena whenever a worker ends.  Unregistering after the fact is
    not enough: a process started by fork or spawn shares its parent's
    tracker, which keeps one entry per name, so the child's unregister would
    also erase the creator's registration (the one that cleans up after a
    crashed node agent).  So the registration is never made.
    """
    with _tracker_lock:
        register = resource_tracker.register

        def skip_shared_memory(name: str, rtype: str) -> None:
            if rtype != "shared_memory":
                register(name, rtype)

        resource_tracker.register = skip_shared_memory
        try:
            yield
        finally:
            resource_tracker.register = register


def _byte_view(data: Any) -> memoryview:
    """A flat unsigned-byte view of any bytes-like object, copying only if it must."""
    view = memoryview(data)
    if view.c_contiguous and view.ndim == 1 and view.format == "B":
        return view
    if view.c_contiguous:
        return view.cast("B")
    try:
        # Fortran-ordered arrays: their memory, in memory order, without a copy.
        return pickle.PickleBuffer(view).raw()
    except BufferError:
        return memoryview(view.tobytes())   # strided: has to be gathered


class Arena:
    """One multiprocessing.shared_memory.SharedMemory segment mapped into this process."""

    def __init__(self, shm: SharedMemory, creator: bool) -> None:
        self._shm: SharedMemory | None = shm
        self.name: str = shm.name
        self.size: int = shm.size
        self.creator = creator
        self.buf: memoryview = shm.buf
        # The name as the OS and the resource tracker know it ("/zray...").
        self._tracked_name: str = shm._name  # type: ignore[attr-defined]
        self._unlinked = False
        self._warmer: Any = None

    @classmethod
    def create(cls, name: str, size: int) -> Arena:
        """Create a new segment of ``size`` bytes named ``name`` (must start with "zray").

        The creating process stays registered with the resource tracker, so
        the segment is removed even if this process dies without unlink().
        """
        _check_name(name)
        if size <= 0:
            raise ValueError(f"arena size must be positive, got {size}")
        with _tracker_lock:
            shm = SharedMemory(name=name, create=True, size=size)
        return cls(shm, creator=True)

    @classmethod
    def attach(cls, name: str) -> Arena:
        """Map an existing segment; this process exiting never removes it."""
        _check_name(name)
        if sys.version_info >= (3, 13):
            shm = SharedMemory(name=name, create=False, track=False)
        else:
            with _untracked():
                shm = SharedMemory(name=name, create=False)
        return cls(shm, creator=False)

    def keep_warm(self, high_water: Any = lambda: 0) -> None:
        """Keep the start of the arena resident in this process (see :mod:`warm`):
        up to ``WARM_BYTES`` past ``high_water()``, in a background thread."""
        from zray._private.warm import Warmer

        if self._warmer is None and self._shm is not None:
            self._warmer = Warmer(self.buf, high_water).start()

    def view(self, offset: int, length: int) -> memoryview:
        """A writable view of ``length`` bytes at ``offset``."""
        self._check_range(offset, length)
        return self.buf[offset:offset + length]

    def write(self, offset: int, data: Any) -> None:
        """Copy a bytes-like object (bytes, memoryview, numpy buffer, ...) to ``offset``."""
        source = _byte_view(data)
        try:
            length = source.nbytes
            self._check_range(offset, length)
            self.buf[offset:offset + length] = source
        finally:
            source.release()

    def close(self) -> None:
        """Unmap the segment from this process; safe to call more than once.

        If views handed out earlier (or numpy arrays over them) are still
        alive, the mapping cannot be closed; it is then left for the process
        exit to release rather than failing here.
        """
        if self._warmer is not None:
            self._warmer.stop()     # before the mapping goes
        shm, self._shm = self._shm, None
        if shm is None:
            return
        self.buf = memoryview(b"")
        try:
            shm.close()
        except BufferError:
            _left_open.append(shm)

    def unlink(self) -> None:
        """Remove the segment's name so no one else can attach; safe to call twice.

        Meant for the creator.  Processes keep their mappings until they close
        them; the memory is freed once the last one is gone.
        """
        if self._unlinked:
            return
        self._unlinked = True
        with contextlib.suppress(FileNotFoundError):
            _posixshmem.shm_unlink(self._tracked_name)
        if self.creator:
            # Also when someone else unlinked it first: a stale registration
            # makes the tracker warn about a "leaked" segment at exit.
            resource_tracker.unregister(self._tracked_name, "shared_memory")

    def _check_range(self, offset: int, length: int) -> None:
        if self._shm is None:
            raise ValueError(f"arena {self.name} is closed")
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ValueError(
                f"range [{offset}, {offset + length}) is outside arena {self.name} of {self.size} bytes")

    def __repr__(self) -> str:
        return f"Arena({self.name!r}, size={self.size})"


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not name.startswith(NAME_PREFIX):
        raise ValueError(f"arena name must start with {NAME_PREFIX!r}, got {name!r}")


# -------------------------------------------------------------------- spilling


class SpillStore:
    """Objects moved out of the arena into files under a directory (the session dir), and back."""

    def __init__(self, directory: str) -> None:
        self.directory = os.path.join(directory, "zray_spill")
        self._sizes: dict[bytes, int] = {}    # key -> bytes in its file
        self._created = False

    @property
    def spilled_bytes(self) -> int:
        return sum(self._sizes.values())

    def __contains__(self, key: object) -> bool:
        return key in self._sizes

    def __len__(self) -> int:
        return len(self._sizes)

    def spill(self, key: bytes, data: memoryview) -> int:
        """Write ``data`` to the file for ``key``; return its size in bytes."""
        self._ensure_directory()
        path = self._path(key)
        # Written under a temporary name first, so a failure half way (disk
        # full) never leaves a truncated file that looks like the object.
        partial = path + ".partial"
        source = _byte_view(data)
        size = source.nbytes
        try:
            with open(partial, "wb") as out:
                out.write(source)
            os.replace(partial, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(partial)
            raise
        finally:
            source.release()
        self._sizes[key] = size
        return size

    def restore_into(self, key: bytes, target: memoryview) -> None:
        """Read the object for ``key`` into ``target`` and delete its file."""
        size = self._sizes.get(key)
        if size is None:
            raise KeyError(f"object {key.hex()} is not spilled")
        if len(target) < size:
            raise ValueError(f"target of {len(target)} bytes is too small for {size} spilled bytes")
        path = self._path(key)
        view = memoryview(target).cast("B")[:size]
        with open(path, "rb", buffering=0) as source:
            done = 0
            while done < size:
                count = source.readinto(view[done:])
                if not count:
                    raise OSError(f"spill file {path} ended after {done} of {size} bytes")
                done += count
        view.release()
        self.discard(key)

    def discard(self, key: bytes) -> None:
        """Forget the object for ``key`` and delete its file, if there is one."""
        self._sizes.pop(key, None)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(key))

    def cleanup(self) -> None:
        """Delete every spilled object and the spill directory."""
        import shutil  # only here: the node agent starts faster without it

        self._sizes.clear()
        shutil.rmtree(self.directory, ignore_errors=True)
        self._created = False

    def _ensure_directory(self) -> None:
        if not self._created:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            self._created = True

    def _path(self, key: bytes) -> str:
        return os.path.join(self.directory, key.hex())
