"""Arena pages made resident before a put needs them.

The first write to a page of a fresh shared-memory segment faults: the kernel
allocates and zeroes the page, and maps it into the writer's page tables.
Measured on these machines, a 100 MiB put into fresh pages runs at about
1 GiB/s against 10-15 GiB/s into pages already resident and mapped.  So each
node keeps a *warm* region at the start of its arena: the agent makes its
pages resident (``MADV_POPULATE_WRITE``, which allocates pages without
changing a byte) in a background thread, and keeps the region a fixed
distance (:data:`WARM_BYTES`) ahead of the allocator's high-water mark as
puts grow it.  A driver does the same for its own page tables.  The
allocator hands out the lowest free block first, so puts land in the warm
region and reuse recently freed, already-touched space before fresh pages.

The thread paces itself (it rests as long as each step took), so warming
takes at most about half of one core, and stops with the arena.

Owns: one daemon thread per arena warmed.  Must not: write to the arena.
"""

from __future__ import annotations

import ctypes
import os
import threading
from typing import Callable, Optional

MADV_POPULATE_WRITE = 23            # Linux 5.14+; elsewhere warming does nothing
STEP = 8 * 1024 * 1024              # populated per call (about 10 ms of fresh pages)
#: How far ahead of the highest byte ever allocated the region is kept warm.
WARM_BYTES = int(os.environ.get("ZRAY_WARM_BYTES", 256 * 1024 * 1024))

_libc: Optional[ctypes.CDLL] = None


def _madvise() -> Optional[Callable[..., int]]:
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(None, use_errno=True)
        except OSError:
            return None
    func = getattr(_libc, "madvise", None)
    if func is not None:
        func.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        func.restype = ctypes.c_int
    return func


def address_of(buf: memoryview) -> int:
    """The address of a writable buffer's first byte (no export is kept)."""
    anchor = ctypes.c_char.from_buffer(buf)
    try:
        return ctypes.addressof(anchor)
    finally:
        del anchor


def populate(base: int, offset: int, length: int) -> bool:
    """Make ``[offset, offset + length)`` of the mapping at ``base`` resident and
    mapped here; False where the kernel cannot (the region then stays cold)."""
    madvise = _madvise()
    return madvise is not None and madvise(base + offset, length, MADV_POPULATE_WRITE) == 0


class Warmer:
    """Keeps ``[0, min(size, high_water() + ahead))`` of a mapping resident."""

    def __init__(self, buf: memoryview, high_water: Callable[[], int] = lambda: 0,
                 ahead: int = WARM_BYTES, interval: float = 0.25) -> None:
        self.size = len(buf)
        self.base = address_of(buf) if self.size and ahead > 0 else 0
        self.high_water = high_water
        self.ahead = ahead
        self.interval = interval
        self.edge = 0                      # everything below is resident
        self.stopping = threading.Event()
        self.thread: Optional[threading.Thread] = None

    def start(self) -> Warmer:
        if self.base:
            self.thread = threading.Thread(target=self.run, name="zray-warm", daemon=True)
            self.thread.start()
        return self

    def target(self) -> int:
        return min(self.size, self.high_water() + self.ahead)

    def run(self) -> None:
        import time

        while not self.stopping.is_set():
            while self.edge < self.target() and not self.stopping.is_set():
                length = min(STEP, self.size - self.edge)
                started = time.monotonic()
                if not populate(self.base, self.edge, length):
                    return              # not on this kernel: puts fault as before
                self.edge += length
                self.stopping.wait(time.monotonic() - started)   # at most half a core
            self.stopping.wait(self.interval)

    def stop(self) -> None:
        """Stop before the mapping goes (a step under way finishes first)."""
        self.stopping.set()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join()
            self.thread = None
