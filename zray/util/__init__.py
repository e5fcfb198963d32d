"""Utilities built on zray's public API: actor pools and a distributed queue.

    from zray.util import ActorPool
    from zray.util.queue import Queue, Empty, Full
"""

from __future__ import annotations

from zray.util.actor_pool import ActorPool

__all__ = ["ActorPool"]
