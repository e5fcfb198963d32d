"""The seed-era way to start zray: ``zray.services.start_ray_local(num_workers=10)``.

    import zray as ray
    ray.services.start_ray_local(num_workers=10)

It starts a local session (head, node agent with its object store, and
``num_workers`` worker processes) that this interpreter owns: the session's
processes are stopped when the interpreter exits (``zray.shutdown`` runs at
exit) or when ``zray.shutdown()`` is called.

Owns: this one public entry point.  Starting processes is
``zray._private.services``'s business, reached only through ``zray.init``.
"""

from __future__ import annotations

import asyncio
from typing import Any, Dict

import zray


class _Rendezvous:
    """Holds every caller of ``arrive`` until ``count`` of them have come, so
    that as many tasks run at once, each in its own worker."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.arrived = 0
        self.all_here = asyncio.Event()

    async def arrive(self) -> None:
        self.arrived += 1
        if self.arrived >= self.count:
            self.all_here.set()
        await self.all_here.wait()


def _meet(rendezvous: Any) -> int:
    import os

    zray.get(rendezvous.arrive.remote())
    return os.getpid()


def _start_workers(count: int) -> None:
    """Have ``count`` worker processes running now, rather than as the first tasks
    need them: ``count`` tasks that wait for one another each hold a worker."""
    rendezvous = zray.remote(num_cpus=0)(_Rendezvous).remote(count)
    try:
        meet = zray.remote(num_cpus=1)(_meet)
        zray.get([meet.remote(rendezvous) for _ in range(count)], timeout=120)
    finally:
        zray.kill(rendezvous)


def start_ray_local(num_workers: int = 10, **init_options: Any) -> Dict[str, Any]:
    """Start a local zray session with ``num_workers`` worker processes (and as
    many CPUs) and connect this process to it; returns the session's address
    information (``address``, ``node_id``, ``session_dir``, ...).

    Further keyword arguments go to ``zray.init`` (``object_store_memory``,
    ``resources``, ...).  The processes end when this interpreter does.
    """
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1:
        raise ValueError(f"num_workers must be a positive int, got {num_workers!r}")
    context = zray.init(num_cpus=num_workers, **init_options)
    try:
        _start_workers(num_workers)
    except BaseException:
        zray.shutdown()
        raise
    return dict(context.address_info)


__all__ = ["start_ray_local"]
